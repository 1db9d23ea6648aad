"""How well a segmenter finds the plant: intersection over union with ground-truth masks.

Mitigations of the herbarium shortcut that paint around the plant (background swaps,
masked training) are only as good as the plant mask, so the segmenter is measured on
real hand-made masks before anything relies on it (``benchmarks/segmenter_iou.py`` on the
viola-dev masks in ``../shared/data/viola-dev-masks``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from herbid.cleaning.sheet import SheetSegmenter, get_segmenter

#: Ground-truth masks are JPEGs (white = plant): anything brighter than this is plant.
MASK_THRESHOLD = 128


@dataclass(frozen=True)
class MaskScore:
    """One sheet: IoU, precision (share of the predicted plant that is plant) and recall."""

    iou: float
    precision: float
    recall: float


def truth_mask(mask: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """A ground-truth mask image as H×W bool at ``size`` (width, height) of the sheet."""
    grey = mask.convert("L").resize(size, Image.Resampling.BILINEAR)
    return np.asarray(grey) > MASK_THRESHOLD


def mask_score(predicted: np.ndarray, truth: np.ndarray) -> MaskScore:
    """IoU, precision and recall of two H×W bool masks (1.0 where both are empty)."""
    both = np.logical_and(predicted, truth).sum()
    union = np.logical_or(predicted, truth).sum()
    found, real = predicted.sum(), truth.sum()
    return MaskScore(iou=float(both / union) if union else 1.0,
                     precision=float(both / found) if found else float(not real),
                     recall=float(both / real) if real else 1.0)


def score_segmenter(sheet: Image.Image, mask: Image.Image, segmenter: str | SheetSegmenter = "classical") -> MaskScore:
    """Segment ``sheet`` and score its plant mask against the hand-made ``mask``."""
    rgb = sheet.convert("RGB")
    predicted = get_segmenter(segmenter).segment(rgb).plant_mask
    return mask_score(predicted, truth_mask(mask, rgb.size))
