"""The training progress bar: one :class:`~herbid.progress.ProgressBar` for the run, the
epoch and its metrics in the description."""

from __future__ import annotations

from typing import Any

from herbid.progress import ProgressBar


class TrainProgress(ProgressBar):
    """A context manager; a no-op when ``enabled`` is False (tests, ranks other than 0)."""

    def __init__(self, total_steps: int, epochs: int, *, enabled: bool = True) -> None:
        super().__init__("training", total_steps, enabled=enabled)
        self.epochs = epochs
        self._last = ""

    def start_epoch(self, epoch: int) -> None:
        self.describe(f"epoch {epoch}/{self.epochs}{self._last}")

    def end_epoch(self, row: dict[str, Any]) -> None:
        parts = [f"loss {row['train_loss']:.3f}"]
        if "val_top1" in row:
            parts.append(f"val {row['val_top1']:.3f}")
        parts.append(f"test {row['test_top1']:.3f}")
        self._last = " · " + " ".join(parts)
        self.describe(f"epoch {row['epoch']}/{self.epochs}{self._last}")
