"""Read one uploaded file from a multipart request into memory, with a hard size cap.

Starlette's own form parser spools files above 1 MB to disk and only learns a body's
size after reading all of it. Herbarium scans are large and the server may face the
network, so uploads are parsed here instead: the ``Content-Length`` is checked before a
byte is read, every streamed chunk is counted (chunked requests have no length), and
the file part is kept in memory only — nothing is ever written to disk and the client's
file name is kept as a label, never used as a path.
"""

from __future__ import annotations

from dataclasses import dataclass

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

#: Room for the multipart framing (boundaries, part headers, a small extra field).
MULTIPART_OVERHEAD = 64 * 1024
#: More parts than this is not a browser or a script uploading one sheet.
MAX_PARTS = 8


class UploadError(Exception):
    """A request that does not carry a usable upload; ``status`` is the HTTP code to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Upload:
    """The uploaded file's bytes and the name the client gave it (a label only)."""

    data: bytes
    filename: str


def _too_large(limit: int) -> UploadError:
    return UploadError(413, f"upload too large: the limit is {limit / 2**20:.1f} MiB ({limit:,} bytes)")


def check_content_length(request: Request, limit: int) -> None:
    """Refuse a declared body that cannot fit before reading any of it."""
    declared = request.headers.get("content-length")
    if declared is None:
        return
    try:
        length = int(declared)
    except ValueError:
        raise UploadError(400, "invalid Content-Length header") from None
    if length > limit + MULTIPART_OVERHEAD:
        raise _too_large(limit)


def multipart_boundary(request: Request) -> bytes:
    """The boundary of a multipart/form-data request (415 for any other body type)."""
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data":
        raise UploadError(415, "send the image as multipart/form-data with a field named 'file'")
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadError(400, "multipart/form-data without a boundary")
    return boundary


class _FilePartCollector:
    """Parser callbacks that keep the bytes of the part named ``field`` and drop the rest."""

    def __init__(self, field: str, limit: int) -> None:
        self.field = field
        self.limit = limit
        self.parts = 0
        self.found = False
        self.filename = ""
        self.data = bytearray()
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._keep = False

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": lambda data, start, end: self._header_field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._header_value.extend(data[start:end]),
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
        }

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise UploadError(400, f"too many form fields (more than {MAX_PARTS})")
        self._headers = {}
        self._keep = False

    def on_header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name == self.field and not self.found:
            self.found = True
            self._keep = True
            self.filename = options.get(b"filename", b"").decode("utf-8", "replace")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._keep:
            return
        if len(self.data) + (end - start) > self.limit:
            raise _too_large(self.limit)
        self.data.extend(data[start:end])


async def read_upload(request: Request, *, field: str = "file", limit: int) -> Upload:
    """The file part ``field`` of a multipart request, at most ``limit`` bytes, in memory.

    Raises :class:`UploadError` (413 too large, 415 not multipart, 400 malformed or no
    such field) as soon as the problem is known, without reading the rest of the body.
    """
    check_content_length(request, limit)
    collector = _FilePartCollector(field, limit)
    body_limit = limit + MULTIPART_OVERHEAD
    parser = MultipartParser(multipart_boundary(request), collector.callbacks())  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > body_limit:
                raise _too_large(limit)
            parser.write(chunk)
        parser.finalize()
    except UploadError:
        raise
    except ClientDisconnect:
        raise UploadError(400, "the client disconnected during the upload") from None
    except Exception as exc:  # the parser's own errors: a malformed body is the client's fault
        raise UploadError(400, f"malformed multipart body: {exc}") from None
    if not collector.found:
        raise UploadError(400, f"no file in the form field {field!r}")
    return Upload(bytes(collector.data), collector.filename)
