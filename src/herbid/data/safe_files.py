"""Read a local file only if it is a regular file of bounded size.

A path in a CSV, a folder or on the command line may name a named pipe (opening it
blocks forever), a device (``/dev/zero`` never ends, ``/dev/random`` blocks, opening
some devices has side effects), a socket or a huge file. Every local file herbid reads
as an image goes through :func:`read_regular_file`, which checks the file *before*
opening it, opens it so that the open itself cannot block, checks again on the open
descriptor (the path may have been swapped meanwhile) and reads at most the limit.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from herbid.errors import UserError

#: Default cap on one local image file: a 90 MP uncompressed TIFF is ~270 MB.
DEFAULT_MAX_FILE_BYTES = 1 << 30
_CHUNK = 1 << 20
_KINDS = (
    (stat.S_ISFIFO, "named pipe"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISDIR, "directory"),
)


class FileRefused(UserError, ValueError):
    """A local file herbid will not read; the message is the one-line reason."""


def file_kind(mode: int) -> str:
    """A human name for a non-regular file type (``named pipe``, ``character device`` …)."""
    return next((name for test, name in _KINDS if test(mode)), "special file")


def check_regular(info: os.stat_result, limit: int) -> None:
    """Refuse a file that is not regular or is bigger than ``limit`` bytes."""
    if not stat.S_ISREG(info.st_mode):
        raise FileRefused(f"not a regular file ({file_kind(info.st_mode)})")
    if info.st_size > limit:
        raise FileRefused(f"file too large ({info.st_size:,} bytes > {limit:,} byte limit)")


def read_regular_file(path: str | Path, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``max_bytes`` bytes.

    Raises :class:`FileRefused` for anything else (never blocking, never reading more
    than ``max_bytes + 1`` bytes), and ``OSError`` (``FileNotFoundError`` …) when the
    file cannot be opened. Symlinks are followed: where they may lead is decided by the
    source that listed the path (see the path rules in docs/SECURITY.md).
    """
    check_regular(os.stat(path), max_bytes)  # before opening: a device is never opened
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)  # O_NONBLOCK: a pipe swapped in after the check cannot block the open
    try:
        check_regular(os.fstat(fd), max_bytes)
        os.set_blocking(fd, True)
        parts: list[bytes] = []
        size = 0
        while size <= max_bytes and (part := os.read(fd, min(_CHUNK, max_bytes + 1 - size))):
            parts.append(part)
            size += len(part)
    finally:
        os.close(fd)
    if size > max_bytes:  # grew while being read
        raise FileRefused(f"file too large (over {max_bytes:,} byte limit)")
    return b"".join(parts)
