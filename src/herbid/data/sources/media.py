"""Media references in a table row: splitting ``associatedMedia`` lists, and resolving each
item to an http(s) URL or to a local path confined to the table's folder (or a
``--media-root`` folder), with the symlink rules that confinement needs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit
from urllib.request import url2pathname

from herbid.data.sources.base import IMAGE_SUFFIXES
from herbid.data.sources.messages import one_line
from herbid.data.url_policy import unsupported_scheme

#: Schemes whose values pass through as URLs (everything else local must resolve).
URL_SCHEMES = frozenset({"http", "https"})
#: A Windows drive prefix (``C:\`` or ``C:/``): a path, not a URL scheme.
WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
_MEDIA_SEPARATORS = re.compile(r"\s*[|;]\s*")


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
        if len(pieces) > 1 and all(urlsplit(p).scheme.lower() in URL_SCHEMES for p in pieces):
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
    if scheme in URL_SCHEMES or scheme == "file":
        return True
    if scheme and not WINDOWS_DRIVE.match(value) and not value[len(scheme) + 1:].startswith("//"):
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
    if scheme in URL_SCHEMES:
        return value
    if scheme == "file":
        local = url2pathname(parts.path)
    elif scheme and not WINDOWS_DRIVE.match(value):
        raise MediaError(unsupported_scheme(scheme).reason, one_line(value, 200))
    else:
        local = value.replace("\\", "/")
    joined = base / Path(local)
    resolved = joined.resolve()
    if not confine:
        return str(resolved)
    folders = [base, *(Path(root).expanduser() for root in roots)]
    if not WINDOWS_DRIVE.match(local):
        if _within(resolved, [folder.resolve() for folder in folders]):
            return str(resolved)
        by_name = Path(os.path.normpath(joined.absolute()))  # ``..`` applied, symlinks not followed
        if follow_symlinks and _within(by_name, [folder.absolute() for folder in folders]):
            return str(resolved)
    raise MediaError(outside, one_line(value, 200))


def _within(path: Path, folders: Sequence[Path]) -> bool:
    return any(path.is_relative_to(folder) for folder in folders)
