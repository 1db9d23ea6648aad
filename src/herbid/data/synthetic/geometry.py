"""Pixel geometry shared by the sheet drawing: boxes, rounding to pixels, rotation."""

from __future__ import annotations

import math

import numpy as np

#: A pixel box ``(x0, y0, x1, y1)``, x1/y1 exclusive, as :meth:`PIL.Image.Image.crop` takes.
Box = tuple[int, int, int, int]


def _px(value: float) -> int:
    return max(1, int(round(value)))


def _rotate(points: np.ndarray, degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    rotation = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return points @ rotation.T


def _mask_box(mask: np.ndarray) -> Box:
    """Bounding box of the True pixels (x1/y1 exclusive)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return (0, 0, 0, 0)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
