"""The dataset folder on disk: ``manifest.parquet``, ``report.json``, ``images/``.

Every later stage (splits, training, identification) reads a dataset through these
functions, so the layout lives in one place.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
from pathlib import Path
from typing import Any

import pandas as pd

from herbid.data.records import MANIFEST_COLUMNS
from herbid.errors import UserError

MANIFEST = "manifest.parquet"
REPORT = "report.json"
SPLITS = "splits.json"
IMAGES = "images"
#: The paper's training resolution (every image squeezed to 256×256) and the 1024 px copy.
TRAIN_SIZE = 256
LARGE_WIDTH = 1024


class DatasetError(UserError):
    """A dataset folder that is missing or malformed."""


def manifest_path(folder: str | Path) -> Path:
    return Path(folder) / MANIFEST


def load_manifest(folder: str | Path) -> pd.DataFrame:
    """The manifest as a DataFrame (string columns, ``split`` may be empty)."""
    path = manifest_path(folder)
    if not path.exists():
        raise DatasetError(f"{folder}: no {MANIFEST}; build one with `herbid dataset build`")
    frame = pd.read_parquet(path)
    for column in MANIFEST_COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    return frame


def save_manifest(folder: str | Path, frame: pd.DataFrame) -> Path:
    """Write the manifest atomically (never a half-written file)."""
    columns = [c for c in MANIFEST_COLUMNS if c in frame.columns]
    columns += [c for c in frame.columns if c not in columns]
    path = manifest_path(folder)
    with atomic_path(path) as tmp:
        frame[columns].reset_index(drop=True).to_parquet(tmp, index=False)
    return path


#: The SHA-256 of a cleaned copy's stored image (see :func:`manifest_hash`).
CLEANED_SHA256 = "cleaned_sha256"


def manifest_hash(folder: str | Path) -> str:
    """A content hash of the manifest rows that define the data (images and labels).

    A cleaned copy (``herbid dataset clean``) keeps the original's ``sha256`` but has other
    pixels; its ``cleaned_sha256`` column (absent elsewhere, so older hashes are unchanged)
    makes its hash differ from the original's.
    """
    frame = load_manifest(folder)
    columns = ["image_id", "sha256", "scientificName", "split"]
    columns += [CLEANED_SHA256] if CLEANED_SHA256 in frame.columns else []
    keys = frame[columns].astype(object).fillna("").astype(str)
    digest = hashlib.sha256()
    for row in sorted(map(tuple, keys.itertuples(index=False))):
        digest.update("\x1f".join(row).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def read_json(path: str | Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def json_ready(value: Any) -> Any:
    """A table cell as JSON wants it: NaN, ±inf and pandas' NA → None, numpy scalars →
    Python numbers; lists and dicts pass through unchanged."""
    if isinstance(value, (list, dict)) or value is None:
        return value
    if value is pd.NA:
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy scalars
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | Path, data: Any) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    return path


class atomic_path:
    """Context manager yielding a temporary path that replaces ``target`` on success.

    Used for every file herbid writes, so that an interrupted job leaves either the old
    file or the new one, never half of one.
    """

    def __init__(self, target: str | Path) -> None:
        self.target = Path(target)

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        # Not mkstemp: its files are 0600 whatever the umask, so a dataset or bundle shared
        # by a team would be unreadable to the others. O_EXCL keeps the name our own.
        while True:
            tmp = self.target.parent / f".{self.target.name}.{secrets.token_hex(6)}.part"
            try:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            except FileExistsError:
                continue
            self.tmp = tmp
            return tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            os.replace(self.tmp, self.target)
        else:
            self.tmp.unlink(missing_ok=True)
