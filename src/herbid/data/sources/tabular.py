"""Darwin Core CSV exports: a ``.csv``/``.tsv``/``.txt`` table, or a zip holding one.

Herbaria and portals hand out occurrence tables in many dialects: comma or tab separated,
UTF-8 or Latin-1, plain (``scientificName``), prefixed (``dwc:scientificName``) or full-URI
headers, and GBIF's "simple CSV" download (a zip with one tab-separated file and no
quoting). :class:`DwcCsvSource` reads all of them, one record per image.

This module also holds the table machinery that :mod:`herbid.data.sources.dwca` reuses:
streaming line splitting and decoding, row iteration with line numbers, column-name
normalisation, zip-member safety checks, media-location resolution and the rules that
turn one row into records or problems. Keeping them here means a CSV export and a Darwin
Core Archive with the same content produce the same records and the same problems.

Problem reporting, decided once for both sources:

* a bad row (wrong number of fields, no image, no scientific name, an unusable media
  location) is one problem, ``where`` = ``<file>:<line>``, ``reason`` a short category
  (``wrong number of fields``) and ``detail`` the specifics (``row has 3 fields,
  expected 4``);
* a file that has no image column at all (GBIF simple CSV, an archive without a
  multimedia extension or ``associatedMedia``) is *one* summary problem,
  ``where`` = ``<file>``, ``detail`` = ``all N rows``, instead of N identical per-row
  problems: every row fails for the same file-level reason, and a 2.5-million-row GBIF
  download should not produce 2.5 million report lines. The same holds for a file with
  no name column.
"""

from __future__ import annotations

import codecs
import csv
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

from herbid.data.records import DWC_TERMS, SourceRecord
from herbid.data.sources.base import (
    IMAGE_SUFFIXES,
    ProblemLog,
    Source,
    SourceError,
    register_source,
)
from herbid.data.url_policy import unsupported_scheme

#: Columns that may hold an image location, in order of preference.
IMAGE_COLUMNS: tuple[str, ...] = (
    "associatedMedia",
    "identifier",
    "accessURI",
    "image",
    "image_path",
    "imageURL",
    "media_url",
    "file",
)
#: Image columns whose name alone does not promise a media location (``identifier`` is
#: often a catalogue URN, ``file`` anything): a local value there needs an image suffix.
_AMBIGUOUS_IMAGE_COLUMNS = frozenset({"identifier", "file"})
#: Terms kept in ``SourceRecord.extra`` because curation can use them.
EXTRA_TERMS: tuple[str, ...] = (
    "scientificNameAuthorship",
    "taxonRank",
    "identificationQualifier",
    "typeStatus",
    "basisOfRecord",
)
#: Terms that carry an image's licence, in order of preference.
LICENSE_TERMS: tuple[str, ...] = ("license", "rights", "UsageTerms", "accessRights")
NAME_TERMS: tuple[str, ...] = ("scientificName", "verbatimScientificName")
DELIMITED_SUFFIXES = frozenset({".csv", ".tsv", ".txt"})
_KNOWN_TERMS = (*DWC_TERMS, *EXTRA_TERMS, *IMAGE_COLUMNS, *LICENSE_TERMS, "type", "format")
_CANONICAL = {term.lower(): term for term in _KNOWN_TERMS}
_DELIMITER_CANDIDATES = ("\t", ",", ";", "|")
_SAMPLE_BYTES = 64 * 1024
_CHUNK_BYTES = 1 << 16
#: Longest line read: Darwin Core rows are a few KB, an ``associatedMedia`` list of hundreds
#: of URLs ~100 KB. A longer line is skipped (never held in memory) and reported.
MAX_LINE_BYTES = 1 << 20
_URL_SCHEMES = frozenset({"http", "https"})
_MEDIA_SEPARATORS = re.compile(r"\s*[|;]\s*")
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
_STAGE = "source"


# --------------------------------------------------------------------------- messages


