"""A rich progress bar: round, latest accuracy and ETA."""

from __future__ import annotations

from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class RoundProgress:
    def __init__(self, total_rounds: int, label: str, enabled: bool = True) -> None:
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task: Any = None
        self.total = total_rounds
        self.label = label

    def __enter__(self) -> RoundProgress:
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("rounds  acc {task.fields[acc]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=self.total, acc="-")
        return self

    def update(self, record: dict[str, Any]) -> None:
        if self._progress is None or record["round"] == 0:
            if self._progress is not None and record.get("central_acc") is not None:
                self._progress.update(self._task, acc=f"{record['central_acc']:.3f}")
            return
        acc = record.get("central_acc")
        if acc is None:
            acc = record.get("fed_acc")
        fields = {"acc": f"{acc:.3f}"} if acc is not None else {}
        self._progress.update(self._task, completed=record["round"], **fields)

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()
