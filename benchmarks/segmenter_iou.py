"""How well herbid's sheet segmenter finds the plant on real sheets: IoU with hand-made masks.

Reads the dataset authors' plant masks of viola-dev (``../shared/data/viola-dev-masks``,
``Vxx_YY_ZZZ_mask.jpg`` ↔ ``viola-dev/Vxx/Vxx_YY_ZZZ.jpg``) and prints, per sheet and on
average, the intersection over union, precision and recall of the segmenter's plant mask.

The masks (256×384) are not simply the sheets (750×1000 or 692×1000) resized: they were
drawn on a cropped frame that is not documented. So two IoUs are printed: the mask
stretched onto the sheet (what a user of the masks would do), and ``registered``, the
best IoU over a scale and a shift of the mask (three parameters fitted per sheet against
the segmenter's own mask: an upper bound on its agreement with the hand-made one).

    python benchmarks/segmenter_iou.py [--shared ../shared/data] [--segmenter classical]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
from PIL import Image

from herbid.cleaning.masks import MASK_THRESHOLD, MaskScore, mask_score, score_segmenter
from herbid.cleaning.sheet import get_segmenter

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def mask_pairs(shared: Path) -> list[tuple[Path, Path]]:
    """(sheet, mask) file pairs of the viola-dev masks."""
    pairs = []
    for mask in sorted((shared / "viola-dev-masks").glob("*_mask.jpg")):
        name = mask.name.removesuffix("_mask.jpg")
        pairs.append((shared / "viola-dev" / name.split("_")[0] / f"{name}.jpg", mask))
    return pairs


def score_all(shared: Path, segmenter: str = "classical") -> dict[str, MaskScore]:
    scores = {}
    for sheet, mask in mask_pairs(shared):
        with Image.open(sheet) as image, Image.open(mask) as truth:
            scores[sheet.stem] = score_segmenter(image, truth, segmenter)
    return scores


def registered_iou(predicted: np.ndarray, mask: Image.Image, scales: np.ndarray = np.arange(2.0, 3.0, 0.04)) -> float:
    """The best IoU of ``predicted`` with ``mask`` scaled by one of ``scales`` and shifted
    (the shift that overlaps most, by FFT cross-correlation)."""
    height, width = predicted.shape
    best = 0.0
    for scale in scales:
        size = (round(mask.width * scale), round(mask.height * scale))
        truth = np.asarray(mask.convert("L").resize(size, Image.Resampling.BILINEAR)) > MASK_THRESHOLD
        shape = (2 * max(height, size[1]), 2 * max(width, size[0]))
        a, b = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        a[:height, :width], b[:size[1], :size[0]] = predicted, truth
        corr = np.fft.irfft2(np.fft.rfft2(a) * np.conj(np.fft.rfft2(b)), s=shape)
        dy, dx = np.unravel_index(np.argmax(corr), shape)
        placed = np.roll(b, (dy, dx), axis=(0, 1))[:height, :width] > 0
        best = max(best, mask_score(predicted, placed).iou)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--segmenter", default="classical")
    args = parser.parse_args(argv)
    scores = score_all(args.shared, args.segmenter)
    registered = []
    for sheet, mask in mask_pairs(args.shared):
        with Image.open(sheet) as image, Image.open(mask) as truth:
            predicted = get_segmenter(args.segmenter).segment(image.convert("RGB")).plant_mask
            registered.append(registered_iou(predicted, truth))
    for (name, score), best in zip(scores.items(), registered):
        print(f"{name}: IoU {score.iou:.3f}  precision {score.precision:.3f}  recall {score.recall:.3f}  "
              f"registered IoU {best:.3f}")
    columns = {field: [getattr(s, field) for s in scores.values()] for field in ("iou", "precision", "recall")}
    for field, values in {**columns, "registered iou": registered}.items():
        print(f"mean {field}: {statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f} (n={len(values)}, "
              f"min {min(values):.3f})")


if __name__ == "__main__":
    main()
