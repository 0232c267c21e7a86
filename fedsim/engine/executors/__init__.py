"""Executors run ClientApp calls for the grid: ``serial`` (in-process) or ``ray`` (actor pool).

Both take the same `Task` list and return `TaskResult`s in the same order, so results
never depend on which executor ran them.
"""

from fedsim.engine.executors.base import (
    AppRef,
    Executor,
    Task,
    TaskResult,
    make_executor,
)

__all__ = ["AppRef", "Executor", "Task", "TaskResult", "make_executor"]
