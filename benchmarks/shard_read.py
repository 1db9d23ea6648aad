"""Read + decode throughput of training samples: WebDataset shards against the dataset folder.

Issue 14 asks that reading training samples from shards be at least as fast as reading
one file per sample. Every reader runs in this process over the same training rows and
yields what the training transform receives (the sheet decoded and squeezed to
``resize_size`` at ``aspect``, from the copy the config reads):

* **folder**: ``ManifestDataset.load``, one JPEG file per sample, in the training order
  (``DistributedSampler``, seed 0, epoch 1);
* **shards, global order**: ``ShardDataset.load`` (one ``pread`` into an open tar) in the
  very same order: what ``TrainConfig.shards`` does by default (bit-identical training);
* **shards, local order**: ``ShardDataset.load`` in ``ShardLocalSampler``'s order (shard by
  shard, ``shard_order=local``);
* **wds stream**: ``webdataset.WebDataset`` reading the tars front to back, decoding the
  same member with the same function (open_clip's way; no random order).

Each is also timed reading bytes only (no decode), which isolates the storage cost. With
``cold`` (default) the page cache of every image file and tar is dropped before each pass
(``posix_fadvise(DONTNEED)``, no root needed), so passes start from the disk, not memory.
The headline is ``ratio_global`` = shard global order samples/s ÷ folder samples/s.

    python benchmarks/shard_read.py [--size quick|full] [--dataset DIR --shards DIR] [--warm]
        [--repeat 3] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import webdataset as wds
from torch.utils.data import DistributedSampler

from herbid.data.build import BuildOptions, build_dataset
from herbid.data.dataset_folder import load_manifest, read_json
from herbid.data.shards import SHARDS_JSON, write_shards
from herbid.data.splits import split_dataset
from herbid.data.synthetic import make_synthetic_collection
from herbid.inference.pixels import eval_transform, needs_large_copy, read_squeezed, squeezed_copy
from herbid.inference.sheets import ManifestDataset, select_rows
from herbid.models.base import Preprocessing
from herbid.training.shard_data import ShardDataset, ShardLocalSampler

#: Sheets generated per size: (species, sheets per species, pixel size of the originals).
SIZES = {"quick": (6, 50, (600, 850)), "full": (12, 250, (750, 1050))}


def drop_cache(paths: Iterable[Path]) -> None:
    """Evict files from the page cache, so that the next read comes from the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _timed(pass_: Callable[[], int], files: list[Path], cold: bool) -> float:
    if cold:
        drop_cache(files)
    start = time.perf_counter()
    count = pass_()
    return count / (time.perf_counter() - start)


