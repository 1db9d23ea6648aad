"""``herbid dataset build``: sources → names → fetch → images → curation → dataset folder.

Each stage is a small function over a list of records plus the shared
:class:`~herbid.data.sources.base.ProblemLog`; nothing is dropped without an entry in
``report.json``. Images are content-addressed and finished ones are never redone, so an
interrupted build resumes where it stopped.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

import herbid
from herbid.data.dataset_folder import REPORT, manifest_hash, save_manifest, write_json
from herbid.data.imaging import DEFAULT_MAX_PIXELS, ImageRejected, StoredImage, store_image
from herbid.data.names import load_synonyms, parse_scientific_name
from herbid.data.phash import NEAR_DUPLICATE_BITS, near_duplicates_of_hex
from herbid.data.records import DWC_TERMS, SourceRecord
from herbid.data.safe_files import DEFAULT_MAX_FILE_BYTES
from herbid.data.sources.base import ProblemLog, Source, SourceError, open_source
from herbid.engine import open_engine
from herbid.errors import InvalidOption


@dataclass
class BuildOptions:
    """Options of ``herbid dataset build`` (defaults keep everything usable)."""

    min_per_species: int = 1
    max_per_species: int | None = None
    synonyms: Path | None = None
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    #: Where decoding runs (``--engine``): ``"local"`` processes or ``"ray"`` (herbid.engine).
    #: Downloads stay on this machine either way: per-host politeness needs one coordinator.
    engine: str = "local"
    #: Ray cluster to join with ``engine="ray"`` (default ``$RAY_ADDRESS``, else a local Ray).
    #: Its workers write into ``out``, so on a cluster ``out`` must be shared storage.
    address: str | None = None
    download_workers: int = 8
    #: Image requests in flight to one host at once (``--per-host``): politeness to small servers.
    download_per_host: int = 2
    download_timeout: float = 30.0
    max_download_bytes: int = 100 * 2**20
    #: Let downloads and portal queries reach loopback, private and link-local addresses
    #: (an in-house image server); refused by default, at every redirect hop too.
    allow_private_hosts: bool = False
    #: Hamming distance (of 256 bits) at or under which two sheets count as near duplicates.
    near_duplicate_bits: int = NEAR_DUPLICATE_BITS
    max_pixels: int = DEFAULT_MAX_PIXELS
    seed: int = 0
    kind: str | None = None
    #: A local image file bigger than this is refused before it is read (a 90 MP TIFF is ~270 MB).
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    #: Folders, besides a CSV's or archive's own, that its local media paths may point into.
    media_roots: tuple[Path, ...] = ()
    #: Follow symlinks that lead out of a source folder (refused and reported by default).
    follow_symlinks: bool = False
    #: A regular expression over each image's file name whose group ``institution`` (or
    #: group 1) names the sheet's institution, for sources that carry none (folders such as
    #: viola-dev's ``Vxx_YY_ZZZ.jpg``). A record's own ``institutionCode`` always wins.
    institution_pattern: str | None = None
    progress: bool = True


@dataclass
class BuildResult:
    out: Path
    images: int
    species: int
    report: dict[str, Any]


def build_dataset(sources: Sequence[str | Path | Source], out: str | Path,
                  options: BuildOptions | None = None) -> BuildResult:
    """Build (or resume building) a dataset folder from one or more sources."""
    options = options or BuildOptions()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    problems = ProblemLog()
    counts: dict[str, int] = {}

    records, source_names = read_sources(sources, problems, kind=options.kind,
                                         **source_options(options))
    counts["records_read"] = len(records)
    if options.institution_pattern:
        counts["institutions_from_file_names"] = institutions_from_file_names(records, options.institution_pattern)
    records = normalise_names(records, problems, load_synonyms(options.synonyms) if options.synonyms else {})
    records = fetch_remote(records, out, problems, options)
    counts["records_with_file"] = len(records)
    rows = store_images(records, out, problems, options)
    counts["images_decoded"] = len(rows)
    frame = rows_to_frame(rows)
    frame = drop_exact_duplicates(frame, problems)
    counts["after_exact_duplicates"] = len(frame)
    frame = drop_unusable_names(frame, problems)
    counts["with_species_name"] = len(frame)
    near_pairs = find_near_duplicates(frame, options.near_duplicate_bits, progress=options.progress)
    for a, b, distance in near_pairs:
        problems.add("curation", f"{a} ~ {b}", "near duplicate", action="reported", detail=f"phash distance {distance}")
    frame = apply_species_limits(frame, problems, options)
    counts["images"] = len(frame)
    counts["species"] = int(frame["scientificName"].nunique()) if len(frame) else 0

    save_manifest(out, frame)
    report = {
        "herbid_version": herbid.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sources": source_names,
        "options": {k: _jsonable(v) for k, v in asdict(options).items()},
        "counts": counts,
        "manifest_sha256": manifest_hash(out),
        "problems_by_reason": problems.by_reason(),
        "near_duplicates": [{"a": a, "b": b, "distance": d} for a, b, d in near_pairs],
        "problems": [p.to_dict() for p in problems],
    }
    write_json(out / REPORT, report)
    return BuildResult(out=out, images=counts["images"], species=counts["species"], report=report)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value) if isinstance(value, Path) else value


# --- stage 1: sources -------------------------------------------------------------------

def source_options(options: BuildOptions) -> dict[str, Any]:
    """The build options every source is opened with (each uses those it knows)."""
    return {"media_roots": tuple(Path(root) for root in options.media_roots),
            "follow_symlinks": options.follow_symlinks,
            "allow_private_hosts": options.allow_private_hosts}


class SourceStream:
    """The records of one source, one at a time: iterate it once, then read :meth:`describe`.

    A source that cannot be read (at the start or part way) is reported and marked
    ``failed``; the records it gave before failing have been yielded, and callers drop them.
    """

    def __init__(self, location: str | Path | Source, problems: ProblemLog, kind: str | None,
                 options: dict[str, Any]) -> None:
        self.location, self.problems, self.kind, self.options = location, problems, kind, options
        self.name = ""
        self.count = 0
        self.failed = False

    def __iter__(self) -> Iterator[SourceRecord]:
        location = self.location
        try:
            source = location if isinstance(location, Source) else open_source(location, kind=self.kind,
                                                                               **self.options)
            self.location, self.name = source.location, source.name
            for record in source.records(self.problems):
                record.source = record.source or source.name
                self.count += 1
                yield record
        except SourceError as exc:
            self.problems.add("source", str(location), str(exc))
            self.location, self.failed = str(location), True

    def describe(self) -> dict[str, str]:
        if self.failed:
            return {"location": str(self.location), "kind": "unreadable", "records": "0"}
        return {"location": str(self.location), "kind": self.name, "records": str(self.count)}


def stream_sources(sources: Iterable[str | Path | Source], problems: ProblemLog, *, kind: str | None = None,
                   **options: Any) -> Iterator[SourceStream]:
    """One :class:`SourceStream` per source, opened with ``options`` (``media_roots``,
    ``follow_symlinks``, ``allow_private_hosts``) when it is iterated."""
    for location in sources:
        yield SourceStream(location, problems, kind, options)


def read_sources(sources: Iterable[str | Path | Source], problems: ProblemLog, *, kind: str | None = None,
                 **options: Any) -> tuple[list[SourceRecord], list[dict[str, str]]]:
    """All records of all sources, from :func:`stream_sources`; a source that cannot be read
    is reported and gives none (not even the rows before the damage)."""
    records: list[SourceRecord] = []
    described: list[dict[str, str]] = []
    for stream in stream_sources(sources, problems, kind=kind, **options):
        found = list(stream)
        described.append(stream.describe())
        if not stream.failed:
            records.extend(found)
    return records, described


# --- stage 2: names ---------------------------------------------------------------------

UNUSABLE = "unusable_name"  # extra key: why a record's name cannot be a training label


def institutions_from_file_names(records: list[SourceRecord], pattern: str) -> int:
    """Fill ``institutionCode`` from ``pattern`` on the file name where a record has none;
    returns how many were filled."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise InvalidOption(f"--institution-pattern {pattern!r}: not a regular expression ({exc})") from None
    if compiled.groups == 0:
        raise InvalidOption(f"--institution-pattern {pattern!r}: needs a group, e.g. '_(?P<institution>[A-Z]+)_'")
    group = "institution" if "institution" in compiled.groupindex else 1
    filled = 0
    for record in records:
        if record.institutionCode:
            continue
        found = compiled.search(PurePosixPath(record.source_path.replace("\\", "/")).name)
        if found and found.group(group):
            record.institutionCode = found.group(group)
            filled += 1
    return filled


