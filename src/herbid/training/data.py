"""Images and labels for training and evaluation, read from a dataset folder's manifest.

Reproducibility is designed in rather than hoped for:

* the order of the training data comes from a ``torch.Generator`` seeded with
  ``(seed, epoch)`` (``DistributedSampler`` semantics, also with one process);
* each sample's augmentation draws from its own RNG seeded with ``(seed, epoch, index)``,
  which the sampler hands to the dataset together with the index. So the crops and flips
  of epoch 3 are the same whether there are 0 or 8 loader workers, one or four GPUs, and
  whether the run was resumed before epoch 3 or not.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from herbid.data.folder import TRAIN_SIZE
from herbid.data.imaging import open_image
from herbid.data.splits import text_column
from herbid.errors import InvalidOption
from herbid.models.base import Preprocessing, sheet_shape

#: A dataset key: an index, or an index with the seed of that sample's augmentation.
SampleKey = int | tuple[int, int]


# ------------------------------------------------------------------------ images


def needs_large_copy(resize_size: int, aspect: float = 1.0) -> bool:
    """Whether a ``resize_size`` (width) image of this aspect is read from the ≤1024 px copy
    rather than the 256 px one."""
    return max(sheet_shape(resize_size, aspect)) > TRAIN_SIZE


def read_squeezed(source: str | Path | BinaryIO, resize_size: int, aspect: float = 1.0) -> Image.Image:
    """An image file as RGB, resized to ``sheet_shape(resize_size, aspect)`` (no aspect kept).

    With ``aspect`` 1 that is the paper's square squeeze. Otherwise an image whose
    orientation differs from the target's (a landscape photo of a sheet for a portrait
    target) is first turned by 90°, so it is not squashed to a third of its height. JPEG
    ``draft`` lets libjpeg decode at 1/2, 1/4 or 1/8 scale when that is still at least
    the target size, which is much faster than decoding everything and resizing.
    """
    width, height = sheet_shape(resize_size, aspect)
    with open_image(source) as image:  # herbid's pixel limit, not Pillow's default
        image.draft("RGB", (width, height))
        rgb = image.convert("RGB")
    if aspect != 1.0 and (rgb.height > rgb.width) != (height > width):
        rgb = rgb.transpose(Image.Transpose.ROTATE_90)
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), Image.BILINEAR)
    return rgb


def load_image(dataset_dir: Path, image_path: str, large_image_path: str | None, resize_size: int,
               aspect: float = 1.0) -> Image.Image:
    """A manifest row's sheet as :func:`read_squeezed` gives it.

    Up to the stored 256×256 copy that copy is read; larger sizes come from the ≤1024 px copy.
    """
    use_large = needs_large_copy(resize_size, aspect) and large_image_path
    return read_squeezed(dataset_dir / (large_image_path if use_large else image_path), resize_size, aspect)


# -------------------------------------------------------------------- transforms


def _to_unit_float(pixels: np.ndarray) -> np.ndarray:
    """HWC uint8 → CHW float32 in [0, 1].

    Done in numpy: in a loader worker torch's element-wise kernels pay thread-pool
    overhead that costs more than the arithmetic on one image (10× slower measured).
    """
    chw = np.ascontiguousarray(pixels.transpose(2, 0, 1)).astype(np.float32)
    chw /= np.float32(255.0)
    return chw


def _normalized(chw: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    chw -= mean
    chw /= std
    return torch.from_numpy(chw)


def _to_normalized_tensor(pixels: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """HWC uint8 → CHW float32 ``(x / 255 − mean) / std`` (torchvision's ToTensor + Normalize)."""
    return _normalized(_to_unit_float(pixels), mean, std)


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


@dataclass(frozen=True)
class _Normalize:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.asarray(self.mean, dtype=np.float32).reshape(3, 1, 1),
                np.asarray(self.std, dtype=np.float32).reshape(3, 1, 1))


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
        self.mean, self.std = _Normalize(tuple(mean), tuple(std)).arrays()

    def __call__(self, image: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        rng = rng or random.Random()
        pixels = self._zoomed(image, rng) if self.min_crop_area > 0 else self._cropped(np.asarray(image), rng)
        if self.hflip and rng.random() < 0.5:
            pixels = pixels[:, ::-1]
        if self.vflip and rng.random() < 0.5:
            pixels = pixels[::-1]
        if self.rot90 and rng.random() < 0.5:
            pixels = np.rot90(pixels)  # square crops only: the shape is kept
        chw = _to_unit_float(pixels)
        if self.jitter > 0:
            scanner_jitter(chw, rng, self.jitter)
        return _normalized(chw, self.mean, self.std)

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


class EvalTransform:
    """Centre ``input_size`` crop of the ``resize_size`` image, normalise (Caffe's TEST phase)."""

    uses_rng = False

    def __init__(self, input_size: int, resize_size: int, mean: Sequence[float], std: Sequence[float],
                 aspect: float = 1.0) -> None:
        if input_size > resize_size:
            raise InvalidOption(f"input_size {input_size} is larger than resize_size {resize_size}")
        self.input_size, self.resize_size, self.aspect = input_size, resize_size, aspect
        self.crop_width, self.crop_height = sheet_shape(input_size, aspect)
        self.mean, self.std = _Normalize(tuple(mean), tuple(std)).arrays()

    def __call__(self, image: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        pixels = np.asarray(image)
        height, width = pixels.shape[:2]
        top = (height - self.crop_height) // 2
        left = (width - self.crop_width) // 2
        return _to_normalized_tensor(pixels[top:top + self.crop_height, left:left + self.crop_width],
                                     self.mean, self.std)

    def __repr__(self) -> str:
        return f"EvalTransform(centre {self.input_size} of {self.resize_size}, aspect={self.aspect})"


def resolved_sizes(preprocessing: Preprocessing, input_size: int | None, resize_size: int | None) -> tuple[int, int]:
    """The (input, resize) sizes actually used: explicit values, else the model's.

    An explicit input size without a resize size keeps the model's crop ratio
    (224 of 256 → 448 of 512).
    """
    if input_size is None:
        input_size = preprocessing.input_size
        resize_size = resize_size or preprocessing.resize_size
    elif resize_size is None:
        resize_size = round(input_size * preprocessing.resize_size / preprocessing.input_size)
    return int(input_size), int(resize_size)


def train_transform(preprocessing: Preprocessing, input_size: int | None = None, resize_size: int | None = None,
                    hflip: bool = True, vflip: bool = False, rot90: bool = False,
                    jitter: float = 0.0, min_crop_area: float = 0.0) -> TrainTransform:
    size, resize = resolved_sizes(preprocessing, input_size, resize_size)
    return TrainTransform(size, resize, preprocessing.mean, preprocessing.std, hflip, vflip, rot90, jitter,
                          min_crop_area, preprocessing.aspect)


def eval_transform(preprocessing: Preprocessing, input_size: int | None = None,
                   resize_size: int | None = None) -> EvalTransform:
    size, resize = resolved_sizes(preprocessing, input_size, resize_size)
    return EvalTransform(size, resize, preprocessing.mean, preprocessing.std, preprocessing.aspect)


# ----------------------------------------------------------------------- dataset


class ManifestDataset(Dataset):
    """``(image tensor, class index)`` for the rows of ``frame``; with ``weights`` (one per
    row) ``(image tensor, class index, weight)``.

    Keys may be plain indices or ``(index, seed)`` pairs (see :class:`SeededBatchSampler`);
    with a seed, the transform's randomness comes from that seed alone. Rows are kept as
    plain lists, not a DataFrame, so that loader workers do not copy the frame page by page.
    """

    def __init__(self, dataset_dir: str | Path, frame: pd.DataFrame, species: list[str],
                 transform: Callable[..., torch.Tensor], weights: Sequence[float] | None = None) -> None:
        self.dataset_dir = Path(dataset_dir)
        if weights is not None and len(weights) != len(frame):
            raise ValueError(f"{len(weights)} sample weights for {len(frame)} rows")
        self.weights = None if weights is None else [float(w) for w in weights]
        self.transform = transform
        self.species = list(species)
        index = {name: i for i, name in enumerate(self.species)}
        names = text_column(frame, "scientificName").tolist()
        unknown = sorted({n for n in names if n not in index}, key=str)
        if unknown:
            raise InvalidOption(f"{len(unknown)} species are not in the class list, e.g. {unknown[:3]}")
        self.targets = [index[n] for n in names]
        self.image_paths = [str(p) for p in frame["image_path"].tolist()]
        self.large_image_paths: list[str | None] = text_column(frame, "large_image_path").tolist()
        self.resize_size = int(getattr(transform, "resize_size", TRAIN_SIZE))
        self.aspect = float(getattr(transform, "aspect", 1.0))

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, index: int) -> Image.Image:
        return load_image(self.dataset_dir, self.image_paths[index], self.large_image_paths[index],
                          self.resize_size, self.aspect)

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, int] | tuple[torch.Tensor, int, float]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        image = self.load(index)
        if self.weights is not None:
            return self._apply(image, seed), self.targets[index], self.weights[index]
        return self._apply(image, seed), self.targets[index]

    def _apply(self, image: Image.Image, seed: int | None) -> torch.Tensor:
        if getattr(self.transform, "uses_rng", False):
            return self.transform(image, rng=random.Random(seed) if seed is not None else None)
        if seed is None:
            return self.transform(image)
        # A foreign (e.g. torchvision) transform draws from torch's global RNG: seed it for
        # this sample only, restoring the caller's state (the main process's, with 0 workers).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image)


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


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...``: every sample on exactly one process, no padding.

    ``DistributedSampler`` pads the shards to equal length with repeated samples, which is
    right for training and wrong for evaluation (the repeats would be counted twice).
    """

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        self.length, self.rank, self.world_size = length, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))


# --------------------------------------------------------------------- selection


def quality_weights(frame: pd.DataFrame) -> list[float]:
    """Per-row sample weights from the manifest's ``quality`` column (``herbid dataset clean``)."""
    if "quality" not in frame.columns:
        raise InvalidOption("sample_weight=quality needs a 'quality' column in the manifest; add it with "
                         "`herbid dataset clean DATASET --out SCORED --mode none` and train on SCORED")
    values = pd.to_numeric(frame["quality"], errors="coerce")
    if values.isna().any():
        raise InvalidOption(f"{int(values.isna().sum())} training rows have no quality score")
    return values.clip(lower=0.0, upper=1.0).tolist()


