"""A cheap image-quality score for herbarium sheets, usable as a sample weight.

Digitised collections mix sharp modern scans with blurred, over-exposed or nearly empty
sheets (a label and a fragment). Down-weighting those during training is cheaper than
curating them by hand, so :func:`sheet_quality` turns three classical measurements into
one number in [0, 1]:

* **blur** — variance of the Laplacian of the grey image (high for crisp edges),
  squashed to [0, 1] by ``v / (v + BLUR_SCALE)``; 1 means sharp;
* **exposure** — mean brightness and the share of clipped (near black or near white)
  *plant* pixels: a burnt-out or drowned plant has lost its detail, while a scanner bed
  rendered pure white (or a dark table around a photographed sheet) has not lost any;
* **plant_fraction** — share of the sheet covered by the segmenter's plant mask; a sheet
  without plant teaches a classifier nothing about the species.

``quality = (blur * exposure * plant_score) ** (1/3)`` — a geometric mean, so any single
failure (blurred, burnt out, or empty) pulls the score down, where an arithmetic mean
would let a perfect exposure hide an empty sheet.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from herbid.cleaning.sheet import SheetSegmentation, get_segmenter

#: Laplacian variance at which ``blur`` is 0.5 (on the 512-pixel working copy).
BLUR_SCALE = 50.0
#: Grey levels at or below / at or above which a pixel counts as clipped.
DARK_CLIP, BRIGHT_CLIP = 5, 250
#: Mean brightness (0..1) of a well-exposed sheet: mostly paper, some plant and ink.
TARGET_BRIGHTNESS = 0.75
#: Plant coverage at and above which a sheet is considered fully informative.
FULL_PLANT_FRACTION = 0.05
WORK_SIZE = 512


def _grey(image: Image.Image) -> np.ndarray:
    """Grey float array at a fixed working size, so scores compare across resolutions."""
    grey = image.convert("L")
    scale = min(1.0, WORK_SIZE / max(grey.size))
    if scale < 1.0:
        grey = grey.resize((max(1, round(grey.width * scale)), max(1, round(grey.height * scale))), Image.Resampling.BOX)
    return np.asarray(grey, dtype=np.float32)


def blur_score(grey: np.ndarray) -> tuple[float, float]:
    """(Laplacian variance, sharpness in [0, 1]) of a grey array."""
    variance = float(ndimage.laplace(grey).var())
    return variance, variance / (variance + BLUR_SCALE)


def exposure_stats(grey: np.ndarray, plant_mask: np.ndarray | None = None) -> dict[str, float]:
    """Clipped-pixel shares, mean brightness and the combined exposure score in [0, 1].

    ``exposure = brightness_term * clipping_term`` where ``brightness_term`` falls
    linearly from 1 at :data:`TARGET_BRIGHTNESS` to 0 at a distance of 0.5, and
    ``clipping_term`` falls linearly from 1 (nothing clipped) to 0 (a quarter clipped).
    Clipping is measured on the pixels of ``plant_mask`` (same shape as ``grey``) when it
    marks any, else on the whole image: many good scans have a clipped white background.
    """
    region = grey[plant_mask] if plant_mask is not None and plant_mask.any() else grey
    dark = float((region <= DARK_CLIP).mean())
    bright = float((region >= BRIGHT_CLIP).mean())
    mean = float(grey.mean() / 255.0)
    brightness_term = float(np.clip(1.0 - abs(mean - TARGET_BRIGHTNESS) / 0.5, 0.0, 1.0))
    clipping_term = float(np.clip(1.0 - (dark + bright) / 0.25, 0.0, 1.0))
    return {
        "clipped_dark": dark,
        "clipped_bright": bright,
        "mean_brightness": mean,
        "exposure": brightness_term * clipping_term,
    }


def _mask_like(mask: np.ndarray, grey: np.ndarray) -> np.ndarray:
    """``mask`` resampled (nearest) to ``grey``'s shape."""
    if mask.shape == grey.shape:
        return mask
    image = Image.fromarray(mask.astype(np.uint8) * 255).resize((grey.shape[1], grey.shape[0]), Image.Resampling.NEAREST)
    return np.asarray(image) > 127


def sheet_quality(image: Image.Image, segmentation: SheetSegmentation | None = None) -> dict[str, float]:
    """Quality measurements of one sheet and the combined ``quality`` in [0, 1].

    Keys: ``blur`` (sharpness, 1 = sharp), ``laplacian_variance``, ``exposure``,
    ``clipped_dark``, ``clipped_bright``, ``mean_brightness``, ``plant_fraction``,
    ``quality``. Pass ``segmentation`` when it is already computed (cleaning needs it
    too); otherwise the classical segmenter runs.
    """
    grey = _grey(image)
    variance, blur = blur_score(grey)
    seg = segmentation if segmentation is not None else get_segmenter("classical").segment(image)
    plant_fraction = float(seg.plant_mask.mean()) if seg.plant_mask.size else 0.0
    exposure = exposure_stats(grey, _mask_like(seg.plant_mask, grey) if seg.plant_mask.size else None)
    plant_score = min(1.0, plant_fraction / FULL_PLANT_FRACTION)
    quality = float((blur * exposure["exposure"] * plant_score) ** (1.0 / 3.0))
    return {
        "blur": blur,
        "laplacian_variance": variance,
        **exposure,
        "plant_fraction": plant_fraction,
        "quality": quality,
    }
