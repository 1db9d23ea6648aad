"""``downloads/failed.jsonl``: the URLs that failed for good, one JSON object a line.

Each line says ``url``, ``reason`` (the problem category text, as in the build report),
``status`` (the last HTTP status, or null), ``attempts``, ``time`` (UTC, ISO 8601) and
``detail``. Lines are appended as failures happen, so a killed run still leaves them; at
the end of a run the file is rewritten to hold exactly the URLs that are failed *now*:
this run's failures, plus earlier ones this run did not try again. A URL that has since
been stored drops out.

A rerun tries every logged URL again by default (a host that was down or throttling may
be back); ``skip_failed`` (see :func:`herbid.data.download.download_images`) skips them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from herbid.data.dataset_folder import atomic_path

__all__ = ["FAILED_LOG_NAME", "FailedDownload", "FailedLog"]

FAILED_LOG_NAME = "failed.jsonl"


@dataclass(frozen=True)
class FailedDownload:
    """One URL that could not be downloaded, as logged."""

    url: str
    reason: str
    status: int | None = None
    attempts: int = 0
    time: str = ""
    detail: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FailedDownload:
        status = data.get("status")
        return cls(url=str(data["url"]), reason=str(data.get("reason", "")),
                   status=int(status) if isinstance(status, int) else None,
                   attempts=int(data.get("attempts") or 0), time=str(data.get("time", "")),
                   detail=str(data.get("detail", "")))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class FailedLog:
    """The failed-URL log of one download folder, for one run. Thread-safe; :meth:`close` at the end.

    ``earlier`` holds what earlier runs logged (the last line per URL wins; unreadable
    lines, e.g. one cut short by a crash, are skipped).
    """

    def __init__(self, dest_dir: Path) -> None:
        self.path = Path(dest_dir) / FAILED_LOG_NAME
        self.earlier: dict[str, FailedDownload] = read_failed(self.path)
        self.now: dict[str, FailedDownload] = {}
        self._lock = threading.Lock()

    def add(self, url: str, reason: str, *, status: int | None = None, attempts: int = 0,
            detail: str = "") -> FailedDownload:
        """Log ``url`` as failed in this run (appended to the file at once: failures are few)."""
        entry = FailedDownload(url, reason, status, attempts, _now(), detail)
        line = json.dumps(asdict(entry), ensure_ascii=False) + "\n"
        with self._lock:
            self.now[url] = entry
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as out:
                out.write(line)
        return entry

    def current(self, stored: Iterable[str] = ()) -> dict[str, FailedDownload]:
        """The URLs failed now: this run's failures, earlier ones not tried again, minus ``stored``."""
        with self._lock:
            kept = {**self.earlier, **self.now}
        for url in stored:
            kept.pop(url, None)
        return kept

    def close(self, stored: Iterable[str] = ()) -> None:
        """Rewrite the file to :meth:`current` (removed when nothing failed)."""
        entries = self.current(stored)
        if not entries:
            self.path.unlink(missing_ok=True)
            return
        with atomic_path(self.path) as tmp, open(tmp, "w", encoding="utf-8") as out:
            out.writelines(json.dumps(asdict(entry), ensure_ascii=False) + "\n" for entry in entries.values())


def read_failed(path: Path) -> dict[str, FailedDownload]:
    """The entries of a ``failed.jsonl`` by URL (last line wins); {} when there is none."""
    entries: dict[str, FailedDownload] = {}
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return entries
    for line in text.splitlines():
        try:
            data = json.loads(line)
            entry = FailedDownload.from_json(data)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            continue
        entries[entry.url] = entry
    return entries
