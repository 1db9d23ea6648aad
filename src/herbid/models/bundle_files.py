"""Where a model bundle keeps its files.

The layout is shared by :mod:`herbid.inference.bundle` (saving and loading bundles) and
:mod:`herbid.models.weights` (``--init BUNDLE_OR_RUN`` reads a bundle's weights), so it
lives here, below both: ``BUNDLE/bundle.json`` (metadata) and ``BUNDLE/weights.pt``
(the state_dict); a training run folder holds its bundle in ``RUN/bundle``.
"""

from __future__ import annotations

from pathlib import Path

from herbid.errors import UserError

BUNDLE_FORMAT = "herbid-bundle/1"
BUNDLE_JSON = "bundle.json"
WEIGHTS = "weights.pt"
RUN_BUNDLE_DIR = "bundle"


class BundleError(UserError):
    """A path that is not a bundle (or run folder), or a damaged bundle."""


def resolve_bundle_path(path: str | Path) -> Path:
    """The bundle folder for ``path``: a bundle itself or a run folder holding one."""
    path = Path(path)
    for candidate in (path, path / RUN_BUNDLE_DIR):
        if (candidate / BUNDLE_JSON).is_file() and (candidate / WEIGHTS).is_file():
            return candidate
    raise BundleError(f"{path}: not a model bundle or training run folder (no {BUNDLE_JSON} + {WEIGHTS})")