def one_line(text: object, limit: int = 300) -> str:
    """Collapse whitespace so that every error and problem is a single readable line."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# --------------------------------------------------------------------------- column names


def term_name(term: str) -> str:
    """The bare term name: ``http://rs.tdwg.org/dwc/terms/genus`` and ``dwc:genus`` → ``genus``.

    Darwin Core identifies terms by URI, exporters abbreviate them with a namespace
    prefix, and portals use the bare name; matching on the last segment accepts all three.
    """
    name = term.strip().strip("\ufeff").strip('"').strip()
    if "/" in name or "#" in name:
        name = re.split(r"[/#]", name.rstrip("/#"))[-1]
    if ":" in name:
        name = name.rsplit(":", 1)[-1]
    return name


def canonical_column(header: str) -> str:
    """A header as the term herbid knows, case-insensitively (``scientificname`` → ``scientificName``)."""
    name = term_name(header)
    return _CANONICAL.get(name.lower(), name)


def put_value(values: dict[str, str | None], name: str, value: str | None) -> None:
    """Set ``values[name]`` unless an earlier column already gave it a non-blank value."""
    if value is not None:
        value = value.strip() or None
    if values.get(name) is None:
        values[name] = value


# --------------------------------------------------------------------------- zip safety


def unsafe_member(name: str) -> bool:
    """Whether a zip member name is absolute or climbs out with ``..`` (zip-slip)."""
    posix = name.replace("\\", "/")
    return posix.startswith("/") or bool(_DRIVE.match(posix)) or ".." in posix.split("/")


def open_zip(path: Path, display: str) -> zipfile.ZipFile:
    """Open a zip, refusing the whole archive if any member has an unsafe path.

    herbid never extracts members, but a refused archive is the clearest answer to one
    that was built to attack unzip tools: nothing in it is trusted.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise SourceError(f"{display}: not a readable zip archive ({one_line(exc)})") from None
    for name in archive.namelist():
        if unsafe_member(name):
            archive.close()
            raise SourceError(f"{display}: unsafe path in archive: {name!r}")
    return archive


def is_junk_member(name: str) -> bool:
    """Folders, macOS resource forks (``__MACOSX/``) and hidden files are not data."""
    parts = PurePosixPath(name).parts
    return name.endswith("/") or not parts or parts[0] == "__MACOSX" or parts[-1].startswith(".")


#: Errors a damaged archive or file can raise while it is being streamed.
READ_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    zlib.error,
    OSError,
    EOFError,
    RuntimeError,  # encrypted zip member
    NotImplementedError,  # unsupported zip compression
)


@contextmanager
def read_errors_as_source_error(display: str) -> Iterator[None]:
    """Turn I/O and zip errors met mid-stream into a one-line :class:`SourceError`."""
    try:
        yield
    except READ_ERRORS as exc:
        raise SourceError(f"{display}: cannot read ({one_line(exc)})") from None


# --------------------------------------------------------------------------- text decoding


def ascii_compatible(encoding: str) -> bool:
    """Whether lines can be split on ``\\n`` bytes before decoding (not UTF-16/32)."""
    try:
        return '\n\r\t,;|"'.encode(without_bom(encoding)) == b'\n\r\t,;|"'
    except (LookupError, UnicodeError):
        return False


def without_bom(encoding: str) -> str:
    """``utf-8-sig`` decodes a BOM away but also *encodes* one: use plain UTF-8 to encode."""
    return "utf-8" if encoding == "utf-8-sig" else encoding


