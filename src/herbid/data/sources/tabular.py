"""Darwin Core CSV exports: a ``.csv``/``.tsv``/``.txt`` table, or a zip holding one.

Herbaria and portals hand out occurrence tables in many dialects: comma or tab separated,
UTF-8 or Latin-1, plain (``scientificName``), prefixed (``dwc:scientificName``) or full-URI
headers, and GBIF's "simple CSV" download (a zip with one tab-separated file and no
quoting). :class:`DwcCsvSource` reads all of them, one record per image, streaming: a
row becomes its records as it is read, and nothing of earlier rows is kept.

The machinery it shares with :mod:`herbid.data.sources.dwca` lives beside it:
:mod:`~herbid.data.sources.zipsafe` (zip member safety),
:mod:`~herbid.data.sources.tables` (sniffing, line splitting, decoding, row iteration),
:mod:`~herbid.data.sources.media` (media references and path confinement) and
:mod:`~herbid.data.sources.rows` (column names, rows → records, problem reporting).
"""

from __future__ import annotations

import csv
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from herbid.data.records import SourceRecord
from herbid.data.sources.base import ProblemLog, Source, SourceError, register_source
from herbid.data.sources.media import MediaRef, looks_like_location, split_media
from herbid.data.sources.rows import (
    IMAGE_COLUMNS,
    NAME_TERMS,
    RowRules,
    canonical_column,
    field_count_problem,
    first_license,
    missing_column_problem,
    put_value,
    row_records,
    term_name,
)
from herbid.data.sources.tables import MAX_LINE_BYTES, SAMPLE_BYTES, TextTable, sniff_dialect, split_lines
from herbid.data.sources.zipsafe import is_junk_member, open_zip, read_errors_as_source_error

# The source, and (MAX_LINE_BYTES, split_lines, split_media, term_name) names re-exported
# for callers that import them from here.
__all__ = ["MAX_LINE_BYTES", "DwcCsvSource", "folder_table", "split_lines", "split_media", "term_name"]

#: Image columns whose name alone does not promise a media location (``identifier`` is
#: often a catalogue URN, ``file`` anything): a local value there needs an image suffix.
_AMBIGUOUS_IMAGE_COLUMNS = frozenset({"identifier", "file"})
DELIMITED_SUFFIXES = frozenset({".csv", ".tsv", ".txt"})


# --------------------------------------------------------------------------- the CSV source


@dataclass(frozen=True)
class _CsvLocation:
    """Where the table is: a plain file, or one member of a zip."""

    path: Path
    member: str | None = None

    @property
    def display(self) -> str:
        return f"{self.path}/{self.member}" if self.member else str(self.path)

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.member).suffix.lower() if self.member else self.path.suffix.lower()


def _delimited_members(archive: zipfile.ZipFile) -> list[str]:
    return [
        name
        for name in archive.namelist()
        if not is_junk_member(name) and PurePosixPath(name).suffix.lower() in DELIMITED_SUFFIXES
    ]


def _header_columns(path: Path) -> set[str]:
    """The canonical column names of a table's first line (cheap: one sample read)."""
    with path.open("rb") as handle:
        sample = handle.read(SAMPLE_BYTES)
    dialect = sniff_dialect(sample, path.suffix.lower())
    lines = sample.decode(dialect.encoding, errors="replace").splitlines()
    header = next(csv.reader(lines[:1], **dialect.csv_options()), [])
    return {canonical_column(h) for h in header}


def _header_has_terms(path: Path) -> bool:
    """Whether a ``.txt`` file's first line names a name or image column (so is a table)."""
    return bool(_header_columns(path) & {*NAME_TERMS, *IMAGE_COLUMNS})


def folder_table(folder: Path) -> Path | None:
    """The one occurrence table at the top of ``folder``, if there is exactly one.

    A folder such as ``ny-herbarium/`` (``occurrences.csv`` + ``images/``) carries its
    labels in the table, not in folder names, so it must be read as a CSV source rather
    than as a species-per-folder tree. Only a table naming both a name column and an
    image column counts, so a stray ``notes.csv`` in an image folder does not.
    """
    candidates = [
        p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in DELIMITED_SUFFIXES and not p.name.startswith(".")
    ]
    tables = [p for p in candidates if _is_occurrence_table(p)]
    return tables[0] if len(tables) == 1 else None


def _is_occurrence_table(path: Path) -> bool:
    columns = _header_columns(path)
    return bool(columns & set(NAME_TERMS)) and bool(columns & set(IMAGE_COLUMNS))


