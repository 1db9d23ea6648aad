"""Encoding sheets: the one forward pass that gives each sheet its search embedding and logits.

Manifest rows (their stored copies) and uploaded images alike, normalised the way a
build normalises them, so that a query lands in the same space as the indexed sheets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from herbid.errors import InvalidOption
from herbid.inference.bundle import Bundle
from herbid.inference.device import resolve_device
from herbid.inference.forward import forward
from herbid.inference.pixels import eval_transform, upload_tensor
from herbid.inference.sheets import ManifestDataset
from herbid.progress import progress_bar

ImageInput = bytes | str | Path


def _read_image(item: ImageInput) -> bytes:
    return item if isinstance(item, bytes) else Path(item).read_bytes()


@dataclass
class Encoded:
    """What one forward pass gives per sheet: the search embedding and the class logits."""

    embeddings: np.ndarray  # (N, D) float32, L2-normalised
    logits: np.ndarray  # (N, C) float32, uncalibrated


def encode_tensors(bundle: Bundle, batches: Iterable[torch.Tensor] | DataLoader, device: torch.device,
                   advance: Callable[[int], None] | None = None) -> Encoded:
    """Embeddings and logits (over the bundle's TTA views) from the one forward pass."""
    out = forward(bundle.model, batches, device, tta=bundle.preprocessing.tta, pooled=True, advance=advance)
    if not len(out.logits):
        raise InvalidOption("no images to encode")
    return Encoded(out.embeddings, out.logits.numpy())


def encode_rows(bundle: Bundle, dataset_dir: str | Path, frame: pd.DataFrame, *, batch_size: int = 64,
                device: torch.device | str = "auto", progress: bool = False,
                description: str = "embedding sheets") -> Encoded:
    """Embeddings and logits of manifest rows (their stored copies, evaluation transform)."""
    device = resolve_device(device) if isinstance(device, str) else device
    bundle.model.to(device)
    images = ManifestDataset(dataset_dir, frame, None, eval_transform(bundle.preprocessing))
    loader = DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=0)
    with progress_bar(description, len(images), enabled=progress) as advance:
        return encode_tensors(bundle, loader, device, advance)


def encode_images(bundle: Bundle, images: Sequence[ImageInput], *, batch_size: int = 32,
                  device: torch.device | str = "auto") -> Encoded:
    """Embeddings and logits of uploaded images (bytes or paths), normalised as a build would."""
    device = resolve_device(device) if isinstance(device, str) else device
    bundle.model.to(device)
    tensors = [upload_tensor(_read_image(item), bundle.preprocessing) for item in images]
    batches = [torch.stack(tensors[i:i + batch_size]) for i in range(0, len(tensors), batch_size)]
    return encode_tensors(bundle, batches, device)


def embed_images(bundle: Bundle, images: Sequence[ImageInput], *, batch_size: int = 32,
                 device: torch.device | str = "auto") -> np.ndarray:
    """L2-normalised float32 embeddings (N, D) of uploaded images, ready for :meth:`SpecimenIndex.search`."""
    return encode_images(bundle, images, batch_size=batch_size, device=device).embeddings