def measure(dataset_dir: str | Path, shards_dir: str | Path, *, resize_size: int = 640, aspect: float = 1.4,
            limit: int | None = None, cold: bool = True, repeat: int = 3) -> dict[str, Any]:
    """Samples/s of each reader over the shards' training rows (the first ``limit`` of the
    training order; median of ``repeat`` interleaved rounds), and the ratios of the shard
    readers to the folder reader."""
    dataset_dir, shards_dir = Path(dataset_dir), Path(shards_dir)
    info = read_json(shards_dir / SHARDS_JSON)
    rows = select_rows(load_manifest(dataset_dir), split=info["split"]) if info["split"] else load_manifest(dataset_dir)
    transform = eval_transform(Preprocessing(aspect=aspect), resize_size, resize_size)
    folder = ManifestDataset(dataset_dir, rows, None, transform)
    shards = ShardDataset(shards_dir, dataset_dir, rows, None, transform)
    order = list(DistributedSampler(folder, num_replicas=1, rank=0, shuffle=True, seed=0))[:limit]
    local_sampler = ShardLocalSampler(shards.reader.shard[shards.positions], 0, 1, seed=0)
    local_sampler.set_epoch(1)
    local = list(local_sampler)[:limit]
    n = len(order)
    member = "large" if needs_large_copy(resize_size, aspect) else "small"
    column, extension = ("large_image_path", "large.jpg") if member == "large" else ("image_path", "jpg")
    image_files = [dataset_dir / p for p in rows[column]]
    tars = [shards_dir / entry["url"] for entry in info["shardlist"]]

    def stream(decode: bool) -> int:
        count = 0
        for sample in wds.WebDataset([str(t) for t in tars], shardshuffle=False, empty_check=False):
            if decode:
                squeezed_copy(sample[extension], resize_size, aspect)
            count += 1
            if count == n:
                break
        return count

    def each(indices: list[int], read: Callable[[int], Any]) -> Callable[[], int]:
        return lambda: sum(1 for i in indices if read(i) is not None)

    passes: dict[str, tuple[Callable[[], int], list[Path]]] = {
        "folder": (each(order, folder.load), image_files),
        "shard_global": (each(order, shards.load), tars),
        "shard_local": (each(local, shards.load), tars),
        "wds_stream": (lambda: stream(True), tars),
        "folder_bytes": (each(order, lambda i: image_files[i].read_bytes()), image_files),
        "shard_global_bytes": (each(order, lambda i: shards.reader.read(int(shards.positions[i]), member)), tars),
        "shard_local_bytes": (each(local, lambda i: shards.reader.read(int(shards.positions[i]), member)), tars),
        "wds_stream_bytes": (lambda: stream(False), tars),
    }
    read_squeezed(image_files[0], resize_size, aspect)  # imports and first-decode costs out of the timings
    # interleaved rounds, median per reader: a burst of load from other processes hits one round
    rounds = [{name: _timed(run, files, cold) for name, (run, files) in passes.items()} for _ in range(repeat)]
    rates = {name: statistics.median(r[name] for r in rounds) for name in passes}
    result: dict[str, Any] = {"samples": n, "shards": len(tars), "member": member, "resize_size": resize_size,
                              "aspect": aspect, "cold": cold, "repeat": repeat,
                              "bytes_per_sample": sum(f.stat().st_size for f in image_files) / len(image_files)}
    result.update({f"{name}_samples_per_s": round(rate, 1) for name, rate in rates.items()})
    for name in ("shard_global", "shard_local", "wds_stream"):
        result[f"ratio_{name.removeprefix('shard_')}"] = round(rates[name] / rates["folder"], 3)
        result[f"ratio_{name.removeprefix('shard_')}_bytes"] = round(rates[f"{name}_bytes"] / rates["folder_bytes"], 3)
    return result


def synthetic_dataset(root: Path, size: str) -> tuple[Path, Path]:
    """A built, split and sharded synthetic collection of the given size under ``root``."""
    species, per_species, pixels = SIZES[size]
    source = make_synthetic_collection(root / "src", n_species=species, per_species=per_species, size=pixels, seed=0)
    dataset = build_dataset([source], root / "ds", BuildOptions(workers=os.cpu_count() or 1, progress=False)).out
    split_dataset(dataset, by="none", test_fraction=0.3, seed=0)
    write_shards(dataset, root / "shards", shard_size=500, progress=False)
    return dataset, root / "shards"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="quick",
                        help="generated collection: quick (300 sheets) or full (3000)")
    parser.add_argument("--dataset", type=Path, help="measure this built dataset instead (with --shards)")
    parser.add_argument("--shards", type=Path, help="its shards (herbid dataset shard)")
    parser.add_argument("--resize-size", type=int, default=640)
    parser.add_argument("--aspect", type=float, default=1.4)
    parser.add_argument("--warm", action="store_true", help="keep the page cache (files read from memory)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--limit", type=int, default=None, help="samples per pass (default: every training row)")
    args = parser.parse_args()
    options = {"resize_size": args.resize_size, "aspect": args.aspect, "cold": not args.warm,
               "repeat": args.repeat, "limit": args.limit}
    if args.dataset:
        if not args.shards:
            parser.error("--dataset needs --shards")
        print(json.dumps(measure(args.dataset, args.shards, **options), indent=2))
        return
    with tempfile.TemporaryDirectory() as tmp:
        dataset, shards = synthetic_dataset(Path(tmp), args.size)
        print(json.dumps(measure(dataset, shards, **options), indent=2))


if __name__ == "__main__":
    main()
