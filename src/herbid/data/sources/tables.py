"""Reading delimited tables: encoding and dialect sniffing, the streaming line splitter
with its line-length cap, per-line decoding with a Latin-1 fallback, and
:class:`TextTable`, which yields a file's rows with the line each starts on.
"""

from __future__ import annotations

import codecs
import csv
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from herbid.data.sources.base import ProblemLog, SourceError
from herbid.data.sources.messages import STAGE, one_line
from herbid.data.sources.zipsafe import read_errors_as_source_error

_DELIMITER_CANDIDATES = ("\t", ",", ";", "|")
#: How much of a file the sniffers look at.
SAMPLE_BYTES = 64 * 1024
_CHUNK_BYTES = 1 << 16
#: Longest line read: Darwin Core rows are a few KB, an ``associatedMedia`` list of hundreds
#: of URLs ~100 KB. A longer line is skipped (never held in memory) and reported.
MAX_LINE_BYTES = 1 << 20


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
            problems.add(STAGE, f"{self.display}:{number}", "line too long",
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
                problems.add(STAGE, f"{self.display}:{start}", "unreadable row", detail=one_line(exc))
                continue
            if len(row) > 1 or (row and row[0].strip()):  # blank lines are not rows
                yield start, row

    def report_fallback(self, problems: ProblemLog) -> None:
        """One ``converted`` problem if some lines were not in the declared encoding."""
        if self.fallback_lines:
            problems.add(
                STAGE,
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
