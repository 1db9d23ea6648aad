"""Identify thousands of sheets from files and folders: streamed, resumable, fault-tolerant.

* **Streamed.** Files are read and decoded by a small thread pool (Pillow releases the
  GIL while decoding and resizing) a bounded number of images ahead of the model, so
  memory holds a few batches whatever the number of sheets.
* **Resumable.** Every sheet's result is appended as one JSON line to a *journal* and
  flushed after each batch. A rerun reads the journal and skips every file whose
  (absolute path, size, mtime) is already there, so an interrupted job continues where
  it stopped and a finished one costs nothing. The journal is OUT itself for
  ``fmt="jsonl"``, otherwise ``OUT.jsonl`` beside it (``results.csv`` → ``results.csv.jsonl``);
  JSON/CSV/Darwin Core outputs are rewritten from the journal at the end (atomically), one
  row per path, the latest record winning (a changed file is identified again).
* **Fault-tolerant.** A file that cannot be read or decoded becomes a record with an
  ``"error"`` reason and is counted as failed; the run goes on. Failed files are skipped on
  a rerun too (the same bytes would fail again) unless ``retry_failed=True``.

A journal belongs to one model: resuming into a journal written by another bundle is
refused, because mixing two models' answers in one result file would be silently wrong.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import io
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from herbid.data.dataset_folder import atomic_path
from herbid.data.safe_files import DEFAULT_MAX_FILE_BYTES, read_regular_file
from herbid.engine import Engine, open_engine
from herbid.errors import InvalidOption, MissingInput, UserError
from herbid.identification.predict import Identification, Identifier

#: Suffixes picked up when a folder is searched (a file named explicitly is always tried).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".jp2"})
FORMATS = ("json", "jsonl", "csv", "dwc")
#: Darwin Core Identification terms of a ``fmt="dwc"`` row, in column order.
DWC_COLUMNS = ("associatedMedia", "scientificName", "taxonRank", "identificationQualifier", "identifiedBy",
               "dateIdentified", "identificationRemarks", "identificationVerificationStatus")


class JournalError(UserError, ValueError):
    """A result file that belongs to another model (resume refused)."""


@dataclass
class BatchSummary:
    """What a batch run did; ``records`` holds the results only when there was no OUT."""

    identified: int = 0
    #: Files skipped because OUT already has their record (identification or error) …
    skipped_done: int = 0
    #: … of which this many are error records from an earlier run.
    previously_failed: int = 0
    failed: int = 0
    uncertain: int = 0
    seconds: float = 0.0
    out: Path | None = None
    journal: Path | None = None
    failures: list[tuple[str, str]] = field(default_factory=list)
    records: list[dict[str, Any]] | None = None

    @property
    def total(self) -> int:
        return self.identified + self.skipped_done + self.failed

    @property
    def sheets_per_second(self) -> float:
        done = self.identified + self.failed
        return done / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"identified": self.identified, "skipped_done": self.skipped_done,
                "previously_failed": self.previously_failed, "failed": self.failed,
                "uncertain": self.uncertain, "total": self.total, "seconds": round(self.seconds, 3),
                "sheets_per_second": round(self.sheets_per_second, 2),
                "out": str(self.out) if self.out else None, "journal": str(self.journal) if self.journal else None,
                "failures": [{"path": p, "error": e} for p, e in self.failures]}


# -------------------------------------------------------------------------- inputs


def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Absolute paths of the images to identify, in a stable order, each once.

    Folders are searched recursively for :data:`IMAGE_SUFFIXES` (hidden files such as
    ``._x.jpg`` or half-written ``.part`` files are skipped); a file named explicitly is
    kept whatever its suffix, so that a bad one is reported rather than silently ignored.
    """
    found: dict[Path, None] = {}
    for item in inputs:
        path = Path(item).expanduser().absolute()
        if path.is_dir():
            for file in sorted(_walk_images(path)):
                found.setdefault(file, None)
        elif path.exists():
            found.setdefault(path, None)
        else:
            raise MissingInput(f"{item}: no such file or folder")
    return list(found)


