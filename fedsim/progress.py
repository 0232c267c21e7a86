"""A rich progress bar: round, latest accuracy, failed client calls and ETA."""

from __future__ import annotations

from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RoundProgress:
    """``total_rounds`` 0 = unknown (a Flower app that does not say)."""

    def __init__(self, total_rounds: int, label: str, enabled: bool = True) -> None:
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task: Any = None
        self.total = total_rounds
        self.label = label
        self.failed = 0

    def __enter__(self) -> "RoundProgress":
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("rounds  acc {task.fields[acc]}  failed {task.fields[failed]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=self.total or None, acc="-", failed=0)
        return self

    def update(self, record: dict[str, Any]) -> None:
        self.failed += len(record.get("failures", ()))
        if self._progress is None:
            return
        acc = record.get("central_acc")
        if acc is None:
            acc = record.get("fed_acc")
        fields: dict[str, Any] = {"failed": self.failed}
        if acc is not None:
            fields["acc"] = f"{acc:.3f}"
        if record["round"] > 0:
            fields["completed"] = record["round"]
        self._progress.update(self._task, **fields)

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()
