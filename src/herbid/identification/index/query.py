"""Querying an index with images: the most similar indexed sheets and their k-NN vote."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from herbid.identification.index.encode import ImageInput, embed_images
from herbid.identification.index.store import SpecimenIndex, index_bundle_path, open_index
from herbid.inference.bundle import Bundle, as_bundle
from herbid.inference.device import resolve_device


def similar(index: str | Path | SpecimenIndex, images: ImageInput | Sequence[ImageInput], k: int = 10,
            bundle: str | Path | Bundle | None = None, *, device: str = "auto",
            knn_k: int | None = None) -> list[dict[str, Any]]:
    """The ``k`` indexed sheets most similar to each image, one dict per image.

    Each dict: ``query`` (the path, or ``"image N"`` for bytes), ``neighbours`` (rank,
    similarity, and the sheet's metadata incl. ``source_path`` and absolute
    ``image_path``), and ``knn`` (the k-NN vote over ``knn_k`` neighbours, default ``k``:
    ``[{"species", "probability"}]``, best first, zero votes left out).

    For repeated queries (a web app) pass an already loaded :class:`SpecimenIndex` and
    :class:`Bundle`; otherwise both are loaded here (the bundle recorded in index.json).
    """
    items = [images] if isinstance(images, (bytes, str, Path)) else list(images)
    loaded_index = open_index(index)
    torch_device = resolve_device(device)
    loaded = as_bundle(bundle if bundle is not None else index_bundle_path(loaded_index), torch_device)
    loaded_index.check_compatible(loaded)
    queries = embed_images(loaded, items, device=torch_device)
    neighbours = loaded_index.neighbours(queries, k)
    names, probs = loaded_index.knn_probabilities(queries, knn_k or k)
    return [{"query": str(item) if not isinstance(item, bytes) else f"image {i + 1}",
             "neighbours": found, "knn": _votes(names, row)}
            for i, (item, found, row) in enumerate(zip(items, neighbours, probs))]


def _votes(names: list[str], probs: np.ndarray, top: int = 5) -> list[dict[str, Any]]:
    order = np.argsort(-probs, kind="stable")[:top]
    return [{"species": names[i], "probability": float(probs[i])} for i in order if probs[i] > 0]