def species_and_taxonomy(frame: pd.DataFrame) -> tuple[list[str], dict[str, dict[str, str | None]]]:
    """Sorted species names (the class order) and each one's genus and family.

    The genus and family are the most common non-empty values among the species' rows.
    """
    names = text_column(frame, "scientificName")
    if names.isna().any():
        raise InvalidOption(f"{int(names.isna().sum())} manifest rows have no scientificName")
    species = sorted(set(names.tolist()))
    taxonomy: dict[str, dict[str, str | None]] = {}
    columns = {rank: text_column(frame, rank) for rank in ("genus", "family")}
    for name in species:
        rows = names == name
        taxonomy[name] = {rank: _most_common(values[rows]) for rank, values in columns.items()}
    return species, taxonomy


def _most_common(values: pd.Series) -> str | None:
    counts = values.dropna().value_counts()
    return str(counts.index[0]) if len(counts) else None


def select_rows(frame: pd.DataFrame, *, split: str | None = None, fold: int | None = None,
                train: bool = True) -> pd.DataFrame:
    """The rows of one side of the experiment.

    With ``fold=k`` the ``split`` column is ignored: ``train=True`` gives every fold but k,
    ``train=False`` gives fold k. Otherwise the rows whose ``split`` equals ``split``.
    """
    if fold is not None:
        if "fold" not in frame.columns or frame["fold"].isna().all():
            raise InvalidOption("fold is set but the manifest has no fold column; run `herbid dataset split --folds K`")
        folds = pd.to_numeric(frame["fold"], errors="coerce")
        mask = (folds != fold) & folds.notna() if train else folds == fold
        return frame[mask.to_numpy()]
    if split is None:
        raise ValueError("select_rows needs split= or fold=")
    return frame[(text_column(frame, "split") == split).to_numpy()]
