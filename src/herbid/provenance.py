"""Where a result came from: package version, git commit, seed, data hash, init chain."""

from __future__ import annotations

import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import herbid


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit of the herbid checkout (``+dirty`` if modified), or None if not a checkout."""
    root = Path(path) if path else Path(herbid.__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def provenance(**extra: Any) -> dict[str, Any]:
    """A provenance record with the environment filled in and ``extra`` merged."""
    import torch

    record = {
        "herbid_version": herbid.__version__,
        "git_commit": git_commit(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    record.update(extra)
    return record