def normalise_names(records: list[SourceRecord], problems: ProblemLog, synonyms: dict[str, str]
                    ) -> list[SourceRecord]:
    """Strip authorship and apply synonyms.

    Records without a usable species name are marked, not dropped yet: a local image may
    be a byte-identical copy of a named sheet (the duplicate report must see it), while a
    remote one is dropped now so it is never downloaded.
    """
    return [record for record in records if normalise_name(record, problems, synonyms)]


def normalise_name(record: SourceRecord, problems: ProblemLog, synonyms: dict[str, str]) -> bool:
    """:func:`normalise_names` for one record: whether it goes on (a plan counts them one by one)."""
    reason, detail = _label(record, synonyms, problems)
    if reason:
        if is_url(record.source_path):
            problems.add("names", record.origin or record.source_path, reason, detail=detail)
            return False
        record.extra[UNUSABLE] = (reason, detail)
    return True


def _label(record: SourceRecord, synonyms: dict[str, str], problems: ProblemLog) -> tuple[str, str]:
    """Set the record's canonical label; return (reason, detail) when it has none."""
    raw = record.scientificName or record.verbatimScientificName
    if not raw:
        return "no scientific name", ""
    parsed = parse_scientific_name(raw)
    folder_label = bool(record.extra.get("label_is_folder"))
    label = parsed.canonical
    if label is None and folder_label:
        label = raw  # opaque folder labels such as "V01"
    elif parsed.uncertain:
        return "uncertain identification (cf./aff.)", raw
    elif label is None:
        return "unparseable scientific name", raw
    elif not parsed.is_species and not folder_label:
        return "identified to genus only", raw
    accepted = synonyms.get(label, label)
    if accepted != label:
        problems.add("names", record.origin or record.source_path, "synonym replaced", action="converted",
                     detail=f"{label} → {accepted}")
    record.verbatimScientificName = record.verbatimScientificName or raw
    record.scientificName = accepted
    record.genus = record.genus or (accepted.split()[0] if parsed.canonical else None)
    return "", ""


