"""Training's side of the pixel path: random augmentation, seeded batches, sample weights.

Reproducibility is designed in rather than hoped for:

* the order of the training data comes from a ``torch.Generator`` seeded with
  ``(seed, epoch)`` (``DistributedSampler`` semantics, also with one process);
* each sample's augmentation draws from its own RNG seeded with ``(seed, epoch, index)``,
  which the sampler hands to the dataset together with the index. So the crops and flips
  of epoch 3 are the same whether there are 0 or 8 loader workers, one or four GPUs, and
  whether the run was resumed before epoch 3 or not.

Reading sheets, the evaluation transform and the datasets live in :mod:`herbid.inference`
(everything that uses a model reads sheets the same way); this module adds what only
training needs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Sampler

from herbid.data.columns import text_column
from herbid.errors import InvalidOption
from herbid.inference.pixels import Normalization, normalize_chw, resolved_sizes, to_unit_float
from herbid.models.base import Preprocessing, sheet_shape

# -------------------------------------------------------------------- augmentation


def scanner_jitter(chw: np.ndarray, rng: random.Random, strength: float) -> np.ndarray:
    """Brightness, contrast and per-channel gain changes of up to ±``strength`` (gains ±half
    of it), in place on a CHW float image in [0, 1]: the variation between scanners and
    cameras, not the hue shifts of generic colour jitter (a sheet's colours carry species
    information: flower colour, leaf colour of the dried plant).
    """
    brightness = 1.0 + rng.uniform(-strength, strength)
    contrast = 1.0 + rng.uniform(-strength, strength)
    gains = np.asarray([1.0 + rng.uniform(-strength / 2, strength / 2) for _ in range(3)],
                       dtype=np.float32).reshape(3, 1, 1)
    level = np.float32(chw.mean())
    chw -= level
    chw *= np.float32(contrast)
    chw += level
    chw *= gains * np.float32(brightness)
    np.clip(chw, 0.0, 1.0, out=chw)
    return chw


class TrainTransform:
    """Random ``input_size`` crop of the ``resize_size`` image, random mirror, normalise
    (Caffe's default ``crop_size`` + ``mirror`` augmentation used by the paper), optionally
    with vertical flips, quarter turns and scanner-like colour changes. With
    ``min_crop_area`` > 0 the crop is instead a random square covering that share of the
    image or more, resized to ``input_size`` (a zoom in on part of the sheet).

    ``rng`` makes the draw reproducible per sample; without one a fresh RNG is used. Each
    optional augmentation draws from it only when enabled, so a config without it replays
    exactly the crops and flips of older runs.
    """

    uses_rng = True

    def __init__(self, input_size: int, resize_size: int, mean: Sequence[float], std: Sequence[float],
                 hflip: bool = True, vflip: bool = False, rot90: bool = False, jitter: float = 0.0,
                 min_crop_area: float = 0.0, aspect: float = 1.0) -> None:
        if input_size > resize_size:
            raise InvalidOption(f"input_size {input_size} is larger than resize_size {resize_size}")
        if rot90 and aspect != 1.0:
            raise InvalidOption("rot90 needs square crops (aspect 1)")
        self.input_size, self.resize_size, self.hflip, self.vflip = input_size, resize_size, hflip, vflip
        self.rot90, self.jitter, self.min_crop_area, self.aspect = rot90, jitter, min_crop_area, aspect
        self.crop_width, self.crop_height = sheet_shape(input_size, aspect)
        self.mean, self.std = Normalization(tuple(mean), tuple(std)).arrays()

    def __call__(self, image: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        rng = rng or random.Random()
        pixels = self._zoomed(image, rng) if self.min_crop_area > 0 else self._cropped(np.asarray(image), rng)
        if self.hflip and rng.random() < 0.5:
            pixels = pixels[:, ::-1]
        if self.vflip and rng.random() < 0.5:
            pixels = pixels[::-1]
        if self.rot90 and rng.random() < 0.5:
            pixels = np.rot90(pixels)  # square crops only: the shape is kept
        chw = to_unit_float(pixels)
        if self.jitter > 0:
            scanner_jitter(chw, rng, self.jitter)
        return normalize_chw(chw, self.mean, self.std)

    def _cropped(self, pixels: np.ndarray, rng: random.Random) -> np.ndarray:
        height, width = pixels.shape[:2]
        top = rng.randint(0, height - self.crop_height)
        left = rng.randint(0, width - self.crop_width)
        return pixels[top:top + self.crop_height, left:left + self.crop_width]

    def _zoomed(self, image: Image.Image, rng: random.Random) -> np.ndarray:
        width, height = image.size
        scale = math.sqrt(rng.uniform(self.min_crop_area, 1.0))
        crop_width = max(1, round(scale * min(width, height / self.aspect)))
        crop_height = max(1, min(height, round(crop_width * self.aspect)))
        top = rng.randint(0, height - crop_height)
        left = rng.randint(0, width - crop_width)
        crop = image.crop((left, top, left + crop_width, top + crop_height))
        return np.asarray(crop.resize((self.crop_width, self.crop_height), Image.BILINEAR))

    def __repr__(self) -> str:
        return (f"TrainTransform(crop {self.input_size} of {self.resize_size}, aspect={self.aspect}, hflip={self.hflip}, "
                f"vflip={self.vflip}, rot90={self.rot90}, jitter={self.jitter}, "
                f"min_crop_area={self.min_crop_area})")


def train_transform(preprocessing: Preprocessing, input_size: int | None = None, resize_size: int | None = None,
                    hflip: bool = True, vflip: bool = False, rot90: bool = False,
                    jitter: float = 0.0, min_crop_area: float = 0.0) -> TrainTransform:
    size, resize = resolved_sizes(preprocessing, input_size, resize_size)
    return TrainTransform(size, resize, preprocessing.mean, preprocessing.std, hflip, vflip, rot90, jitter,
                          min_crop_area, preprocessing.aspect)


# ----------------------------------------------------------------------- dataset


# ---------------------------------------------------------------------- samplers


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample's augmentation in one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class SeededBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(index, augmentation seed)`` from an index sampler with ``set_epoch``.

    A final batch of one sample is dropped: BatchNorm after global pooling cannot train on
    a single value per channel, and a different epoch order will use that image later.
    """

    def __init__(self, sampler: Any, batch_size: int, seed: int, max_batches: int | None = None) -> None:
        self.sampler, self.batch_size, self.seed = sampler, batch_size, seed
        self.max_batches = max_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.sampler)
        full, rest = divmod(n, self.batch_size)
        batches = full + (1 if rest > 1 or (rest == 1 and full == 0) else 0)
        return batches if self.max_batches is None else min(batches, self.max_batches)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batch: list[tuple[int, int]] = []
        limit = len(self)
        emitted = 0
        for index in self.sampler:
            batch.append((int(index), sample_seed(self.seed, self.epoch, int(index))))
            if len(batch) == self.batch_size:
                yield batch
                emitted += 1
                batch = []
                if emitted >= limit:
                    return
        if batch and emitted < limit:
            yield batch


