"""WebDataset tar shards of a dataset folder's stored copies (``herbid dataset shard``).

Training reads one JPEG per sample; on shared or network storage every file costs an
open and a metadata lookup, which dominate once there are millions of sheets. A shard
folder holds the same stored copies, byte for byte, in a few large tar files:

* ``shard-000000.tar …``: one WebDataset sample per manifest row, keyed by image_id, with
  ``jpg`` (the 256 px copy, ``image_path``), ``large.jpg`` (the ≤1024 px copy,
  ``large_image_path``, which the default 640 px recipe reads) and ``json`` (image_id,
  label, label index and the row's columns);
* ``index.parquet``: each member's byte offset and size in its tar, so that a reader gets
  sample i with one ``pread`` on an open file (random access: training keeps the folder's
  sampler and so its exact order, see :mod:`herbid.training.shard_data`);
* ``shards.json``, written last (a folder without it is an unfinished write): the shard
  list with sample counts (wids' ``shardlist`` form), the class list, the source
  manifest's hash and the herbid version.

Samples are written in manifest order, the tars with fixed metadata (``mtime`` 0), so
the same dataset gives byte-identical shards.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import webdataset as wds

from herbid import __version__
from herbid.data.columns import text_column
from herbid.data.dataset_folder import (
    DatasetError,
    atomic_path,
    json_ready,
    load_manifest,
    manifest_hash,
    read_json,
    write_json,
)
from herbid.errors import InvalidOption
from herbid.progress import progress_bar

SHARDS_JSON = "shards.json"
SHARD_INDEX = "index.parquet"
SHARD_PATTERN = "shard-%06d.tar"
DEFAULT_SHARD_SIZE = 1000
#: Stored copy → (manifest column, member extension in the tar).
COPIES: dict[str, tuple[str, str]] = {"small": ("image_path", "jpg"), "large": ("large_image_path", "large.jpg")}
#: Every member of a sample: the copies and the metadata.
MEMBERS = (*COPIES, "json")
#: The split values whose species make up the class list (``prepare_splits`` uses them).
CLASS_SPLITS = ("train", "val", "test")


def class_list(frame: pd.DataFrame) -> list[str]:
    """The sorted species of the manifest's split rows: the class order ``herbid train`` gives
    with the manifest's own splits (every row when nothing is split, e.g. folds only)."""
    split = text_column(frame, "split")
    rows = frame[split.isin(CLASS_SPLITS).to_numpy()] if split.isin(CLASS_SPLITS).any() else frame
    return sorted(set(text_column(rows, "scientificName").dropna().tolist()))


def _rows_to_shard(frame: pd.DataFrame, split: str | None) -> pd.DataFrame:
    rows = frame if split is None else frame[(text_column(frame, "split") == split).to_numpy()]
    if rows.empty:
        raise DatasetError(f"no manifest rows in split {split!r}; run `herbid dataset split` first")
    duplicated = rows["image_id"].duplicated()
    if duplicated.any():
        raise DatasetError(f"{int(duplicated.sum())} manifest rows repeat an image_id, e.g. "
                           f"{rows['image_id'][duplicated].iloc[0]}; rebuild the dataset")
    return rows.reset_index(drop=True)


def _sample(dataset_dir: Path, row: dict[str, Any], copies: tuple[str, ...], classes: dict[str, int]) -> dict:
    image_id = str(row["image_id"])
    name = row.get("scientificName")
    sample: dict[str, Any] = {"__key__": image_id}
    for copy in copies:
        column, extension = COPIES[copy]
        relative = row.get(column)
        if not isinstance(relative, str) or not relative:
            continue  # no large copy: readers fall back to the small one, as load_image does
        path = dataset_dir / relative
        try:
            sample[extension] = path.read_bytes()
        except OSError as error:
            raise DatasetError(f"{path}: cannot read the stored copy of {image_id} ({error.strerror})") from None
    meta = {"image_id": image_id, "label": name, "label_index": classes.get(name),
            "row": {key: json_ready(value) for key, value in row.items()}}
    sample["json"] = json.dumps(meta, ensure_ascii=False, default=str).encode("utf-8")
    return sample


def _index_tar(path: Path, shard: int) -> list[dict[str, Any]]:
    """One row per member of a finished tar: where its bytes are."""
    extensions = {extension: copy for copy, (_, extension) in COPIES.items()} | {"json": "json"}
    rows = []
    with tarfile.open(path) as tar:
        for member in tar:
            key, _, extension = member.name.partition(".")
            rows.append({"image_id": key, "member": extensions[extension], "shard": shard,
                         "offset": member.offset_data, "size": member.size})
    return rows