def _walk_images(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield Path(root) / name


@dataclass(frozen=True)
class FileKey:
    """What identifies a file's content cheaply, without reading it."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> "FileKey":
        stat = path.stat()
        return cls(str(path), int(stat.st_size), int(stat.st_mtime_ns))

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "FileKey | None":
        try:
            return cls(str(record["path"]), int(record["size"]), int(record["mtime_ns"]))
        except (KeyError, TypeError, ValueError):
            return None


# ------------------------------------------------------------------------- journal


def journal_path(out: Path, fmt: str) -> Path:
    """Where the resumable JSONL record of a run writing ``out`` lives."""
    return out if fmt == "jsonl" else out.with_name(out.name + ".jsonl")


def read_journal(path: Path) -> list[dict[str, Any]]:
    """The records of a journal; a torn last line (the job was killed mid-write) is ignored."""
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def latest_per_path(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per path, the latest winning, in order of first appearance."""
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        latest[str(record.get("path"))] = record
    return list(latest.values())


def _check_model(records: list[dict[str, Any]], model_id: str, journal: Path) -> None:
    others = sorted({r["model_id"] for r in records if r.get("model_id") and r["model_id"] != model_id})
    if others:
        raise JournalError(f"{journal}: holds identifications by another model ({others[0]}), not {model_id}; "
                           "write to a new --out (or pass resume=False / --no-resume to start over)")


class _Journal:
    """Appends records as JSON lines, flushing after every batch."""

    def __init__(self, path: Path, *, append: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torn = append and path.exists() and path.stat().st_size > 0 and not _ends_with_newline(path)
        self.handle: IO[str] = open(path, "a" if append else "w", encoding="utf-8")
        if torn:
            self.handle.write("\n")  # never glue a new record onto a torn line

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        for record in records:
            self.handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


# ------------------------------------------------------------------------ pipeline


@dataclass
class _Loaded:
    key: FileKey
    sha256: str | None = None
    tensor: torch.Tensor | None = None
    error: str | None = None


def _loader(identifier: Identifier, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> Callable[[Path], _Loaded]:
    """Reads and decodes one file; a pipe, device or oversized file is an error record, never read."""
    def load(path: Path) -> _Loaded:
        try:
            key = FileKey.of(path)
        except OSError as exc:
            return _Loaded(FileKey(str(path), -1, -1), error=f"unreadable file: {exc.strerror or exc}")
        try:
            data = read_regular_file(path, max_bytes)
            return _Loaded(key, hashlib.sha256(data).hexdigest(), identifier.sheet_tensor(data))
        except OSError as exc:
            return _Loaded(key, error=f"unreadable file: {exc.strerror or exc}")
        except Exception as exc:  # ImageRejected, or anything else one file can throw: never abort the run
            return _Loaded(key, error=str(exc) or type(exc).__name__)
    return load


def _records(identifier: Identifier, loaded: list[_Loaded], top_k: int, date: str) -> list[dict[str, Any]]:
    """One record per loaded file, in input order: an identification or an error."""
    good = [item for item in loaded if item.tensor is not None]
    answers: Iterator[Identification] = iter(
        identifier.identify_tensors(torch.stack([item.tensor for item in good]), top_k) if good else [])
    records = []
    for item in loaded:
        base = {"path": item.key.path, "size": item.key.size, "mtime_ns": item.key.mtime_ns}
        if item.tensor is None:
            records.append({**base, "error": item.error, "model_id": identifier.model_id, "dateIdentified": date})
        else:
            records.append({**base, "sha256": item.sha256, **next(answers).to_dict(), "dateIdentified": date})
    return records


class _IdentifyStep:
    """One engine worker's share: ``load`` reads and decodes one file, ``run`` identifies a batch."""

    def __init__(self, identifier: Identifier, max_file_bytes: int, top_k: int, date: str) -> None:
        self.identifier, self.top_k, self.date = identifier, top_k, date
        self.load = _loader(identifier, max_file_bytes)

    def run(self, loaded: list[_Loaded]) -> list[dict[str, Any]]:
        return _records(self.identifier, loaded, self.top_k, self.date)


class _IdentifySteps:
    """An :class:`_IdentifyStep` per engine worker: locally around ``identifier`` itself; in a
    Ray actor around the same bundle loaded there (from its folder, which workers must see)."""

    def __init__(self, identifier: Identifier, max_file_bytes: int, top_k: int, date: str) -> None:
        self.identifier: Identifier | None = identifier
        self.bundle = identifier.bundle.path or identifier.bundle
        self.settings = {"batch_size": identifier.batch_size, "max_pixels": identifier.max_pixels,
                         **asdict(identifier.thresholds)}
        self.step = (max_file_bytes, top_k, date)

    def __getstate__(self) -> dict[str, Any]:  # shipped to an actor without the loaded model
        return {**self.__dict__, "identifier": None}

    def __call__(self, device: str | None) -> _IdentifyStep:
        identifier = self.identifier
        if device is not None or identifier is None:
            identifier = Identifier(self.bundle, device=device or "cpu", **self.settings)
        return _IdentifyStep(identifier, *self.step)


def identify_paths(identifier: Identifier, inputs: Sequence[str | Path], out: str | Path | None = None, *,
                   top_k: int = 5, fmt: str = "json", resume: bool = True, progress: bool = True,
                   workers: int | None = None, retry_failed: bool = False,
                   date: _dt.date | None = None, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                   engine: str | Engine = "local", address: str | None = None) -> BatchSummary:
    """Identify every image in ``inputs`` (files or folders); see the module docstring.

    With ``out`` the results go to the journal as they come and to ``out`` in ``fmt`` at
    the end; without it they are returned in ``BatchSummary.records`` (nothing is
    resumable then). ``workers`` decoding threads (default: up to 4, one per core). Only
    regular files of at most ``max_file_bytes`` are read; anything else (a named pipe in a
    folder, a device named on the command line) gets an error record. ``engine``: where the
    batches run (:mod:`herbid.engine`); on Ray, actors that load the bundle once each, the
    same records in the same order.
    """
    if fmt not in FORMATS:
        raise InvalidOption(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    started = time.perf_counter()
    out_path = Path(out) if out is not None else None
    journal = journal_path(out_path, fmt) if out_path else None
    paths = find_images(inputs)
    previous = read_journal(journal) if journal and resume else []
    if journal:
        _check_model(previous, identifier.model_id, journal)
    done = {key: "error" in r for r in previous
            if (key := FileKey.from_record(r)) and (not retry_failed or "error" not in r)}
    keys = {path: _key_or_none(path) for path in paths}
    todo = [path for path in paths if keys[path] not in done]
    summary = BatchSummary(skipped_done=len(paths) - len(todo), out=out_path, journal=journal,
                           previously_failed=sum(done.get(key, False) for key in keys.values()),
                           records=None if out_path else [])
    day = (date or _dt.date.today()).isoformat()
    writer = _Journal(journal, append=resume) if journal else None
    threads = workers or min(4, os.cpu_count() or 1)
    steps = _IdentifySteps(identifier, max_file_bytes, top_k, day)
    try:
        with open_engine(engine, workers=os.cpu_count() or 1, address=address) as running:
            for records in running.map_batches(steps, todo, batch_size=identifier.batch_size, desc="identifying",
                                               progress=progress, threads=threads):
                _count(summary, records)
                if writer:
                    writer.write(records)
                else:
                    summary.records.extend(records)
    finally:
        if writer:
            writer.close()
    if out_path and fmt != "jsonl":
        write_output(latest_per_path(read_journal(journal)), out_path, fmt, top_k=top_k)
    summary.seconds = time.perf_counter() - started
    return summary


def _key_or_none(path: Path) -> FileKey | None:
    try:
        return FileKey.of(path)
    except OSError:
        return None


def _count(summary: BatchSummary, records: list[dict[str, Any]]) -> None:
    for record in records:
        if "error" in record:
            summary.failed += 1
            summary.failures.append((record["path"], str(record["error"])))
        else:
            summary.identified += 1
            summary.uncertain += bool(record.get("uncertain"))


# ------------------------------------------------------------------------- outputs


def csv_columns(top_k: int) -> list[str]:
    ranked = [f"{term}_{i}" for i in range(1, top_k + 1) for term in ("scientificName", "probability")]
    return ["path", "sha256", "suggested_name", "suggested_rank", "uncertain", *ranked, "genus",
            "genus_probability", "family", "family_probability", "model_id", "dateIdentified", "error"]


def csv_row(record: dict[str, Any], top_k: int) -> dict[str, Any]:
    """A flat row of a record: the top-k species as numbered column pairs."""
    row: dict[str, Any] = {key: record.get(key) for key in ("path", "sha256", "suggested_name", "suggested_rank",
                                                             "uncertain", "model_id", "dateIdentified", "error")}
    for i, entry in enumerate((record.get("top") or [])[:top_k], start=1):
        row[f"scientificName_{i}"] = entry["scientificName"]
        row[f"probability_{i}"] = f"{entry['probability']:.6f}"
    for rank in ("genus", "family"):
        taxon = record.get(rank) or {}
        row[rank] = taxon.get("name")
        row[f"{rank}_probability"] = f"{taxon['probability']:.6f}" if taxon else None
    return row


def dwc_row(record: dict[str, Any]) -> dict[str, str] | None:
    """Darwin Core Identification terms for a successful record; None for a failed one."""
    if "error" in record:
        return None
    return Identification.from_dict(record).to_dwc_identification(date=record.get("dateIdentified"),
                                                                   source=record["path"])


def write_records(records: list[dict[str, Any]], handle: IO[str], fmt: str, *, top_k: int = 5) -> None:
    """Write records to an open text handle in ``fmt`` (also used for stdout by the CLI)."""
    if fmt == "json":
        handle.write(json.dumps(records, indent=2, ensure_ascii=False) + "\n")
    elif fmt == "jsonl":
        handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    elif fmt == "csv":
        k = max([len(r.get("top") or []) for r in records] + [1]) if records else top_k
        writer = csv.DictWriter(handle, fieldnames=csv_columns(k), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(csv_row(r, k) for r in records)
    elif fmt == "dwc":
        writer = csv.DictWriter(handle, fieldnames=list(DWC_COLUMNS))
        writer.writeheader()
        writer.writerows(row for r in records if (row := dwc_row(r)) is not None)
    else:
        raise InvalidOption(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")


def write_output(records: list[dict[str, Any]], out: Path, fmt: str, *, top_k: int = 5) -> Path:
    """Write ``records`` to ``out`` atomically (never a half-written result file)."""
    buffer = io.StringIO()
    write_records(records, buffer, fmt, top_k=top_k)
    with atomic_path(out) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8", newline="")
    return out