# --------------------------------------------------------------------- selection


def institution_weights(frame: pd.DataFrame) -> list[float]:
    """Per-row weights that give every institution of a species the same total weight, the
    species keeping its own (``n_s / (k_s · n_{s,i})`` for a sheet of species s from
    institution i, k_s institutions): when most of a species' sheets come from one herbarium,
    its paper and scanner stop being the cheapest cue to the name."""
    institution = text_column(frame, "institutionCode")
    if institution.isna().any():
        raise InvalidOption("sample_weight=institution needs an institutionCode for every training sheet; build "
                            "with Darwin Core sources that have one, or --institution-pattern for image folders")
    species = text_column(frame, "scientificName")
    pair_count = frame.groupby([species, institution])["scientificName"].transform("size")
    per_species = species.map(species.value_counts())
    institutions = species.map(institution.groupby(species).nunique())
    return (per_species / (institutions * pair_count)).astype(float).tolist()


def sample_weights(kind: str, frame: pd.DataFrame) -> list[float] | None:
    """Per-row weights of the training rows for ``TrainConfig.sample_weight`` (None: unweighted)."""
    return {"none": lambda f: None, "quality": quality_weights, "institution": institution_weights}[kind](frame)


def quality_weights(frame: pd.DataFrame) -> list[float]:
    """Per-row sample weights from the manifest's ``quality`` column (``herbid dataset clean``)."""
    if "quality" not in frame.columns:
        raise InvalidOption("sample_weight=quality needs a 'quality' column in the manifest; add it with "
                         "`herbid dataset clean DATASET --out SCORED --mode none` and train on SCORED")
    values = pd.to_numeric(frame["quality"], errors="coerce")
    if values.isna().any():
        raise InvalidOption(f"{int(values.isna().sum())} training rows have no quality score")
    return values.clip(lower=0.0, upper=1.0).tolist()


