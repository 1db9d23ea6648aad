"""Drawing the pressed plant: a species' leaves, stems, flowers and roots, grown as
strokes in plant coordinates and placed into the sheet's plant region."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import ImageDraw

from herbid.data.synthetic.catalogue import LeafShape, SyntheticSpecies
from herbid.data.synthetic.colour import RGB, _jitter_colour, _rgb
from herbid.data.synthetic.geometry import Box, _rotate

# ---- the plant: built as strokes in plant coordinates (stem from (0,0) up to (0,1))


@dataclass
class _Stroke:
    """One polygon or polyline of the plant, in plant coordinates (y up)."""

    points: np.ndarray
    fill: RGB
    kind: Literal["poly", "line"] = "poly"
    #: Line width in plant units (lines) — polygons are filled.
    width: float = 0.0
    outline: RGB | None = None


@dataclass
class _Anchor:
    """A point where tape would hold the plant down, and the direction of the organ there."""

    point: np.ndarray
    direction: np.ndarray


def _outline(t: np.ndarray, half_width: np.ndarray) -> np.ndarray:
    """Closed leaf outline from a half-width profile along the midrib (x = t)."""
    upper = np.stack([t, half_width], axis=1)
    lower = np.stack([t[::-1], -half_width[::-1]], axis=1)
    return np.concatenate([upper, lower[1:-1]])


def _profile(p: float, q: float, a: float, n: int = 22, teeth: int = 0) -> np.ndarray:
    """A leaf blade of length 1 whose half-width follows ``t**p (1-t)**q`` (max ``a``).

    ``p < q`` puts the widest point near the base (ovate), ``p > q`` near the tip
    (obovate); ``teeth`` adds a saw-toothed (serrate) margin.
    """
    t = np.linspace(0.0, 1.0, n if not teeth else teeth * 6)
    w = t**p * (1.0 - t) ** q
    w = a * w / w.max()
    if teeth:
        w = w * (0.85 + 0.3 * ((t * teeth) % 1.0))
    return _outline(t, w)


def _heart(half_width: float, n: int = 40) -> np.ndarray:
    """A heart-shaped (cordate) blade: notch at the petiole (0,0), rounded lobes reaching
    back past it, tip at (1,0). From the classic parametric heart curve."""
    theta = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    across = 16 * np.sin(theta) ** 3
    along = 13 * np.cos(theta) - 5 * np.cos(2 * theta) - 2 * np.cos(3 * theta) - np.cos(4 * theta)
    x = (5.0 - along) / 22.0  # notch (along = 5) → 0, tip (along = -17) → 1
    x = np.where(x < 0, x * 0.6, x)  # shorter basal lobes
    return np.stack([x, across / 16.0 * half_width], axis=1)


def _circle(cx: float, cy: float, r: float, n: int = 20) -> np.ndarray:
    angles = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)


def _leaflet(points: np.ndarray, length: float, degrees: float, at: tuple[float, float]) -> np.ndarray:
    """Place a unit-length blade: scale it, turn it and move its base to ``at``."""
    return _rotate(points * length, degrees) + np.asarray(at)


def _blade(shape: LeafShape, rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Polygons and rachis lines of one leaf of ``shape``, base at (0,0), tip near (1,0)."""
    j = float(rng.uniform(0.9, 1.1))  # per-leaf width jitter
    simple = {
        "ovate": (0.55, 1.0, 0.30), "lanceolate": (0.8, 1.4, 0.11), "obovate": (1.6, 0.6, 0.28),
        "linear": (0.12, 0.3, 0.035), "orbicular": (0.5, 0.5, 0.48),
    }
    if shape in simple:
        p, q, a = simple[shape]
        return [_profile(p, q, a * j)], []
    if shape == "serrate":
        return [_profile(1.0, 1.0, 0.19 * j, teeth=9)], []
    if shape == "deltoid":
        t = np.linspace(0.0, 1.0, 16)
        return [_outline(t, 0.48 * j * (1 - t) * np.minimum(1.0, t / 0.12))], []
    if shape == "cordate":
        return [_heart(0.36 * j)], []
    if shape == "sagittate":
        barb = np.array([[0.10, 0.03], [-0.30, 0.21 * j], [0.14, 0.12]])
        return [_profile(0.5, 1.3, 0.15 * j), barb, barb * [1, -1]], []
    if shape == "lobed":
        lobes = [_leaflet(_profile(0.6, 1.0, 0.2 * j), 0.8 if d == 0 else 0.62, d, (0.1, 0.0)) for d in (-55, 0, 55)]
        return [_circle(0.25, 0.0, 0.2), *lobes], []
    if shape == "palmate":
        n = int(rng.integers(5, 8))
        return [_leaflet(_profile(0.8, 1.2, 0.11 * j), 0.8, d, (0, 0)) for d in np.linspace(-75, 75, n)], []
    if shape == "trifoliate":
        leaf = _profile(0.8, 1.0, 0.26 * j)
        parts = [_leaflet(leaf, 0.62, 0, (0.16, 0.0)), _leaflet(leaf, 0.5, 62, (0.1, 0.0)), _leaflet(leaf, 0.5, -62, (0.1, 0.0))]
        return parts, [np.array([[0.0, 0.0], [0.16, 0.0]])]
    if shape == "pinnate":
        leaf, pairs = _profile(1.0, 1.0, 0.32 * j), int(rng.integers(4, 7))
        parts = [_leaflet(leaf, 0.22, 0, (0.98, 0.0))]
        for t in np.linspace(0.18, 0.9, pairs):
            parts += [_leaflet(leaf, 0.22, 58, (t, 0.0)), _leaflet(leaf, 0.22, -58, (t, 0.0))]
        return parts, [np.array([[0.0, 0.0], [1.0, 0.0]])]
    if shape == "pinnatifid":
        parts = [_profile(1.0, 0.8, 0.07 * j)]
        for t in np.linspace(0.15, 0.8, 5):
            tooth = np.array([[t, 0.0], [t + 0.13, 0.0], [t - 0.05, 0.24 * j * (1.1 - t)]])
            parts += [tooth, tooth * [1, -1]]
        return parts, []
    raise ValueError(f"unknown leaf shape {shape!r}")


