"""Sheet cleaning (``herbid dataset clean``): paint over labels and other clutter, crop to the
plant, and score image quality. (Not the model's input ``Preprocessing``, which is
resize / crop / normalise, in :mod:`herbid.models.base`.)

See :mod:`herbid.cleaning.sheet` (segmentation, :func:`clean_sheet`) and
:mod:`herbid.cleaning.quality` (:func:`sheet_quality`).
"""

from herbid.cleaning.quality import sheet_quality
from herbid.cleaning.sheet import (
    SEGMENTERS,
    ClassicalSegmenter,
    SheetSegmentation,
    SheetSegmenter,
    clean_sheet,
    get_segmenter,
)

__all__ = [
    "SEGMENTERS",
    "ClassicalSegmenter",
    "SheetSegmentation",
    "SheetSegmenter",
    "clean_sheet",
    "get_segmenter",
    "sheet_quality",
]
