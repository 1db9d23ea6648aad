"""The training progress bar (rich, on stderr): one bar for the run, epoch metrics as text.

Advancing costs a lock and an addition; rendering happens on rich's refresh thread, so
the bar never forces a device sync or slows the step loop.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class TrainProgress:
    """A context manager; a no-op when ``enabled`` is False (tests, ranks other than 0)."""

    def __init__(self, total_steps: int, epochs: int, *, enabled: bool = True) -> None:
        self.total_steps, self.epochs, self.enabled = total_steps, epochs, enabled
        self._progress: Progress | None = None
        self._task: Any = None
        self._last = ""

    def __enter__(self) -> "TrainProgress":
        if self.enabled:
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                                      refresh_per_second=4)
            self._progress.__enter__()
            self._task = self._progress.add_task("training", total=self.total_steps)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def start_epoch(self, epoch: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=f"epoch {epoch}/{self.epochs}{self._last}")

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)

    def end_epoch(self, row: dict[str, Any]) -> None:
        if self._progress is None:
            return
        parts = [f"loss {row['train_loss']:.3f}"]
        if "val_top1" in row:
            parts.append(f"val {row['val_top1']:.3f}")
        parts.append(f"test {row['test_top1']:.3f}")
        self._last = " · " + " ".join(parts)
        self._progress.update(self._task, description=f"epoch {row['epoch']}/{self.epochs}{self._last}")
