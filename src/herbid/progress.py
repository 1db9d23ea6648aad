"""Progress bars for long jobs (rich, on stderr), switched off in tests and when asked.

The one bar every job uses: dataset builds, downloads, embedding, identification and
training (which adds its epoch metrics to the description). Advancing costs a lock and
an addition; rendering happens on rich's refresh thread, so a bar never slows the work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class ProgressBar:
    """A context manager around one rich bar; every method is a no-op when ``enabled`` is False."""

    def __init__(self, description: str, total: int | None, *, enabled: bool = True) -> None:
        self.description, self.total, self.enabled = description, total, enabled
        self._progress: Progress | None = None
        self._task: object = None

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), TimeRemainingColumn())
            self._progress = Progress(*columns, console=Console(stderr=True), transient=False, refresh_per_second=4)
            self._progress.__enter__()
            self._task = self._progress.add_task(self.description, total=self.total)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.__exit__(kind, error, trace)
            self._progress = None

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def describe(self, description: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=description)


@contextmanager
def progress_bar(description: str, total: int | None, *, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """Yield an ``advance(n=1)`` function that moves a :class:`ProgressBar`."""
    with ProgressBar(description, total, enabled=enabled) as bar:
        yield bar.advance
