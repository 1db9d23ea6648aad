"""Where a downloaded image lives: its stable name, its extension, and whether an earlier run finished it.

A URL's file is ``sha1(url)`` plus an extension taken from the first bytes (what the file
is), else the content type, else the URL (what it claims). Only complete files carry that
name, so a rerun can list the folder once and skip every URL already fetched.
"""

from __future__ import annotations

import hashlib
import mimetypes
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

#: Extensions a downloaded image may get; anything else is named ``.bin`` for the image stage to judge.
_IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".jp2"})
#: Leading bytes of the formats herbaria serve, to name files by what they are, not what they claim.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", ".jpg"),
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"GIF87a", ".gif"),
    (b"GIF89a", ".gif"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
    (b"BM", ".bmp"),
    (b"\x00\x00\x00\x0cjP  ", ".jp2"),
)


def image_filename_stem(url: str) -> str:
    """The stable local name of ``url`` without extension: the SHA-1 of the URL."""
    return hashlib.sha1(url.encode("utf-8")).hexdigest()


def completed_downloads(dest_dir: Path) -> dict[str, Path]:
    """The files earlier runs completed in ``dest_dir``, by file stem (the URL's SHA-1).

    Only complete files carry their final name (a partial one is a hidden ``.part`` file
    until it is renamed), so every non-empty visible file named by a SHA-1 counts (not, say,
    ``failed.jsonl``). One directory listing serves the whole run: globbing once per URL
    would be quadratic in big folders.
    """
    done: dict[str, Path] = {}
    if not Path(dest_dir).is_dir():
        return done
    for entry in sorted(Path(dest_dir).iterdir()):
        if entry.name.startswith(".") or entry.suffix == ".part" or not _is_sha1(entry.stem) or not entry.is_file():
            continue
        if entry.stat().st_size > 0:
            done.setdefault(entry.stem, entry)
    return done


def _is_sha1(stem: str) -> bool:
    return len(stem) == 40 and all(c in "0123456789abcdef" for c in stem)


def existing_download(dest_dir: Path, url: str) -> Path | None:
    """The completed download of ``url`` in ``dest_dir`` that an earlier run left, if any."""
    return completed_downloads(dest_dir).get(image_filename_stem(url))


def guess_extension(url: str, content_type: str | None, head: bytes) -> str:
    """The file extension: from the bytes if recognisable, else the content type, else the URL."""
    for magic, ext in _MAGIC:
        if head.startswith(magic):
            return ext
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp"
    if content_type:
        guessed = mimetypes.guess_extension(content_type.split(";")[0].strip().lower())
        if guessed in _IMAGE_EXTENSIONS:
            return guessed
        if guessed == ".jpe":
            return ".jpg"
    suffix = PurePosixPath(urlsplit(url).path).suffix.lower()
    return suffix if suffix in _IMAGE_EXTENSIONS else ".bin"