class _PlantBuilder:
    """Collects strokes and tape anchors while a species' plant is grown."""

    def __init__(self, spec: SyntheticSpecies, rng: np.random.Generator) -> None:
        self.spec, self.rng = spec, rng
        self.strokes: list[_Stroke] = []
        #: Where tape goes first (across stems and culms) …
        self.anchors: list[_Anchor] = []
        #: … and then, when a sheet has more strips, across leaf blades.
        self.leaf_anchors: list[_Anchor] = []
        # drying darkens or pales a whole specimen; its hue stays the species' own
        self.leaf_colour = np.asarray(spec.colour, dtype=float) * rng.uniform(0.85, 1.15) + rng.normal(0, 3, 3)
        self.stem_colour = _jitter_colour((98, 82, 52), rng, 6)
        self.width_scale = float(rng.uniform(0.85, 1.15))

    def line(self, points: np.ndarray, width: float, colour: RGB | None = None) -> None:
        self.strokes.append(_Stroke(np.asarray(points, float), colour or self.stem_colour, "line", width))

    def leaf(self, base: np.ndarray, degrees: float, length: float, bend: float = 0.0) -> None:
        """One leaf (petiole + blade) from ``base`` pointing ``degrees`` anticlockwise of +x."""
        rng, spec = self.rng, self.spec
        colour = self.leaf_colour + rng.normal(0, 5, 3)
        if rng.random() < 0.12:  # an older, browner leaf
            colour = 0.6 * colour + 0.4 * np.array([128, 100, 62])
        fill, outline = _rgb(colour), _rgb(colour * 0.72)
        bend = bend or float(rng.normal(0, 0.08))
        petiole = spec.petiole * float(rng.uniform(0.8, 1.2))
        polygons, lines = _blade(spec.leaf, rng)

        def place(points: np.ndarray) -> np.ndarray:
            bent = points + np.stack([np.zeros(len(points)), bend * points[:, 0] ** 2], axis=1)
            return _rotate(bent * length, degrees) + base

        blade_start = np.array([petiole, 0.0])
        if petiole > 0:
            self.line(place(np.linspace([0.0, 0.0], blade_start, 4)), 0.012 * self.width_scale, outline)
        for points in lines:
            self.line(place(_densify(points) * (1 - petiole) + blade_start), 0.01 * self.width_scale, outline)
        for points in polygons:
            self.strokes.append(_Stroke(place(points * (1 - petiole) + blade_start), fill, outline=outline))
        middle = place(np.array([[petiole + (1 - petiole) * 0.3, 0.0], [petiole + (1 - petiole) * 0.35, 0.0]]))
        self.leaf_anchors.append(_Anchor(middle[0], middle[1] - middle[0]))
        if len(polygons) == 1 and spec.leaf != "linear":
            midrib = np.linspace([0.0, 0.0], [0.92, 0.0], 6) * (1 - petiole) + blade_start
            self.line(place(midrib), 0.006, outline)

    def stem(self, height: float) -> np.ndarray:
        """A gently curved stem from (0,0) to about (0, height); returns its points."""
        t = np.linspace(0.0, 1.0, 24)
        sway = float(self.rng.normal(0, 0.05)) * np.sin(math.pi * t) + float(self.rng.normal(0, 0.02)) * t
        points = np.stack([sway, t * height], axis=1)
        self.line(points, 0.014 * self.width_scale)
        return points

    def roots(self) -> None:
        for _ in range(int(self.rng.integers(3, 6))):
            angle = float(self.rng.uniform(-150, -30))
            steps = np.cumsum(_rotate(np.array([[0.03, 0.0]] * 4), angle) + self.rng.normal(0, 0.012, (4, 2)), axis=0)
            self.line(np.concatenate([[[0.0, 0.0]], steps]), 0.005, _jitter_colour((120, 98, 70), self.rng, 8))

    def flower(self, centre: np.ndarray, radius: float) -> None:
        colour = _jitter_colour(self.spec.flowers or (200, 168, 78), self.rng, 8)
        for k in range(5):
            angle = 2 * math.pi * k / 5 + float(self.rng.uniform(0, 0.5))
            petal = centre + radius * np.array([math.cos(angle), math.sin(angle)])
            self.strokes.append(_Stroke(_circle(*petal, radius * 0.75, 10), colour))
        self.strokes.append(_Stroke(_circle(*centre, radius * 0.5, 10), _rgb(np.array(colour) * 0.7)))


