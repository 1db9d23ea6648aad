"""Building an index from a dataset, and adding a dataset's sheets to an existing one."""

from __future__ import annotations

import os
from collections.abc import Collection
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import herbid
from herbid.data.dataset_folder import load_manifest
from herbid.data.splits import text_column
from herbid.engine import Engine, open_engine
from herbid.errors import InvalidOption
from herbid.identification.index.encode import encode_rows
from herbid.identification.index.store import INDEX_FORMAT, SpecimenIndex, index_bundle_path, sheet_metadata
from herbid.inference.bundle import Bundle, as_bundle
from herbid.inference.device import resolve_device
from herbid.inference.sheets import select_rows


def manifest_rows(dataset_dir: str | Path, split: str | None) -> pd.DataFrame:
    """The manifest rows of one split (``None``: all); an error when there are none."""
    frame = load_manifest(dataset_dir)
    if split is not None:
        frame = select_rows(frame, split=split)
    if frame.empty:
        raise InvalidOption(f"{dataset_dir}: no rows{f' in split {split!r}' if split else ''} to index")
    return frame


def _index_info(bundle: Bundle, datasets: list[dict[str, Any]], created: str | None = None) -> dict[str, Any]:
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {
        "format": INDEX_FORMAT,
        "bundle": str(bundle.path.resolve()) if bundle.path else None,
        "model_id": bundle.model_id,
        "arch": bundle.arch,
        "metric": "cosine",
        "created": created or now,
        "updated": now,
        "herbid_version": herbid.__version__,
        "datasets": datasets,
    }


class _EmbedStep:
    """One engine worker's share: embed a batch of manifest rows (``load`` passes rows through)."""

    def __init__(self, bundle: Bundle, dataset_dir: str | Path, device: torch.device) -> None:
        self.bundle, self.dataset_dir, self.device = bundle, dataset_dir, device

    def load(self, row: dict[str, Any]) -> dict[str, Any]:
        return row

    def run(self, rows: list[dict[str, Any]]) -> list[np.ndarray]:
        encoded = encode_rows(self.bundle, self.dataset_dir, pd.DataFrame(rows), batch_size=len(rows),
                              device=self.device)
        return list(encoded.embeddings)


class _EmbedSteps:
    """An :class:`_EmbedStep` per engine worker: locally around the loaded bundle; in a Ray
    actor around the same bundle loaded there (from its folder, which workers must see)."""

    def __init__(self, bundle: Bundle, dataset_dir: str | Path, device: torch.device) -> None:
        self.bundle: Bundle | None = bundle
        self.source = bundle.path or bundle
        self.dataset_dir, self.device = dataset_dir, device

    def __getstate__(self) -> dict[str, Any]:  # shipped to an actor without the loaded model
        return {**self.__dict__, "bundle": None}

    def __call__(self, device: str | None) -> _EmbedStep:
        if device is None and self.bundle is not None:
            return _EmbedStep(self.bundle, self.dataset_dir, self.device)
        torch_device = resolve_device(device or "cpu")
        return _EmbedStep(as_bundle(self.source, torch_device), self.dataset_dir, torch_device)


def build_index(bundle: str | Path | Bundle, dataset_dir: str | Path, out_dir: str | Path, *,
                split: str | None = None, batch_size: int = 64, device: str = "auto", progress: bool = True,
                backend: str = "auto", engine: str | Engine = "local", address: str | None = None) -> Path:
    """Embed every sheet of ``dataset_dir`` (or one split) and write ``out_dir`` as an index.

    ``split=None`` indexes all rows: for similar-specimen search the test sheets are
    specimens like any other. Index only ``train`` when the index will be used to
    *evaluate* the k-NN classifier on ``test``. Returns ``out_dir``. ``engine``: where the
    batches are embedded (:mod:`herbid.engine`); on Ray, actors that load the bundle once each
    (one per GPU where there are GPUs), the same embeddings in the same order.
    """
    local = engine == "local" or getattr(engine, "name", None) == "local"
    torch_device = resolve_device(device if local else "cpu")  # with Ray the model runs in the actors
    loaded = as_bundle(bundle, torch_device)
    frame = manifest_rows(dataset_dir, split)
    rows = frame[[c for c in ("image_path", "large_image_path") if c in frame.columns]].to_dict("records")
    with open_engine(engine, workers=os.cpu_count() or 1, address=address, gpus=device != "cpu") as running:
        embeddings = [vector for batch in running.map_batches(
            _EmbedSteps(loaded, dataset_dir, torch_device), rows, batch_size=batch_size,
            desc="index: embedding sheets", progress=progress, threads=1) for vector in batch]
    index = SpecimenIndex(np.stack(embeddings), sheet_metadata(dataset_dir, frame), backend_name=backend)
    datasets = [{"path": str(Path(dataset_dir).resolve()), "split": split, "count": len(frame)}]
    return index.save(out_dir, {**_index_info(loaded, datasets), "backend_requested": backend})


def add_to_index(index_dir: str | Path, dataset_dir: str | Path, *, bundle: str | Path | Bundle | None = None,
                 split: str | None = None, species: Collection[str] | None = None, batch_size: int = 64,
                 device: str = "auto", progress: bool = True) -> Path:
    """Add a dataset's sheets (optionally one split, or some species) to an existing index.

    Sheets already indexed (same image id) are skipped, so adding twice changes nothing.
    The bundle defaults to the one recorded in ``index.json``; another model is refused,
    since its embeddings would not be comparable. New species need no retraining: the
    k-NN vote picks them up at once.
    """
    torch_device = resolve_device(device)
    index = SpecimenIndex.load(index_dir)
    loaded = as_bundle(bundle if bundle is not None else index_bundle_path(index), torch_device)
    index.check_compatible(loaded)
    frame = manifest_rows(dataset_dir, split)
    if species is not None:
        frame = frame[text_column(frame, "scientificName").isin(list(species)).to_numpy()]
    frame = frame[~frame["image_id"].astype(str).isin(set(index.image_ids)).to_numpy()]
    if frame.empty:
        return Path(index_dir)
    encoded = encode_rows(loaded, dataset_dir, frame, batch_size=batch_size, device=torch_device,
                          progress=progress, description="index: embedding new sheets")
    merged = SpecimenIndex(np.concatenate([index.embeddings, encoded.embeddings]),
                           pd.concat([index.metadata, sheet_metadata(dataset_dir, frame)], ignore_index=True),
                           backend_name=index.info.get("backend_requested", "auto"))  # auto: by the new size
    datasets = [*index.info.get("datasets", []),
                {"path": str(Path(dataset_dir).resolve()), "split": split, "count": len(frame),
                 "species": sorted(species) if species is not None else None}]
    info = _index_info(loaded, datasets, created=index.info.get("created"))
    return merged.save(index_dir, {**info, "backend_requested": index.info.get("backend_requested", "auto")})
