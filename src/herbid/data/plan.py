"""``herbid dataset build --plan``: read every source and decide what a build would fetch,
fetching and decoding nothing.

The plan is the build's own first two stages (:func:`~herbid.data.build.stream_sources`
and :func:`~herbid.data.build.normalise_name`) run one record at a time, so it counts
what the build would: the records read, those with a usable name, every row dropped and
why, and the deduplicated URLs the fetch stage would download. It writes:

* ``plan.json``: those counts, per source and in total, with URLs per host;
* ``plan-urls.txt``: the URLs, sorted, one a line (any downloader can take it).

Memory does not grow with the number of records read: records are dropped once
counted, problems are counted by reason with only the first :data:`PROBLEM_SAMPLE` kept,
and URLs and local paths are deduplicated in Arrow arrays (a few dozen bytes each).
The source readers hold what they must (a DwC-A's multimedia index, its core ids).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

import herbid
from herbid.data.build import UNUSABLE, BuildOptions, is_url, normalise_name, source_options, stream_sources
from herbid.data.dataset_folder import write_json
from herbid.data.names import load_synonyms
from herbid.data.records import Problem, SourceRecord
from herbid.data.sources.base import ProblemLog, Source
from herbid.progress import progress_bar

PLAN = "plan.json"
PLAN_URLS = "plan-urls.txt"
#: Problems written to plan.json as examples; the rest are only counted.
PROBLEM_SAMPLE = 200
_BUFFER = 1 << 16
_LINE_BREAKS = str.maketrans({"\n": "%0A", "\r": "%0D"})
# scheme://[user@]host[:port] of a URL; the host part is what a downloader is polite to
_HOST = r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?(?P<host>[^/?#]*)"


class CountingProblemLog(ProblemLog):
    """A :class:`ProblemLog` that counts every problem but keeps only the first ``keep``.

    A multi-million-row download drops hundreds of thousands of rows; their counts by
    reason and action are what a plan reports, a sample is enough to see what they are.
    """

    def __init__(self, keep: int = PROBLEM_SAMPLE) -> None:
        super().__init__()
        self.keep = keep
        self.total = 0
        self.counts: Counter[tuple[str, str]] = Counter()  # (action, reason category)

    def add(self, stage: str, where: str, reason: str, action: str = "dropped", detail: str = "") -> None:
        self.total += 1
        self.counts[action, reason.split(":", 1)[0]] += 1
        if len(self.items) < self.keep:
            self.items.append(Problem(stage=stage, where=str(where), reason=reason, action=action, detail=detail))

    def __len__(self) -> int:
        return self.total

    def by_reason(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for (_, reason), count in self.counts.items():
            counts[reason] += count
        return dict(counts)

    def by_action(self, action: str) -> dict[str, int]:
        """Counts per reason of the problems with this ``action`` (``dropped``, ``converted``...)."""
        found = {reason: count for (kind, reason), count in self.counts.items() if kind == action}
        return dict(sorted(found.items(), key=lambda item: (-item[1], item[0])))


class UniqueStrings:
    """A growing set of strings kept as Arrow arrays, deduplicated whenever enough are pending."""

    def __init__(self) -> None:
        self._pending: list[str] = []
        self._arrays: list[pa.Array] = []
        self._unique = pa.array([], pa.large_string())
        self._since_unique = 0

    def add(self, value: str) -> None:
        self._pending.append(value)
        if len(self._pending) >= _BUFFER:
            self._flush()

    def extend(self, other: UniqueStrings) -> None:
        other._flush()
        self._flush()
        self._arrays.extend([other._unique, *other._arrays])
        self._since_unique += len(other._unique) + other._since_unique
        self._compact(force=False)

    def values(self) -> pa.Array:
        """The distinct strings, sorted."""
        self._flush()
        self._compact(force=True)
        return self._unique.take(pc.sort_indices(self._unique))

    def _flush(self) -> None:
        if self._pending:
            self._arrays.append(pa.array(self._pending, pa.large_string()))
            self._since_unique += len(self._pending)
            self._pending = []
        self._compact(force=False)

    def _compact(self, *, force: bool) -> None:
        # deduplicate once the pending arrays are as long as the distinct set (or 1 M): amortised linear
        if self._arrays and (force or self._since_unique >= max(len(self._unique), 1 << 20)):
            merged = pa.chunked_array([self._unique, *self._arrays], pa.large_string())
            self._unique = pc.unique(merged)
            self._arrays, self._since_unique = [], 0


class _Tally:
    """What one source would give a build."""

    def __init__(self) -> None:
        self.records = self.usable = self.remote = self.local = self.local_unusable = 0
        self.urls = UniqueStrings()
        self.paths = UniqueStrings()

    def add(self, record: SourceRecord, kept: bool) -> None:
        self.records += 1
        if not kept:
            return  # a remote record without a usable name: reported, never fetched
        if is_url(record.source_path):
            self.remote += 1
            self.urls.add(record.source_path)
        else:
            self.local += 1
            self.paths.add(record.source_path)
            if UNUSABLE in record.extra:
                self.local_unusable += 1  # read for the duplicate check, then dropped
                return
        self.usable += 1

    def merge(self, other: _Tally) -> None:
        for name in ("records", "usable", "remote", "local", "local_unusable"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.urls.extend(other.urls)
        self.paths.extend(other.paths)

    def counts(self) -> dict[str, int]:
        return {"records": self.records, "with_usable_name": self.usable, "records_with_url": self.remote,
                "records_with_local_file": self.local, "local_without_usable_name": self.local_unusable}


def plan_build(sources: Sequence[str | Path | Source], out: str | Path,
               options: BuildOptions | None = None) -> dict[str, Any]:
    """Read ``sources`` as :func:`~herbid.data.build.build_dataset` would, write the plan
    (``plan.json``, ``plan-urls.txt``) to ``out`` and return plan.json's content."""
    options = options or BuildOptions()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    problems = CountingProblemLog()
    synonyms = load_synonyms(options.synonyms) if options.synonyms else {}
    total = _Tally()
    described: list[dict[str, Any]] = []
    with progress_bar("reading records", total=None, enabled=options.progress) as advance:
        for stream in stream_sources(sources, problems, kind=options.kind, **source_options(options)):
            tally = _Tally()
            for record in stream:
                tally.add(record, normalise_name(record, problems, synonyms))
                advance()
            if stream.failed:  # as in the build: a source that fails part way gives nothing
                described.append({**stream.describe(), "records": 0, "read_before_failure": tally.records})
            else:
                described.append({**stream.describe(), **tally.counts()})
                total.merge(tally)
    urls = total.urls.values()
    _write_lines(out / PLAN_URLS, urls)
    plan = {
        "herbid_version": herbid.__version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "sources": described,
        "counts": {**total.counts(), "unique_urls": len(urls), "unique_local_files": len(total.paths.values()),
                   "problems": len(problems)},
        "dropped_by_reason": problems.by_action("dropped"),
        "other_problems_by_reason": {action: problems.by_action(action)
                                     for action in sorted({action for action, _ in problems.counts})
                                     if action != "dropped"},
        "hosts": hosts(urls),
        "urls_file": PLAN_URLS,
        "problems_sample": [p.to_dict() for p in problems],
    }
    write_json(out / PLAN, plan)
    return plan


def hosts(urls: pa.Array) -> dict[str, int]:
    """URLs per host (``host[:port]``, lower case), most first."""
    if not len(urls):
        return {}
    found = pc.utf8_lower(pc.struct_field(pc.extract_regex(urls, _HOST), "host"))
    counts = pc.value_counts(found.drop_null()).to_pylist()
    return {c["values"]: c["counts"] for c in sorted(counts, key=lambda c: (-c["counts"], c["values"]))}


def _write_lines(path: Path, values: pa.Array) -> None:
    """One value a line; a line break inside one (a quoted CSV field may hold it) is
    percent-encoded so that it cannot start a line of its own."""
    with path.open("w", encoding="utf-8") as handle:
        for start in range(0, len(values), _BUFFER):
            chunk = values.slice(start, _BUFFER).to_pylist()
            handle.write("".join(f"{value.translate(_LINE_BREAKS)}\n" for value in chunk))