def _densify(points: np.ndarray, n: int = 8) -> np.ndarray:
    """Resample a 2-point segment into ``n`` points so that bending curves it."""
    return np.linspace(points[0], points[-1], n)


def _grow_stemmed(b: _PlantBuilder) -> None:
    """Alternate, opposite or whorled leaves on an upright stem."""
    spec, rng = b.spec, b.rng
    stem = b.stem(1.0)
    nodes = max(2, spec.count + int(rng.integers(-1, 2)))
    for i, t in enumerate(np.linspace(0.14, 0.9, nodes)):
        k = int(t * (len(stem) - 1))
        base, tangent = stem[k], stem[min(k + 1, len(stem) - 1)] - stem[max(k - 1, 0)]
        up = math.degrees(math.atan2(tangent[1], tangent[0]))
        length = spec.leaf_length * (1.0 - 0.35 * t) * float(rng.uniform(0.85, 1.15))
        if spec.arrangement == "alternate":
            offsets = [(1 if i % 2 else -1) * float(rng.uniform(40, 62))]
        elif spec.arrangement == "opposite":
            offsets = [sign * float(rng.uniform(40, 62)) for sign in (-1, 1)]
        else:  # a whorl pressed flat: a fan of leaves around the node
            spread = np.linspace(-115, 115, 4 + int(rng.integers(0, 2)))
            offsets = list(spread + rng.normal(0, 6, len(spread)))
        for offset in offsets:
            b.leaf(base, up + offset, length)
    if spec.flowers:
        for point in (stem[-1], stem[-3] + [0.04, 0.0], stem[-3] - [0.04, 0.0]):
            b.flower(point, 0.022)
    b.roots()
    for t in (0.3, 0.55, 0.75, 0.45):
        k = int(t * (len(stem) - 1))
        b.anchors.append(_Anchor(stem[k], stem[k + 1] - stem[k - 1]))


def _grow_rosette(b: _PlantBuilder) -> None:
    """Leaves radiating from a basal point, with a flowering scape when the species has one."""
    spec, rng = b.spec, b.rng
    if spec.flowers:
        scape = b.stem(float(rng.uniform(0.7, 0.9)))
        b.flower(scape[-1], 0.035)
        b.anchors.append(_Anchor(scape[12], scape[13] - scape[11]))
    n = max(4, spec.count + int(rng.integers(-1, 2)))
    start = float(rng.uniform(0, 360))
    for k in range(n):
        angle = start + 360.0 * k / n + float(rng.normal(0, 8))
        length = spec.leaf_length * float(rng.uniform(0.8, 1.15))
        b.leaf(np.zeros(2), angle, length)
    b.roots()


