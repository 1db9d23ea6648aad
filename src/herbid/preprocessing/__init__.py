"""Sheet preprocessing: remove labels and other clutter, and score image quality.

See :mod:`herbid.preprocessing.cleaning` (segmentation, :func:`clean_sheet`) and
:mod:`herbid.preprocessing.quality` (:func:`sheet_quality`).
"""

from herbid.preprocessing.cleaning import (
    SEGMENTERS,
    ClassicalSegmenter,
    SheetSegmentation,
    SheetSegmenter,
    clean_sheet,
    get_segmenter,
)
from herbid.preprocessing.quality import sheet_quality

__all__ = [
    "SEGMENTERS",
    "ClassicalSegmenter",
    "SheetSegmentation",
    "SheetSegmenter",
    "clean_sheet",
    "get_segmenter",
    "sheet_quality",
]