@register_source
class DwcCsvSource(Source):
    """A Darwin Core occurrence table exported as CSV/TSV, or a GBIF simple CSV zip.

    Detection: a ``.csv``/``.tsv`` file; a ``.txt`` file whose header names a Darwin Core
    name or image column; a zip with no ``meta.xml`` and exactly one delimited member
    (macOS ``__MACOSX/`` forks and hidden files ignored); a folder without ``meta.xml``
    whose top level holds exactly one table naming both a name and an image column (see
    :func:`folder_table`). Local image paths resolve against the table's folder (the
    zip's folder for a zip) and must stay inside it or inside a folder the user names
    (``media_roots`` / ``--media-root``): see :func:`resolve_media`. URLs pass through.
    """

    name = "csv"
    priority = 30

    @classmethod
    def detect(cls, location: str) -> bool:
        path = Path(location)
        try:
            if path.is_dir():
                return not (path / "meta.xml").exists() and folder_table(path) is not None
            if not path.is_file():
                return False
            suffix = path.suffix.lower()
            if suffix in (".csv", ".tsv"):
                return True
            if suffix == ".txt":
                return _header_has_terms(path)
            if zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as archive:
                    return "meta.xml" not in archive.namelist() and len(_delimited_members(archive)) == 1
        except (OSError, zipfile.BadZipFile, UnicodeError, csv.Error):
            return False
        return False

    def records(self, problems: ProblemLog) -> Iterator[SourceRecord]:
        path = Path(self.location)
        if path.is_dir():
            table = folder_table(path)
            if table is None:
                raise SourceError(f"{self.location}: no single occurrence table (.csv/.tsv/.txt) in folder")
            path = table
        elif not path.is_file():
            raise SourceError(f"{self.location}: no such file")
        if zipfile.is_zipfile(path):
            with open_zip(path, self.location) as archive:
                member = self._single_member(archive)
                location = _CsvLocation(path, member)
                yield from self._read(location, lambda: archive.open(member), problems)
        else:
            yield from self._read(_CsvLocation(path), lambda: path.open("rb"), problems)

    def _single_member(self, archive: zipfile.ZipFile) -> str:
        if "meta.xml" in archive.namelist():
            raise SourceError(
                f"{self.location}: has a meta.xml; read it as a Darwin Core Archive (--kind dwca)"
            )
        members = _delimited_members(archive)
        if len(members) != 1:
            raise SourceError(
                f"{self.location}: expected one .csv/.tsv/.txt file in the zip, found {len(members)}"
            )
        return members[0]

    def _read(
        self, location: _CsvLocation, opener: Callable[[], IO[bytes]], problems: ProblemLog
    ) -> Iterator[SourceRecord]:
        with read_errors_as_source_error(location.display), opener() as stream:
            sample = stream.read(SAMPLE_BYTES)
        table = TextTable(opener, location.display, sniff_dialect(sample, location.suffix))
        rules = RowRules(
            source=self.name,
            base=location.path.parent,
            confine=True,
            roots=tuple(self.options.get("media_roots") or ()),
            follow_symlinks=bool(self.options.get("follow_symlinks")),
            outside="media path outside the source folder",
        )
        yield from _CsvReader(table, rules, problems).records()
        table.report_fallback(problems)


class _CsvReader:
    """One pass over a CSV table: header → column map → records and problems."""

    def __init__(self, table: TextTable, rules: RowRules, problems: ProblemLog) -> None:
        self.table = table
        self.rules = rules
        self.problems = problems
        self.columns: list[str] = []
        self.skipped = 0

    def records(self) -> Iterator[SourceRecord]:
        rows = self.table.rows(self.problems)
        header = next(rows, None)
        if header is None:
            raise SourceError(f"{self.table.display}: empty file (no header line)")
        self.columns = [canonical_column(h) for h in header[1]]
        missing = self._missing_column_reason()
        for line, fields in rows:
            origin = f"{self.table.display}:{line}"
            if len(fields) != len(self.columns):
                field_count_problem(self.problems, origin, len(fields), len(self.columns))
            elif missing:
                self.skipped += 1
            else:
                yield from row_records(*self._row(fields, origin), self.rules, self.problems)
        if missing:
            missing_column_problem(self.problems, self.table.display, self.skipped, missing)

    def _missing_column_reason(self) -> str | None:
        present = set(self.columns)
        if not present & set(IMAGE_COLUMNS):
            return "no image column"
        if not present & set(NAME_TERMS):
            return "no scientificName or verbatimScientificName column"
        return None

    def _row(self, fields: list[str], origin: str) -> tuple[dict[str, str | None], list[MediaRef], str]:
        values: dict[str, str | None] = {}
        for name, value in zip(self.columns, fields, strict=True):
            put_value(values, name, value)
        if not values.get("occurrenceID") and values.get("id"):
            values["occurrenceID"] = values["id"]
        license = first_license(values)
        media = [MediaRef(v, origin, license) for v in self._media_values(values)]
        return values, media, origin

    @staticmethod
    def _media_values(values: Mapping[str, str | None]) -> list[str]:
        """The first image column of this row that holds something location-like."""
        for column in IMAGE_COLUMNS:
            need_suffix = column in _AMBIGUOUS_IMAGE_COLUMNS
            items = [
                v for v in split_media(values.get(column)) if looks_like_location(v, need_suffix=need_suffix)
            ]
            if items:
                return items
        return []