def _grow_tuft(b: _PlantBuilder) -> None:
    """A grass-like tuft: long curved basal leaves and a few culms with spikelets."""
    spec, rng = b.spec, b.rng
    straw = _jitter_colour((170, 150, 92), rng, 8)
    for _ in range(int(rng.integers(1, 4))):
        culm = b.stem(float(rng.uniform(0.85, 1.0)))
        for k, t in enumerate(np.linspace(0.62, 0.96, 6)):
            side = 1 if k % 2 else -1
            spikelet = _leaflet(_profile(1, 1, 0.28), 0.07, 90 + side * 28, culm[int(t * (len(culm) - 1))])
            b.strokes.append(_Stroke(spikelet, straw, outline=_rgb(np.array(straw) * 0.75)))
        k = int(rng.integers(6, 14))
        b.anchors.append(_Anchor(culm[k], culm[k + 1] - culm[k - 1]))
    n = max(4, spec.count + int(rng.integers(-2, 3)))
    for _ in range(n):
        angle = 90 + float(rng.uniform(-38, 38))
        bend = float(rng.uniform(0.15, 0.45)) * (1 if angle < 90 else -1)
        b.leaf(np.zeros(2), angle, spec.leaf_length * float(rng.uniform(0.6, 1.05)), bend)
    b.roots()


def _grow(spec: SyntheticSpecies, rng: np.random.Generator) -> _PlantBuilder:
    builder = _PlantBuilder(spec, rng)
    if spec.arrangement == "rosette":
        _grow_rosette(builder)
    elif spec.arrangement == "tuft":
        _grow_tuft(builder)
    else:
        _grow_stemmed(builder)
    order = rng.permutation(len(builder.leaf_anchors))
    builder.anchors += [builder.leaf_anchors[i] for i in order]
    return builder


class _Placement:
    """Plant coordinates (y up) → sheet pixels: rotate, flip, scale to fit, translate."""

    def __init__(self, strokes: list[_Stroke], region: Box, rng: np.random.Generator) -> None:
        self.degrees = float(rng.uniform(-12, 12))
        lo, hi = self._extent(strokes)
        rx0, ry0, rx1, ry1 = region
        fit = min((rx1 - rx0) / (hi[0] - lo[0]), (ry1 - ry0) / (hi[1] - lo[1]))
        self.scale = fit * float(rng.uniform(0.72, 0.97))
        room = np.array([rx1 - rx0, ry1 - ry0]) - (hi - lo) * self.scale
        self.offset = np.array([rx0, ry0]) + room * rng.uniform(0.0, 1.0, 2) - lo * self.scale

    def _turn(self, points: np.ndarray) -> np.ndarray:
        return _rotate(points, self.degrees) * [1.0, -1.0]

    def _extent(self, strokes: list[_Stroke]) -> tuple[np.ndarray, np.ndarray]:
        lows, highs = [], []
        for stroke in strokes:
            turned = self._turn(stroke.points)
            lows.append(turned.min(axis=0) - stroke.width)
            highs.append(turned.max(axis=0) + stroke.width)
        return np.min(lows, axis=0), np.max(highs, axis=0)

    def __call__(self, points: np.ndarray) -> list[tuple[float, float]]:
        pixels = self._turn(points) * self.scale + self.offset
        return [tuple(p) for p in pixels.tolist()]


def _draw_plant(
    spec: SyntheticSpecies,
    draw: ImageDraw.ImageDraw,
    mask: ImageDraw.ImageDraw,
    region: Box,
    rng: np.random.Generator,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Draw the plant inside ``region`` on the sheet and on the mask; return tape anchors
    as (pixel point, unit pixel direction) pairs."""
    builder = _grow(spec, rng)
    place = _Placement(builder.strokes, region, rng)
    for stroke in builder.strokes:
        points = place(stroke.points)
        if stroke.kind == "line":
            width = max(1, round(stroke.width * place.scale))
            draw.line(points, fill=stroke.fill, width=width, joint="curve")
            mask.line(points, fill=255, width=width, joint="curve")
        else:
            draw.polygon(points, fill=stroke.fill, outline=stroke.outline)
            mask.polygon(points, fill=255, outline=255)
    anchors = []
    for anchor in builder.anchors:
        a, b = (np.array(p) for p in place(np.stack([anchor.point, anchor.point + anchor.direction * 0.01])))
        direction = (b - a) / max(float(np.linalg.norm(b - a)), 1e-9)
        anchors.append((a, direction))
    return anchors