def write_shards(dataset_dir: str | Path, out: str | Path, *, shard_size: int = DEFAULT_SHARD_SIZE,
                 split: str | None = "train", copies: tuple[str, ...] = ("small", "large"),
                 progress: bool = True) -> dict[str, Any]:
    """Write the rows of ``split`` (every row with ``None``) as WebDataset shards of
    ``shard_size`` samples into ``out``; return what ``shards.json`` records."""
    if shard_size < 1:
        raise InvalidOption("--shard-size must be at least 1")
    unknown = sorted(set(copies) - set(COPIES))
    if unknown or not copies:
        raise InvalidOption(f"unknown stored copies {unknown}; choose from {sorted(COPIES)}")
    dataset_dir, out = Path(dataset_dir), Path(out)
    frame = load_manifest(dataset_dir)
    rows = _rows_to_shard(frame, split)
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"{out} is not empty; shard into a new folder")
    out.mkdir(parents=True, exist_ok=True)
    classes = class_list(frame)
    class_index = {name: i for i, name in enumerate(classes)}
    members: list[dict[str, Any]] = []
    written: list[str] = []

    def finished(name: str) -> None:
        written.append(Path(name).name)
        members.extend(_index_tar(Path(name), len(written) - 1))

    records = [dict(zip(rows.columns, values)) for values in rows.itertuples(index=False, name=None)]
    # maxsize unbounded: shard_size alone decides the cut, so counts are predictable
    with (progress_bar(f"shard {dataset_dir.name}", len(records), enabled=progress) as advance,
          wds.ShardWriter(str(out / SHARD_PATTERN), maxcount=shard_size, maxsize=float("inf"), post=finished,
                          verbose=0, mtime=0.0, encoder=False) as sink):
        for record in records:
            sink.write(_sample(dataset_dir, record, copies, class_index))
            advance()
    index = pd.DataFrame(members)
    counts = index[index["member"] == "json"].groupby("shard").size()
    with atomic_path(out / SHARD_INDEX) as tmp:
        index.to_parquet(tmp, index=False)
    info = {"format": 1, "split": split, "samples": len(records), "copies": list(copies),
            "shardlist": [{"url": name, "nsamples": int(counts.get(i, 0))} for i, name in enumerate(written)],
            "classes": classes, "source": {"dataset": str(dataset_dir.resolve()),
                                           "manifest_hash": manifest_hash(dataset_dir)},
            "herbid_version": __version__}
    write_json(out / SHARDS_JSON, info)
    return info


class ShardReader:
    """Random access to the members of a shard folder: one ``pread`` per member read.

    File descriptors are opened lazily and never pickled, so a reader can be handed to
    DataLoader workers (each opens its own).
    """

    def __init__(self, shards_dir: str | Path) -> None:
        self.shards_dir = Path(shards_dir)
        info_path = self.shards_dir / SHARDS_JSON
        if not info_path.is_file():
            raise DatasetError(f"{shards_dir}: no {SHARDS_JSON}; write shards with `herbid dataset shard`")
        self.info = read_json(info_path)
        self.urls = [entry["url"] for entry in self.info["shardlist"]]
        index = pd.read_parquet(self.shards_dir / SHARD_INDEX)
        self.image_ids: list[str] = index.loc[index["member"] == "json", "image_id"].tolist()
        self._position = {image_id: i for i, image_id in enumerate(self.image_ids)}
        n = len(self.image_ids)
        # member → (shard, offset, size) arrays by position; -1 where a sample lacks the member
        self.shard = np.full(n, -1, dtype=np.int32)
        self._where: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        rows = index["image_id"].map(self._position).to_numpy()
        for member in MEMBERS:
            mask = (index["member"] == member).to_numpy()
            shard, offset, size = (np.full(n, -1, dtype=np.int64) for _ in range(3))
            shard[rows[mask]] = index["shard"].to_numpy()[mask]
            offset[rows[mask]] = index["offset"].to_numpy()[mask]
            size[rows[mask]] = index["size"].to_numpy()[mask]
            self._where[member] = (shard, offset, size)
        self.shard[:] = self._where["json"][0]
        self._fds: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.image_ids)

    def positions(self, image_ids: list[str]) -> np.ndarray:
        """The sample position of each image id; a clear error for ids the shards lack."""
        missing = [i for i in image_ids if i not in self._position]
        if missing:
            raise DatasetError(f"{self.shards_dir}: {len(missing)} training sheets are not in the shards, e.g. "
                               f"{missing[0]}; re-run `herbid dataset shard` for this dataset and split")
        return np.asarray([self._position[i] for i in image_ids], dtype=np.int64)

    def has(self, position: int, member: str) -> bool:
        return bool(self._where[member][0][position] >= 0)

    def read(self, position: int, member: str) -> bytes:
        """The bytes of one member (``small``, ``large`` or ``json``) of the sample at ``position``."""
        shards, offsets, sizes = self._where[member]
        shard = int(shards[position])
        if shard < 0:
            raise DatasetError(f"{self.shards_dir}: sample {self.image_ids[position]} has no {member} member")
        fd = self._fds.get(shard)
        if fd is None:
            fd = self._fds[shard] = os.open(self.shards_dir / self.urls[shard], os.O_RDONLY)
        size = int(sizes[position])
        data = os.pread(fd, size, int(offsets[position]))
        if len(data) != size:
            raise DatasetError(f"{self.shards_dir / self.urls[shard]} is truncated; re-run `herbid dataset shard`")
        return data

    def check_source(self, dataset_dir: str | Path) -> None:
        """Refuse shards written from another manifest: a cleaned copy keeps its image ids
        but has other pixels, so ids alone would silently train on the wrong images."""
        written = self.info.get("source", {}).get("manifest_hash")
        if written != manifest_hash(dataset_dir):
            raise DatasetError(f"{self.shards_dir} was written from another manifest than {dataset_dir}'s; "
                               f"re-run `herbid dataset shard {dataset_dir} --out …`")

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fds": {}}

    def __del__(self) -> None:
        try:
            self.close()
        except (OSError, AttributeError):
            pass