# --- stage 3: fetch ---------------------------------------------------------------------

def is_url(path: str) -> bool:
    return "://" in path


def fetch_remote(records: list[SourceRecord], out: Path, problems: ProblemLog, options: BuildOptions
                 ) -> list[SourceRecord]:
    """Download URL images into ``out/downloads`` (resumable); local paths pass through."""
    urls = sorted({r.source_path for r in records if is_url(r.source_path)})
    local_copy: dict[str, Path] = {}
    if urls:
        from herbid.data.download import download_images

        local_copy = download_images(
            urls, out / "downloads", problems,
            workers=options.download_workers, per_host=options.download_per_host,
            timeout=options.download_timeout, max_bytes=options.max_download_bytes, progress=options.progress,
            allow_private_hosts=options.allow_private_hosts,
        )
    kept = []
    for record in records:
        if is_url(record.source_path):
            if record.source_path not in local_copy:
                continue  # the downloader reported why
            record.extra["local_path"] = str(local_copy[record.source_path])
        kept.append(record)
    return kept


# --- stage 4: images --------------------------------------------------------------------

def _store_one(args: tuple[str, str, int, int]) -> StoredImage | str:
    path, out, max_pixels, max_bytes = args
    try:
        return store_image(Path(path), Path(out), max_pixels=max_pixels, max_bytes=max_bytes)
    except ImageRejected as exc:
        return str(exc)


def store_images(records: list[SourceRecord], out: Path, problems: ProblemLog, options: BuildOptions
                 ) -> list[dict[str, Any]]:
    """Decode and store every image (in parallel, on ``options.engine``); bad files are quarantined
    with a reason. Workers write the content-addressed copies themselves, so parallel writes are safe."""
    jobs = [(r.extra.get("local_path", r.source_path), str(out), options.max_pixels, options.max_file_bytes)
            for r in records]
    with open_engine(options.engine, workers=options.workers, address=options.address) as engine:
        results: list[StoredImage | str] = list(engine.map(_store_one, jobs, desc="images",
                                                           progress=options.progress))
    rows = []
    for record, result in zip(records, results):
        where = record.origin or record.source_path
        if isinstance(result, str):
            action = "dropped" if result == "missing file" else "quarantined"
            problems.add("image", where, result, action=action, detail=record.source_path)
            continue
        for note in result.conversions:
            problems.add("image", where, "converted", action="converted", detail=note)
        rows.append(_manifest_row(record, result))
    return rows


