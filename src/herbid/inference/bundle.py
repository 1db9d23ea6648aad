"""Model bundles: everything identification needs, in one folder.

``BUNDLE/bundle.json`` holds the architecture, the species list (class order), the
taxonomy (genus and family per species), the preprocessing, the calibration temperature
and the training provenance; ``BUNDLE/weights.pt`` holds the state_dict. A run folder
written by ``herbid train --out RUN`` contains its bundle in ``RUN/bundle``, and every
command that takes a BUNDLE accepts the run folder too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from herbid.data.dataset_folder import atomic_path, write_json
from herbid.models.base import HerbidModel, Preprocessing
from herbid.models.bundle_files import (
    BUNDLE_FORMAT,
    BUNDLE_JSON,
    RUN_BUNDLE_DIR,
    WEIGHTS,
    BundleError,
    resolve_bundle_path,
)

__all__ = ["BUNDLE_FORMAT", "BUNDLE_JSON", "RUN_BUNDLE_DIR", "WEIGHTS", "Bundle", "BundleError", "as_bundle",
           "load_bundle", "read_bundle_meta", "resolve_bundle_path", "save_bundle"]


@dataclass
class Bundle:
    model: HerbidModel
    arch: str
    species: list[str]
    taxonomy: dict[str, dict[str, str | None]]
    preprocessing: Preprocessing
    temperature: float = 1.0
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def model_id(self) -> str:
        """A short id for identifications: the arch plus the weights' origin."""
        commit = (self.provenance.get("git_commit") or "")[:8]
        return f"{self.arch}@{self.provenance.get('created', '?')}{'/' + commit if commit else ''}"


def save_bundle(path: str | Path, *, model: HerbidModel, arch: str, species: list[str],
                taxonomy: dict[str, dict[str, str | None]], preprocessing: Preprocessing,
                temperature: float = 1.0, provenance: dict[str, Any] | None = None,
                metrics: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if model.num_classes != len(species):
        raise ValueError(f"model has {model.num_classes} classes but {len(species)} species were given")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path / WEIGHTS) as tmp:
        torch.save(state, tmp)
    write_json(path / BUNDLE_JSON, {
        "format": BUNDLE_FORMAT,
        "arch": arch,
        "num_classes": len(species),
        "species": list(species),
        "taxonomy": taxonomy,
        "preprocessing": preprocessing.to_dict(),
        "temperature": float(temperature),
        "provenance": provenance or {},
        "metrics": metrics or {},
    })
    return path


def read_bundle_meta(path: str | Path) -> dict[str, Any]:
    folder = resolve_bundle_path(path)
    meta = json.loads((folder / BUNDLE_JSON).read_text(encoding="utf-8"))
    if meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{folder}: unsupported bundle format {meta.get('format')!r}")
    return meta


def load_bundle(path: str | Path, *, device: str | torch.device = "cpu") -> Bundle:
    """Rebuild the model (no download: weights come from the bundle) and its metadata."""
    from herbid.models.registry import get_entry

    folder = resolve_bundle_path(path)
    meta = read_bundle_meta(folder)
    model = get_entry(meta["arch"]).build(int(meta["num_classes"]))
    state = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.to(device).eval()
    return Bundle(
        model=model,
        arch=meta["arch"],
        species=list(meta["species"]),
        taxonomy=meta.get("taxonomy", {}),
        preprocessing=Preprocessing.from_dict(meta["preprocessing"]),
        temperature=float(meta.get("temperature", 1.0)),
        provenance=meta.get("provenance", {}),
        metrics=meta.get("metrics", {}),
        path=folder,
    )


def as_bundle(bundle: Bundle | str | Path, device: str | torch.device = "cpu") -> Bundle:
    """``bundle`` itself (moved to ``device``), or the bundle loaded from a bundle or run folder."""
    if isinstance(bundle, Bundle):
        bundle.model.to(device).eval()
        return bundle
    return load_bundle(bundle, device=device)
