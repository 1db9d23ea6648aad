"""Darwin Core Archives: a zip (or unpacked folder) with ``meta.xml`` describing its tables.

This is how herbarium portals (Symbiota/SEINet, IPT, GBIF, iDigBio) publish specimens: an
occurrence *core* table plus *extensions* joined to it by the core id. herbid reads the
occurrence core and the multimedia extension (Audubon Core or GBIF Multimedia), and
yields one record per image. An archive without a multimedia extension can still name
its images in the core's ``associatedMedia``.

meta.xml (parsed in :mod:`herbid.data.sources.dwca_meta`) and the tables are read with
defusedxml and the csv module rather than through python-dwca-reader, for three reasons:
the reader extracts zips to disk (herbid reads members in place, so a hostile archive
never writes a file), it parses XML with the standard library (no protection against
entity expansion), and it stops at the first malformed row, while herbid reports the row
and goes on.

Every dialect attribute of meta.xml is honoured: ``encoding`` (per line, with a Latin-1
fallback that is reported), ``fieldsTerminatedBy``, ``fieldsEnclosedBy`` (empty: no
quoting), ``linesTerminatedBy`` (``\\n``/``\\r\\n``/``\\r`` are treated alike because
archives often declare one and ship another), ``ignoreHeaderLines`` and per-field
``default`` values. Row-to-record rules and problem reporting are shared with the CSV
source (see :mod:`herbid.data.sources.rows`).

Archives of millions of rows (GBIF and iDigBio bulk downloads) stream: the tables are
read line by line through the same capped splitter, the multimedia extension goes into
Arrow columns (:mod:`herbid.data.sources.media_index`, no Python object per row) and the
core is joined to it in chunks, records being yielded as they are made. What grows with
the archive is that index and the set of core ids seen (for the duplicate check).
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from itertools import islice
from pathlib import Path, PurePosixPath
from typing import IO, Any

from herbid.data.records import SourceRecord
from herbid.data.sources.base import IMAGE_SUFFIXES, ProblemLog, Source, SourceError, register_source
from herbid.data.sources.dwca_meta import (
    META,
    META_MAX_BYTES,
    MULTIMEDIA_ROW_TYPES,
    ArchiveMeta,
    FieldSpec,
    TableSpec,
    parse_meta,
)
from herbid.data.sources.media import MediaError, MediaRef, looks_like_location, split_media
from herbid.data.sources.media_index import MediaIndex
from herbid.data.sources.rows import (
    RowRules,
    field_count_problem,
    first_license,
    missing_column_problem,
    row_records,
    term_name,
)
from herbid.data.sources.tables import TextTable
from herbid.data.sources.zipsafe import open_zip, read_errors_as_source_error, unsafe_member

__all__ = [
    "IMAGE_TYPES",
    "MEDIA_LOCATION_TERMS",
    "META",
    "META_MAX_BYTES",
    "MULTIMEDIA_ROW_TYPES",
    "ArchiveMeta",
    "DwcaSource",
    "FieldSpec",
    "TableSpec",
    "parse_meta",
]

#: Terms of a multimedia row that may hold the image location, in order of preference.
MEDIA_LOCATION_TERMS: tuple[str, ...] = (
    "accessURI",
    "goodQualityAccessURI",
    "identifier",
    "furtherInformationURL",
)
#: ``dc:type`` values (last URI segment, lower case) that are images.
IMAGE_TYPES = frozenset({"stillimage", "image", "photograph"})
#: Core rows joined to the multimedia index at a time (their fields are held meanwhile).
CORE_CHUNK_ROWS = 20_000
_STAGE = "source"


# --------------------------------------------------------------------------- where the files are


class _Container:
    """The files of an archive, unpacked in a folder or read in place from a zip."""

    display: str
    #: Folder that relative media paths resolve against, and must stay inside.
    base: Path

    def where(self, name: str) -> str:
        return f"{self.display}/{name}"

    def read_meta(self) -> bytes:
        raise NotImplementedError

    def opener(self, name: str) -> Callable[[], IO[bytes]]:
        raise NotImplementedError

    def check_local(self, value: str, location: str) -> None:
        """Hook for media paths that resolved to a local file (the zip refuses its own)."""

    def _checked_name(self, name: str) -> str:
        posix = name.replace("\\", "/")
        if unsafe_member(posix) or "://" in posix:
            raise SourceError(f"{self.where(META)}: unsafe path in meta.xml: {name!r}")
        return posix


class _FolderContainer(_Container):
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.display = str(folder)
        self.base = folder

    def read_meta(self) -> bytes:
        path = self.folder / META
        if path.stat().st_size > META_MAX_BYTES:
            raise SourceError(f"{self.where(META)}: too large for a meta.xml")
        return path.read_bytes()

    def opener(self, name: str) -> Callable[[], IO[bytes]]:
        path = self.folder / self._checked_name(name)
        if not path.is_file():
            raise SourceError(f"{self.where(name)}: data file named in meta.xml is missing")
        return lambda: path.open("rb")


class _ZipContainer(_Container):
    def __init__(self, path: Path, display: str) -> None:
        self.display = display
        self.base = path.parent
        self.archive = open_zip(path, display)
        self.names = set(self.archive.namelist())

    def read_meta(self) -> bytes:
        if self.archive.getinfo(META).file_size > META_MAX_BYTES:
            raise SourceError(f"{self.where(META)}: too large for a meta.xml")
        with self.archive.open(META) as handle:
            return handle.read(META_MAX_BYTES + 1)[:META_MAX_BYTES]

    def opener(self, name: str) -> Callable[[], IO[bytes]]:
        member = self._checked_name(name)
        if member not in self.names:
            raise SourceError(f"{self.where(name)}: data file named in meta.xml is missing")
        return lambda: self.archive.open(member)

    def check_local(self, value: str, location: str) -> None:
        member = str(PurePosixPath(value.replace("\\", "/")))
        if member in self.names and not Path(location).exists():
            raise MediaError("image inside the zip archive", f"unzip it and read the folder: {member}")


# --------------------------------------------------------------------------- reading


def _checked_rows(table: TextTable, spec: TableSpec, problems: ProblemLog) -> Iterator[tuple[int, list[str]]]:
    """Data rows with the right number of fields, as ``(line, fields)``.

    The expected width is the last header line's (or, with no header, the first row's):
    a table may hold more columns than meta.xml maps, but every row must have the same
    number. The last header line counts because earlier ones may be a free-text preamble.
    """
    rows = table.rows(problems)
    width: int | None = None
    for _ in range(spec.dialect.header_lines):
        header = next(rows, None)
        if header is None:
            return
        width = len(header[1])
    for line, fields in rows:
        if width is None:
            width = len(fields)
        if spec.max_index >= width:
            raise SourceError(
                f"{table.display}: meta.xml maps column {spec.max_index} but the file has {width} columns"
            )
        if len(fields) != width:
            field_count_problem(problems, f"{table.display}:{line}", len(fields), width)
            continue
        yield line, fields


def _batched(rows: Iterator[tuple[int, list[str]]], size: int) -> Iterator[list[tuple[int, list[str]]]]:
    while chunk := list(islice(rows, size)):
        yield chunk


def _not_image(values: Mapping[str, str | None]) -> str | None:
    """Why a multimedia row is not an image (its type or format says so), or ``None``."""
    kind = values.get("type")
    if kind and term_name(kind).lower() not in IMAGE_TYPES:
        return f"type {kind}"
    fmt = (values.get("format") or "").lower()
    if fmt and not fmt.startswith("image/") and f".{fmt.lstrip('.')}" not in IMAGE_SUFFIXES:
        return f"format {fmt}"
    return None


class _ArchiveReader:
    """One pass over an archive: multimedia first (into a columnar :class:`MediaIndex`), then
    the core, streamed in chunks of :data:`CORE_CHUNK_ROWS` rows joined to it.

    What stays in memory for the whole read is the media index and the set of core ids
    seen (a duplicate id must be refused wherever it comes); records are yielded as each
    chunk is joined, so a caller that does not keep them reads in bounded memory.
    """

    def __init__(
        self,
        container: _Container,
        meta: ArchiveMeta,
        source: str,
        problems: ProblemLog,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.container = container
        self.meta = meta
        self.problems = problems
        options = options or {}
        self.rules = RowRules(
            source=source,
            base=container.base,
            confine=True,
            check_local=container.check_local,
            roots=tuple(options.get("media_roots") or ()),
            follow_symlinks=bool(options.get("follow_symlinks")),
        )
        self.seen: set[str] = set()

    def records(self) -> Iterator[SourceRecord]:
        core = self.meta.core
        if term_name(core.row_type).lower() != "occurrence":
            raise SourceError(
                f"{self.container.display}: core rowType is {term_name(core.row_type)}, not Occurrence; "
                "herbid reads specimen (occurrence) archives"
            )
        media = self._load_media()
        if media is None and not core.has_term("associatedMedia"):
            self._count_imageless_rows()
            return
        for name in core.locations:
            table = TextTable(self.container.opener(name), self.container.where(name), core.dialect)
            for chunk in _batched(_checked_rows(table, core, self.problems), CORE_CHUNK_ROWS):
                keys = [core.key(fields) or None for _, fields in chunk]
                joined = media.lookup(keys) if media is not None else [[] for _ in chunk]
                for (line, fields), key, images in zip(chunk, keys, joined, strict=True):
                    yield from self._core_row(f"{table.display}:{line}", fields, key, images)
            table.report_fallback(self.problems)
        if media is not None:
            self._report_orphans(media)

    def _core_row(self, origin: str, fields: list[str], key: str | None, images: list[MediaRef]
                  ) -> list[SourceRecord]:
        core = self.meta.core
        if key is not None:
            if key in self.seen:
                self.problems.add(_STAGE, origin, "duplicate core id", detail=key)
                return []
            self.seen.add(key)
        values = core.values(fields)
        if not values.get("occurrenceID") and key:
            values["occurrenceID"] = key  # the core id of an Occurrence core is its occurrenceID
        refs = images or [MediaRef(v, origin) for v in split_media(values.get("associatedMedia"))]
        return row_records(
            values, refs, origin, self.rules, self.problems, extra={"id": key} if key else None
        )

    def _count_imageless_rows(self) -> None:
        """No multimedia extension and no associatedMedia: one summary problem for all rows."""
        core = self.meta.core
        count = 0
        for name in core.locations:
            table = TextTable(self.container.opener(name), self.container.where(name), core.dialect)
            count += sum(1 for _ in _checked_rows(table, core, self.problems))
        missing_column_problem(
            self.problems, self.container.display, count, "no multimedia extension or associatedMedia"
        )

    def _load_media(self) -> MediaIndex | None:
        """Images per core id from every multimedia extension; ``None`` if there is none."""
        specs = self.meta.multimedia
        if not specs:
            return None
        if self.meta.core.key_index is None:
            raise SourceError(
                f"{self.container.where(META)}: core has no <id> to join the multimedia extension"
            )
        media = MediaIndex()
        for spec in specs:
            if spec.key_index is None:
                raise SourceError(f"{self.container.where(META)}: multimedia extension has no <coreid>")
            for name in spec.locations:
                table = TextTable(self.container.opener(name), self.container.where(name), spec.dialect)
                number = media.table(table.display)
                for line, fields in _checked_rows(table, spec, self.problems):
                    ref = self._media_ref(spec.values(fields), f"{table.display}:{line}")
                    if ref is not None:
                        media.add(spec.key(fields) or "", ref, number, line)  # "" stays orphaned
                table.report_fallback(self.problems)
        media.finish()
        return media

    def _media_ref(self, values: Mapping[str, str | None], origin: str) -> MediaRef | None:
        reason = _not_image(values)
        if reason:
            self.problems.add(_STAGE, origin, "not an image", detail=reason)
            return None
        for term in MEDIA_LOCATION_TERMS:
            value = values.get(term)
            if value and looks_like_location(value):
                return MediaRef(value, origin, first_license(values))
        self.problems.add(
            _STAGE, origin, "no media location", detail=f"none of {', '.join(MEDIA_LOCATION_TERMS)}"
        )
        return None

    def _report_orphans(self, media: MediaIndex) -> None:
        for key, ref in media.orphans():
            self.problems.add(_STAGE, ref.origin, "orphaned multimedia row", detail=f"coreid {key!r} not in core")


# --------------------------------------------------------------------------- the source


@register_source
class DwcaSource(Source):
    """A Darwin Core Archive: a zip with ``meta.xml`` at its root, or a folder holding one.

    Ranked before the generic folder sources because an unpacked archive is also a folder
    of files, and its meta.xml is the more specific signal.
    """

    name = "dwca"
    priority = 20

    @classmethod
    def detect(cls, location: str) -> bool:
        path = Path(location)
        try:
            if path.is_dir():
                return (path / META).is_file()
            if path.is_file() and path.name == META:
                return True
            if path.is_file() and zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as archive:
                    return META in archive.namelist()
        except (OSError, zipfile.BadZipFile):
            return False
        return False

    def records(self, problems: ProblemLog) -> Iterator[SourceRecord]:
        with read_errors_as_source_error(self.location), self._container() as container:
            meta = parse_meta(container.read_meta(), container.where(META))
            yield from _ArchiveReader(container, meta, self.name, problems, self.options).records()

    @contextmanager
    def _container(self) -> Iterator[_Container]:
        path = Path(self.location)
        if path.is_file() and path.name == META:
            path = path.parent
        if path.is_dir():
            if not (path / META).is_file():
                raise SourceError(f"{self.location}: no {META} in folder; not a Darwin Core Archive")
            yield _FolderContainer(path)
        elif path.is_file() and zipfile.is_zipfile(path):
            container = _ZipContainer(path, self.location)
            with container.archive:
                if META not in container.names:
                    raise SourceError(
                        f"{self.location}: no {META} at the root of the zip; not a Darwin Core Archive"
                    )
                yield container
        elif path.exists():
            raise SourceError(f"{self.location}: not a zip or folder; not a Darwin Core Archive")
        else:
            raise SourceError(f"{self.location}: no such file or folder")
