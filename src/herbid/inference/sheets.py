"""Stored sheets of a dataset folder as model inputs: row selection, class order, datasets.

Every consumer reads dataset rows the same way: :func:`select_rows` picks one side of a
split or fold, :func:`species_and_taxonomy` fixes the class order, and
:class:`ManifestDataset` gives ``(tensor, class index)`` through the evaluation pixel path
(or a training transform). :class:`ShardSampler` shards evaluation across processes
without padding.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from herbid.data.dataset_folder import TRAIN_SIZE
from herbid.data.splits import text_column
from herbid.errors import InvalidOption
from herbid.inference.pixels import load_image

#: A dataset key: an index, or an index with the seed of that sample's augmentation.
SampleKey = int | tuple[int, int]
#: Class index of a row when the dataset is built without a class list (embedding only).
NO_CLASS = -1


class ManifestDataset(Dataset):
    """``(image tensor, class index)`` for the rows of ``frame``; with ``weights`` (one per
    row) ``(image tensor, class index, weight)``. With ``species=None`` every row's class
    is :data:`NO_CLASS` and any name (or none) is fine: embedding needs no class.

    Keys may be plain indices or ``(index, seed)`` pairs (see :class:`herbid.training.data.SeededBatchSampler`);
    with a seed, the transform's randomness comes from that seed alone. Rows are kept as
    plain lists, not a DataFrame, so that loader workers do not copy the frame page by page.
    """

    def __init__(self, dataset_dir: str | Path, frame: pd.DataFrame, species: list[str] | None,
                 transform: Callable[..., torch.Tensor], weights: Sequence[float] | None = None) -> None:
        self.dataset_dir = Path(dataset_dir)
        if weights is not None and len(weights) != len(frame):
            raise ValueError(f"{len(weights)} sample weights for {len(frame)} rows")
        self.weights = None if weights is None else [float(w) for w in weights]
        self.transform = transform
        self.species = list(species or [])
        self.targets = self._class_indices(frame) if species is not None else [NO_CLASS] * len(frame)
        self.image_paths = [str(p) for p in frame["image_path"].tolist()]
        self.large_image_paths: list[str | None] = text_column(frame, "large_image_path").tolist()
        self.resize_size = int(getattr(transform, "resize_size", TRAIN_SIZE))
        self.aspect = float(getattr(transform, "aspect", 1.0))

    def _class_indices(self, frame: pd.DataFrame) -> list[int]:
        index = {name: i for i, name in enumerate(self.species)}
        names = text_column(frame, "scientificName").tolist()
        unknown = sorted({n for n in names if n not in index}, key=str)
        if unknown:
            raise InvalidOption(f"{len(unknown)} species are not in the class list, e.g. {unknown[:3]}")
        return [index[n] for n in names]

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
