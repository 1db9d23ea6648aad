"""Training samples from WebDataset shards (``TrainConfig.shards``) instead of one file each.

The shard dataset is map-style: :class:`ShardDataset` is a :class:`ManifestDataset` whose
stored copies come from :class:`herbid.data.shards.ShardReader` (an in-memory offset
table of every tar, one ``pread`` per sample) and are decoded by the same function that
reads the files (:func:`herbid.inference.pixels.squeezed_copy` = ``read_squeezed``). So
index → pixels is unchanged, and the training order is the sampler's choice:

* ``shard_order="global"`` (default): the folder's own sampler (``DistributedSampler``
  seeded by ``(seed, epoch)``). Same samples, same order, same augmentation seeds, so the
  run is bit-identical to one that reads the folder. Reads are random across the shards.
* ``shard_order="local"``: :class:`ShardLocalSampler`, each rank reads its own contiguous
  run of shards in a per-epoch order. Every epoch trains on the same (sheet,
  augmentation) pairs as the folder run (the augmentation seed belongs to the sheet, not
  to its position), only grouped into other batches; the losses therefore differ as two
  shuffles of one epoch do, not more.

Evaluation (test, val) keeps reading the dataset folder: it is small and must be exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DistributedSampler, Sampler

from herbid.data.dataset_folder import DatasetError
from herbid.data.shards import ShardReader
from herbid.inference.pixels import needs_large_copy, squeezed_copy
from herbid.inference.sheets import ManifestDataset
from herbid.training.config import TrainConfig
from herbid.training.distributed import DistContext


class ShardDataset(ManifestDataset):
    """:class:`ManifestDataset` over the same rows, reading their stored copies from shards."""

    def __init__(self, shards_dir: str | Path, dataset_dir: str | Path, frame: pd.DataFrame,
                 species: list[str] | None, transform: Callable[..., torch.Tensor],
                 weights: Sequence[float] | None = None) -> None:
        super().__init__(dataset_dir, frame, species, transform, weights=weights)
        self.reader = ShardReader(shards_dir)
        self.reader.check_source(dataset_dir)
        self.positions = self.reader.positions([str(i) for i in frame["image_id"].tolist()])
        large = needs_large_copy(self.resize_size, self.aspect)
        # the member load_image would read: the large copy when needed and the row has one
        self.members = ["large" if large and path else "small" for path in self.large_image_paths]
        lacking = next((i for i, m in enumerate(self.members) if not self.reader.has(int(self.positions[i]), m)),
                       None)
        if lacking is not None:
            raise DatasetError(f"{shards_dir}: sample {self.reader.image_ids[self.positions[lacking]]} has no "
                               f"{self.members[lacking]} copy, which this config reads (resize {self.resize_size}); "
                               f"re-shard with --copies small,large")

    def load(self, index: int) -> Image.Image:
        data = self.reader.read(int(self.positions[index]), self.members[index])
        return squeezed_copy(data, self.resize_size, self.aspect)


class ShardLocalSampler(Sampler[int]):
    """Dataset indices grouped by shard: each epoch permutes the shards and the samples
    within each shard (seeded by ``(seed, epoch)``), then gives rank r the r-th of
    ``world_size`` equal contiguous blocks, so a rank reads few shards (its own, and at most
    one shared at each end of its block). Like ``DistributedSampler``, the order is padded
    by wrapping to a multiple of ``world_size``, so every rank runs as many steps."""

    def __init__(self, shard_of: Sequence[int], rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        self.shard_of = np.asarray(shard_of, dtype=np.int64)
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch = 0
        self.per_rank = -(-len(self.shard_of) // world_size)
        self._members = {int(s): np.flatnonzero(self.shard_of == s) for s in np.unique(self.shard_of)}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_order(self) -> list[int]:
        """Every rank's indices for this epoch, rank 0's block first (padding included)."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)  # DistributedSampler's seeding
        shards = sorted(self._members)
        order: list[int] = []
        for s in torch.randperm(len(shards), generator=generator).tolist():
            members = self._members[shards[s]]
            order.extend(members[torch.randperm(len(members), generator=generator).numpy()].tolist())
        padding = self.per_rank * self.world_size - len(order)
        return order + (order * (padding // max(1, len(order)) + 1))[:padding]

    def __iter__(self) -> Iterator[int]:
        order = self.epoch_order()
        return iter(order[self.rank * self.per_rank:(self.rank + 1) * self.per_rank])

    def __len__(self) -> int:
        return self.per_rank


def training_dataset(config: TrainConfig, frame: pd.DataFrame, species: list[str],
                     transform: Callable[..., torch.Tensor], weights: Sequence[float] | None = None
                     ) -> ManifestDataset:
    """The training rows as a dataset: from ``config.shards`` when set, else from the folder."""
    if config.shards:
        return ShardDataset(config.shards, config.dataset, frame, species, transform, weights=weights)
    return ManifestDataset(config.dataset, frame, species, transform, weights=weights)


def training_order(config: TrainConfig, dataset: ManifestDataset, context: DistContext) -> Sampler[int]:
    """This process's share of each epoch's training order (with ``set_epoch``)."""
    if config.shard_order == "local" and isinstance(dataset, ShardDataset):
        return ShardLocalSampler(dataset.reader.shard[dataset.positions], context.rank, context.world_size,
                                 config.seed)
    return DistributedSampler(dataset, num_replicas=context.world_size, rank=context.rank, shuffle=True,
                              seed=config.seed, drop_last=False)
