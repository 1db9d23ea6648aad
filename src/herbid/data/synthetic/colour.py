"""RGB colours of the synthetic sheets: the colour type, clamping and random jitter."""

from __future__ import annotations

import numpy as np

RGB = tuple[int, int, int]


def _rgb(values: np.ndarray | tuple[float, float, float]) -> RGB:
    r, g, b = (int(np.clip(round(float(v)), 0, 255)) for v in values)
    return (r, g, b)


def _jitter_colour(colour: RGB | np.ndarray, rng: np.random.Generator, sd: float) -> RGB:
    return _rgb(np.asarray(colour, dtype=float) + rng.normal(0, sd, 3))