def _manifest_row(record: SourceRecord, stored: StoredImage) -> dict[str, Any]:
    row: dict[str, Any] = {term: getattr(record, term) for term in DWC_TERMS}
    row.update(
        image_id=stored.image_id,
        source=record.source,
        source_path=record.source_path,
        image_path=stored.image_path,
        large_image_path=stored.large_image_path,
        sha256=stored.sha256,
        phash=stored.phash,
        width=stored.width,
        height=stored.height,
        split=None,
        where=record.origin or record.source_path,
        unusable=" | ".join(record.extra[UNUSABLE]) if UNUSABLE in record.extra else None,
    )
    for key, value in row.items():
        if value is not None and key not in {"width", "height"}:
            row[key] = str(value)
    return row


def rows_to_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    from herbid.data.records import MANIFEST_COLUMNS

    frame = pd.DataFrame(rows, columns=[*MANIFEST_COLUMNS, "where", "unusable"])
    frame["width"] = frame["width"].astype("int64")
    frame["height"] = frame["height"].astype("int64")
    return frame


# --- stage 5: curation ------------------------------------------------------------------

def drop_exact_duplicates(frame: pd.DataFrame, problems: ProblemLog) -> pd.DataFrame:
    """Byte-identical files are kept once; every other copy is reported.

    The copy kept is the first one with a usable name, so a named duplicate rescues an
    unnamed sheet.
    """
    order = frame.assign(_unnamed=frame["unusable"].notna()).sort_values("_unnamed", kind="stable")
    duplicated = order.duplicated("sha256", keep="first")
    first_by_hash = order.loc[~duplicated].set_index("sha256")
    for _, row in order.loc[duplicated].iterrows():
        kept = first_by_hash.loc[row["sha256"]]
        detail = f"same bytes as {kept['source_path']}"
        if kept["scientificName"] != row["scientificName"]:
            detail += f" (named {kept['scientificName']!r} there, {row['scientificName']!r} here)"
        problems.add("curation", row["source_path"], "exact duplicate", detail=detail)
    return order.loc[~duplicated].drop(columns="_unnamed").sort_index().reset_index(drop=True)


def drop_unusable_names(frame: pd.DataFrame, problems: ProblemLog) -> pd.DataFrame:
    """Drop (and report) the images whose name cannot be a species label."""
    unusable = frame["unusable"].notna()
    for _, row in frame.loc[unusable].iterrows():
        reason, _, detail = row["unusable"].partition(" | ")
        problems.add("names", row["where"], reason, detail=detail)
    return frame.loc[~unusable].drop(columns=["unusable", "where"]).reset_index(drop=True)


def find_near_duplicates(frame: pd.DataFrame, max_bits: int, *, progress: bool = False) -> list[tuple[str, str, int]]:
    """Pairs of images (by id) whose perceptual hashes differ in at most ``max_bits`` bits."""
    pairs = near_duplicates_of_hex(frame["phash"].tolist(), max_bits, progress=progress)
    ids = frame["image_id"].tolist()
    return [(ids[i], ids[j], d) for i, j, d in pairs]


def apply_species_limits(frame: pd.DataFrame, problems: ProblemLog, options: BuildOptions) -> pd.DataFrame:
    """``--max-per-species`` samples (seeded); ``--min-per-species`` drops small species."""
    keep = pd.Series(True, index=frame.index)
    rng = random.Random(options.seed)
    for species, group in frame.groupby("scientificName", sort=True):
        if options.max_per_species and len(group) > options.max_per_species:
            ordered = sorted(group.index, key=lambda i: frame.at[i, "image_id"])
            excess = set(ordered) - set(rng.sample(ordered, options.max_per_species))
            for i in sorted(excess):
                problems.add("curation", frame.at[i, "source_path"], "over --max-per-species",
                             detail=f"{species}: kept {options.max_per_species} of {len(group)}")
                keep[i] = False
        if int(keep[group.index].sum()) < options.min_per_species:
            for i in group.index[keep[group.index]]:
                problems.add("curation", frame.at[i, "source_path"], "under --min-per-species",
                             detail=f"{species}: {int(keep[group.index].sum())} < {options.min_per_species}")
                keep[i] = False
    return frame.loc[keep].reset_index(drop=True)


