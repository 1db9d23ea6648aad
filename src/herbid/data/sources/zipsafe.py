"""Zip safety: refusing archives with unsafe member names, skipping junk members, and
turning errors met while streaming a member into one-line source errors.

herbid reads members in place and never extracts them.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from herbid.data.sources.base import SourceError
from herbid.data.sources.media import WINDOWS_DRIVE
from herbid.data.sources.messages import one_line


def unsafe_member(name: str) -> bool:
    """Whether a zip member name is absolute or climbs out with ``..`` (zip-slip)."""
    posix = name.replace("\\", "/")
    return posix.startswith("/") or bool(WINDOWS_DRIVE.match(posix)) or ".." in posix.split("/")


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
