"""Preprocess a whole dataset folder: a cleaned copy, and quality scores in the manifest.

``clean_dataset`` writes a new dataset folder whose images are the cleaned sheets
(labels, barcodes and colour charts painted over, or the sheet cropped to the plant),
stored exactly as a build stores images (≤1024 px copy + 256×256 copy, same JPEG
settings); mode ``"none"`` copies the images byte for byte and only adds the scores.
Every other manifest column is kept, including ``sha256``/``phash`` of the *original*
sheet and the split/fold columns, so splits and leak audits still speak about the original
specimens and a model trained on the cleaned copy is comparable row by row. The cleaned
pixels get their own ``cleaned_sha256`` column, which the manifest hash includes, so a
cleaned copy never shares cached experiment stages or provenance hashes with its original.

The same pass adds the quality columns of :func:`sheet_quality` (``quality``, ``blur``,
``exposure``, ``plant_fraction``). It is resumable: an image already written is not
cleaned again (only segmented and scored).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from herbid.cleaning.quality import sheet_quality
from herbid.cleaning.sheet import CleanMode, clean_sheet, get_segmenter
from herbid.data.dataset_folder import CLEANED_SHA256, DatasetError, load_manifest, save_manifest, write_json
from herbid.data.imaging import encode_jpeg, open_image, resize_copies
from herbid.engine import open_engine
from herbid.errors import InvalidOption

#: Manifest columns written by the quality pass.
QUALITY_COLUMNS = ("quality", "blur", "exposure", "plant_fraction")
CLEAN_REPORT = "clean.json"


@dataclass
class CleanResult:
    out: Path
    images: int
    #: Sheets where no plant was found (cleaning fell back to masking only).
    no_plant: int
    boxes_removed: int


def _source_image(dataset_dir: Path, row: pd.Series) -> Path:
    large = row.get("large_image_path")
    return dataset_dir / (large if isinstance(large, str) and large else row["image_path"])


def _clean_one(task: tuple[str, str, str, str, str, str, float | None]) -> dict[str, Any]:
    """Clean one sheet (a worker process): segment once, clean, score, store both copies."""
    source, small_source, out_dir, image_id, mode, segmenter, aspect = task
    out = Path(out_dir)
    large_rel = f"images/1024/{image_id[:2]}/{image_id}.jpg"
    small_rel = f"images/256/{image_id[:2]}/{image_id}.jpg"
    with open_image(source) as opened:  # herbid's pixel limit, not Pillow's default
        rgb = opened.convert("RGB")
    segmentation = get_segmenter(segmenter).segment(rgb)
    quality = sheet_quality(rgb, segmentation)
    record = {"image_path": small_rel, "large_image_path": large_rel,
              "no_plant": segmentation.plant_box is None, "boxes": len(segmentation.non_plant_boxes),
              **{k: quality[k] for k in QUALITY_COLUMNS}}
    if (out / large_rel).is_file() and (out / small_rel).is_file():
        if mode != "none":
            record[CLEANED_SHA256] = hashlib.sha256((out / large_rel).read_bytes()).hexdigest()
        return record
    if mode == "none":  # scores only: the very same files
        files = [(large_rel, Path(source).read_bytes()), (small_rel, Path(small_source).read_bytes())]
    else:
        cleaned = clean_sheet(rgb, mode, aspect=aspect, segmentation=segmentation)
        files = [(rel, encode_jpeg(copy)) for rel, copy in zip((large_rel, small_rel), resize_copies(cleaned))]
        record[CLEANED_SHA256] = hashlib.sha256(files[0][1]).hexdigest()
    for rel, data in files:
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)  # the final name appears only once the file is whole
    return record


def clean_dataset(dataset_dir: str | Path, out: str | Path, *, mode: CleanMode = "mask",
                  segmenter: str = "classical", aspect: float | None = None, workers: int = 1,
                  progress: bool = True, engine: str = "local", address: str | None = None) -> CleanResult:
    """Write the cleaned copy of ``dataset_dir`` to ``out`` (see the module docstring).

    ``aspect`` (crop mode): pad every plant crop to this height / width (see ``clean_sheet``).
    ``engine``/``address``: where the sheets are cleaned (:func:`herbid.engine.open_engine`);
    on a Ray cluster both folders must be shared storage.
    """
    if mode not in ("mask", "crop", "none"):
        raise InvalidOption(f"clean mode {mode!r}: expected 'mask', 'crop' or 'none'")
    dataset_dir, out = Path(dataset_dir), Path(out)
    if out.resolve() == dataset_dir.resolve():
        raise DatasetError("the cleaned copy needs its own folder (--out), the original is kept")
    frame = load_manifest(dataset_dir)
    get_segmenter(segmenter)  # an unknown name fails before any work
    tasks = [(str(_source_image(dataset_dir, row)), str(dataset_dir / row["image_path"]), str(out),
              str(row["image_id"]), mode, segmenter, aspect)
             for _, row in frame.iterrows()]
    with open_engine(engine, workers=workers, address=address) as running:
        records = list(running.map(_clean_one, tasks, desc=f"cleaning ({mode})", progress=progress))
    cleaned = frame.copy()
    for column in ("image_path", "large_image_path", *QUALITY_COLUMNS):
        cleaned[column] = [r[column] for r in records]
    if mode != "none":  # other pixels than the original: a manifest hash of their own
        cleaned[CLEANED_SHA256] = [r[CLEANED_SHA256] for r in records]
    save_manifest(out, cleaned)
    counts = Counter(r["no_plant"] for r in records)
    result = CleanResult(out, len(records), counts[True], sum(r["boxes"] for r in records))
    write_json(out / CLEAN_REPORT, {"source": str(dataset_dir.resolve()), "mode": mode, "segmenter": segmenter,
                                    "aspect": aspect,
                                    "images": result.images, "no_plant": result.no_plant,
                                    "boxes_removed": result.boxes_removed})
    return result