def check_encoding(encoding: str, where: str) -> str:
    """The codec's canonical name; an unknown encoding is a :class:`SourceError`."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise SourceError(f"{where}: unknown encoding {encoding!r}") from None
    return "utf-8-sig" if name == "utf-8" else name


def sniff_encoding(sample: bytes) -> str:
    """UTF-8 (BOM or not), UTF-16 by its BOM, otherwise Latin-1 (which never fails)."""
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut off by the end of the sample is still UTF-8.
        if exc.start < len(sample) - 3:
            return "latin-1"
    return "utf-8-sig"


def split_lines(
    stream: IO[bytes],
    terminator: bytes = b"\n",
    *,
    max_line_bytes: int = MAX_LINE_BYTES,
    on_long_line: Callable[[int], None] | None = None,
) -> Iterator[bytes]:
    """Raw lines, line ends kept, streamed in chunks (files may be gigabytes).

    ``\\n``, ``\\r\\n`` and ``\\r`` are all accepted whatever the declared terminator,
    because archives routinely declare one and use another; any other declared
    terminator is split on literally and replaced by ``\\n`` for the csv module.

    Linear in the input: each chunk is searched once, whatever the line length. A line
    over ``max_line_bytes`` is dropped as it streams (memory stays bounded), given as a
    blank line so that later line numbers stay right, and passed to ``on_long_line`` by
    its 1-based number.
    """
    return _split_chunks(iter(lambda: stream.read(_CHUNK_BYTES), b""), terminator, max_line_bytes, on_long_line)


def _split_chunks(
    chunks: Iterable[bytes],
    terminator: bytes,
    max_line_bytes: int,
    on_long_line: Callable[[int], None] | None,
) -> Iterator[bytes]:
    line = _Line(max_line_bytes, on_long_line)
    if terminator in (b"\n", b"\r\n", b"\r"):
        for chunk in chunks:
            if line.open_cr:  # the previous chunk ended in \r: a \r\n may straddle the chunks
                if chunk.startswith(b"\n"):
                    line.add(b"\n")
                    chunk = chunk[1:]
                yield line.end()
            pieces = chunk.splitlines(keepends=True)
            for index, piece in enumerate(pieces, start=1):
                line.add(piece)
                if piece.endswith(b"\r") and index == len(pieces):
                    line.open_cr = True  # a \n may open the next chunk
                elif piece.endswith((b"\n", b"\r")):
                    yield line.end()
    else:
        keep = len(terminator) - 1  # a terminator may straddle two chunks
        carry = b""
        for chunk in chunks:
            *whole, last = (carry + chunk).split(terminator)
            for piece in whole:
                line.add(piece)
                line.add(b"\n")
                yield line.end()
            carry = last[max(0, len(last) - keep):]
            line.add(last[: len(last) - len(carry)])
        line.add(carry)
    if line.held or line.open_cr:
        yield line.end()


class _Line:
    """The line being assembled: its pieces, or nothing once it is over the limit."""

    def __init__(self, limit: int, on_long_line: Callable[[int], None] | None) -> None:
        self.limit = limit
        self.on_long_line = on_long_line
        self.parts: list[bytes] = []
        self.held = 0
        self.dropping = False
        self.open_cr = False
        self.number = 0

    def add(self, piece: bytes) -> None:
        if self.dropping or not piece:
            return
        self.held += len(piece)
        if self.held > self.limit:
            self.dropping = True
            self.parts.clear()
        else:
            self.parts.append(piece)

    def end(self) -> bytes:
        self.number += 1
        if self.dropping:
            if self.on_long_line:
                self.on_long_line(self.number)
            line = b"\n"
        else:
            line = b"".join(self.parts)
        self.parts, self.held, self.dropping, self.open_cr = [], 0, False, False
        return line


class LineDecoder:
    """Decodes lines with a declared encoding, falling back to Latin-1 line by line.

    Real exports mix encodings (a UTF-8 file with one Latin-1 line pasted in); refusing
    the file or mangling every accent would both lose good rows, so bad lines are read
    as Latin-1 and counted for one ``converted`` problem.
    """

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self.fallbacks = 0

    def __call__(self, line: bytes) -> str:
        try:
            return line.decode(self.encoding)
        except UnicodeDecodeError:
            self.fallbacks += 1
            return line.decode("latin-1")


# --------------------------------------------------------------------------- dialects


@dataclass(frozen=True)
class Dialect:
    """How one delimited file is written (the parts of meta.xml's ``<core>`` that matter)."""

    encoding: str = "utf-8-sig"
    delimiter: str = ","
    quotechar: str | None = '"'
    terminator: str = "\n"
    header_lines: int = 1

    def csv_options(self) -> dict[str, Any]:
        if self.quotechar:
            return {"delimiter": self.delimiter, "quotechar": self.quotechar, "doublequote": True}
        return {"delimiter": self.delimiter, "quoting": csv.QUOTE_NONE}


def sniff_delimiter(header: str) -> str:
    """The candidate that splits the header line most often (tab wins ties)."""
    unquoted = re.sub(r'"[^"]*"', '""', header)
    counts = {c: unquoted.count(c) for c in _DELIMITER_CANDIDATES}
    best = max(_DELIMITER_CANDIDATES, key=lambda c: counts[c])
    return best if counts[best] else ","


def sniff_dialect(sample: bytes, suffix: str) -> Dialect:
    """Encoding, delimiter and quoting of a CSV export from its first bytes.

    A tab-separated file whose header is not quoted is read without quote handling: that
    is GBIF's simple CSV, whose values may start with a lone ``"`` that would otherwise
    swallow the rest of the file.
    """
    encoding = sniff_encoding(sample)
    text = sample.decode(encoding, errors="replace")
    header = text.splitlines()[0] if text.splitlines() else ""
    delimiter = "\t" if suffix == ".tsv" else sniff_delimiter(header)
    quoted_header = header.lstrip("\ufeff").startswith('"')
    quotechar = None if delimiter == "\t" and not quoted_header else '"'
    return Dialect(encoding=encoding, delimiter=delimiter, quotechar=quotechar)


# --------------------------------------------------------------------------- row reading


@dataclass
class TextTable:
    """The rows of one delimited file, each with the line it starts on.

    Blank lines are skipped; a row the csv module cannot parse (a field over
    ``csv.field_size_limit()``, 131,072 characters by default) and a line over
    :data:`MAX_LINE_BYTES` are reported and skipped rather than ending the file.
    """

    opener: Callable[[], IO[bytes]]
    display: str
    dialect: Dialect
    _decoder: LineDecoder | None = field(default=None, init=False, repr=False)

    def rows(self, problems: ProblemLog) -> Iterator[tuple[int, list[str]]]:
        with read_errors_as_source_error(self.display), self.opener() as stream:
            reader = csv.reader(self._text_lines(stream, problems), **self.dialect.csv_options())
            yield from self._parsed(reader, problems)

    @property
    def fallback_lines(self) -> int:
        return self._decoder.fallbacks if self._decoder else 0

    def _text_lines(self, stream: IO[bytes], problems: ProblemLog) -> Iterable[str]:
        """Decoded lines; UTF-16/32 text is transcoded to UTF-8 first so that it is split
        (and its line length capped) by the same byte splitter."""
        encoding = self.dialect.encoding
        chunks: Iterable[bytes] = iter(lambda: stream.read(_CHUNK_BYTES), b"")
        if not ascii_compatible(encoding):
            chunks = _transcoded(chunks, encoding)
            encoding = "utf-8"
        self._decoder = LineDecoder(encoding)

        def too_long(number: int) -> None:
            problems.add(_STAGE, f"{self.display}:{number}", "line too long",
                         detail=f"over {MAX_LINE_BYTES:,} bytes; line skipped")

        terminator = self.dialect.terminator.encode(without_bom(encoding))
        return map(self._decoder, _split_chunks(chunks, terminator, MAX_LINE_BYTES, too_long))

    def _parsed(self, reader: Any, problems: ProblemLog) -> Iterator[tuple[int, list[str]]]:
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                problems.add(_STAGE, f"{self.display}:{start}", "unreadable row", detail=one_line(exc))
                continue
            if len(row) > 1 or (row and row[0].strip()):  # blank lines are not rows
                yield start, row

    def report_fallback(self, problems: ProblemLog) -> None:
        """One ``converted`` problem if some lines were not in the declared encoding."""
        if self.fallback_lines:
            problems.add(
                _STAGE,
                self.display,
                "wrong encoding",
                action="converted",
                detail=f"{_lines(self.fallback_lines)} not valid {without_bom(self.dialect.encoding)}; "
                "read as Latin-1",
            )


def _transcoded(chunks: Iterable[bytes], encoding: str) -> Iterator[bytes]:
    """UTF-8 bytes of text in ``encoding`` (undecodable bytes become U+FFFD)."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
    for chunk in chunks:
        yield decoder.decode(chunk).encode("utf-8")
    yield decoder.decode(b"", final=True).encode("utf-8")


def _lines(count: int) -> str:
    return f"{count} line" if count == 1 else f"{count} lines"


def field_count_problem(problems: ProblemLog, where: str, got: int, expected: int) -> None:
    problems.add(_STAGE, where, "wrong number of fields", detail=f"row has {got} fields, expected {expected}")


def missing_column_problem(problems: ProblemLog, display: str, rows: int, reason: str) -> None:
    """The one summary problem for a file where every row lacks the same column."""
    if rows:
        problems.add(_STAGE, display, reason, detail=f"all {rows} rows" if rows > 1 else "its only row")


# --------------------------------------------------------------------------- media


class MediaError(ValueError):
    """A media value that cannot be an image location: a problem ``reason`` and its ``detail``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class MediaRef:
    """One image a row points at, before it is resolved to a path or URL."""

    value: str
    origin: str = ""
    license: str | None = None


def split_media(value: str | None) -> list[str]:
    """Split ``associatedMedia``-style lists on ``|`` and ``;``, and on whitespace between URLs.

    Whitespace only separates items when every piece is a URL: a local path such as
    ``images/Carex tonsa.jpg`` keeps its space.
    """
    if not value:
        return []
    items: list[str] = []
    for part in _MEDIA_SEPARATORS.split(value.strip()):
        pieces = part.split()
        if len(pieces) > 1 and all(urlsplit(p).scheme.lower() in _URL_SCHEMES for p in pieces):
            items.extend(pieces)
        elif part:
            items.append(part)
    return list(dict.fromkeys(items))


def looks_like_location(value: str, *, need_suffix: bool = False) -> bool:
    """Whether a value can name an image: an http(s)/file URL, another URL or a file path.

    Another scheme's URL (``ftp://...``) counts so that it is reported as an unsupported
    scheme rather than as a row without an image. ``need_suffix`` asks paths (and such
    URLs) to end in an image suffix, for columns such as ``identifier`` that often hold
    catalogue numbers rather than file names.
    """
    value = value.strip()
    if not value:
        return False
    scheme = urlsplit(value).scheme.lower()
    if scheme in _URL_SCHEMES or scheme == "file":
        return True
    if scheme and not _DRIVE.match(value) and not value[len(scheme) + 1:].startswith("//"):
        return False  # "urn:catalog:COL:5" names a specimen, not a file
    return not need_suffix or PurePosixPath(value.replace("\\", "/")).suffix.lower() in IMAGE_SUFFIXES


def resolve_media(
    value: str,
    base: Path,
    *,
    confine: bool,
    roots: Sequence[Path] = (),
    follow_symlinks: bool = False,
    outside: str = "media path outside the archive",
) -> str:
    """An http(s) URL as is, or an absolute local path (relative ones against ``base``).

    With ``confine`` (every CSV and archive source) a local path must resolve inside
    ``base`` or one of ``roots`` (folders the user named): a table naming
    ``/etc/passwd``, ``file:///dev/zero`` or ``../../x.jpg`` must not pull files from
    elsewhere on the machine into a dataset. Symlinks are resolved before the check, so
    a link inside the folder that leads out is refused too, unless ``follow_symlinks``
    (then a path that stays inside by name may lead anywhere). A refused path is a
    :class:`MediaError` with reason ``outside``; it is never opened.
    """
    value = value.strip()
    if "\x00" in value:  # no file has such a name; the OS call would raise instead of refusing
        raise MediaError("media path holds a NUL byte", one_line(value.replace("\x00", "\\0"), 200))
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    if scheme in _URL_SCHEMES:
        return value
    if scheme == "file":
        local = url2pathname(parts.path)
    elif scheme and not _DRIVE.match(value):
        raise MediaError(unsupported_scheme(scheme).reason, one_line(value, 200))
    else:
        local = value.replace("\\", "/")
    joined = base / Path(local)
    resolved = joined.resolve()
    if not confine:
        return str(resolved)
    folders = [base, *(Path(root).expanduser() for root in roots)]
    if not _DRIVE.match(local):
        if _within(resolved, [folder.resolve() for folder in folders]):
            return str(resolved)
        by_name = Path(os.path.normpath(joined.absolute()))  # ``..`` applied, symlinks not followed
        if follow_symlinks and _within(by_name, [folder.absolute() for folder in folders]):
            return str(resolved)
    raise MediaError(outside, one_line(value, 200))


def _within(path: Path, folders: Sequence[Path]) -> bool:
    return any(path.is_relative_to(folder) for folder in folders)


# --------------------------------------------------------------------------- rows → records


@dataclass(frozen=True)
class RowRules:
    """What turns a row into records: where media resolve and who the records say made them."""

    source: str
    base: Path
    confine: bool = False
    #: Extra check on a resolved local path (a DwC-A zip reports images stored inside it).
    check_local: Callable[[str, str], None] | None = None
    #: Folders the user named (``--media-root``) that confined paths may also point into.
    roots: tuple[Path, ...] = ()
    #: Let a path that is inside by name follow a symlink out (``--follow-symlinks``).
    follow_symlinks: bool = False
    #: The problem reason for a confined path that leads out.
    outside: str = "media path outside the archive"

    def resolve(self, value: str) -> str:
        location = resolve_media(value, self.base, confine=self.confine, roots=self.roots,
                                 follow_symlinks=self.follow_symlinks, outside=self.outside)
        if self.check_local and urlsplit(location).scheme.lower() not in _URL_SCHEMES:
            self.check_local(value, location)
        return location


def row_records(
    values: Mapping[str, str | None],
    media: Sequence[MediaRef],
    origin: str,
    rules: RowRules,
    problems: ProblemLog,
    extra: Mapping[str, Any] | None = None,
) -> list[SourceRecord]:
    """The records of one row, one per image, or the problems that stop it.

    Checks run in a fixed order so each bad row gets exactly one reason: first the image
    (a row without one is no training example), then the name. A row whose only name is
    ``verbatimScientificName`` is kept with ``scientificName=None``: the build decides
    whether a verbatim label is good enough.
    """
    locations = _resolved(media, origin, rules, problems)
    if locations is None:
        return []
    if not locations:
        problems.add(_STAGE, origin, "no image")
        return []
    if not any((values.get(term) or "").strip() for term in NAME_TERMS):
        problems.add(_STAGE, origin, "no scientific name")
        return []
    row_extra = {k: values[k] for k in EXTRA_TERMS if values.get(k)} | dict(extra or {})
    return [
        SourceRecord.from_mapping(
            dict(values),
            source_path=location,
            source=rules.source,
            origin=origin,
            extra=_media_extra(ref, origin) | row_extra,
        )
        for ref, location in locations
    ]


def _resolved(
    media: Sequence[MediaRef], origin: str, rules: RowRules, problems: ProblemLog
) -> list[tuple[MediaRef, str]] | None:
    """Resolved media; ``None`` when every item was unusable (each already reported)."""
    locations: list[tuple[MediaRef, str]] = []
    seen: set[str] = set()
    for ref in media:
        try:
            location = rules.resolve(ref.value)
        except MediaError as exc:
            problems.add(_STAGE, ref.origin or origin, exc.reason, detail=exc.detail)
            continue
        if location not in seen:
            seen.add(location)
            locations.append((ref, location))
    if media and not locations:
        return None
    return locations


def _media_extra(ref: MediaRef, origin: str) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if ref.origin and ref.origin != origin:
        extra["media_origin"] = ref.origin
    if ref.license:
        extra["license"] = ref.license
    return extra


def first_license(values: Mapping[str, str | None]) -> str | None:
    return next((values[t] for t in LICENSE_TERMS if values.get(t)), None)


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
        sample = handle.read(_SAMPLE_BYTES)
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
            sample = stream.read(_SAMPLE_BYTES)
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
