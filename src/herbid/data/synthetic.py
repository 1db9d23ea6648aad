"""Small synthetic herbarium sheets, so every stage can be tested without real data.

Real herbarium images are large, licensed and slow to fetch; the pipeline's tests need
something that *behaves* like them instead: a cream paper sheet, one pressed plant whose
leaf shape depends on the species (so a classifier can learn it), and the non-plant
clutter that real sheets carry (label, barcode, colour bar, ruler, stamp, tape), with the
ground truth of where each of them is (:class:`SheetLayout`) so that sheet-cleaning code
can be checked against it.

Nothing here is real: the binomials in :data:`SPECIES_NAMES` are invented, institution
codes start with ``SYN-`` and every occurrenceID says ``synthetic``.

Determinism matters more than beauty: a sheet is a pure function of its species and the
random generator it is given, and a collection is a pure function of its arguments, down
to the bytes of its JPEG files.
"""

from __future__ import annotations

import csv
import math
import operator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from herbid.errors import InvalidOption

#: Marker used in identifiers and labels of everything this module makes.
SYNTHETIC_LABEL = "synthetic"

#: A pixel box ``(x0, y0, x1, y1)``, x1/y1 exclusive, as :meth:`PIL.Image.Image.crop` takes.
Box = tuple[int, int, int, int]
RGB = tuple[int, int, int]
_T = TypeVar("_T")

LeafShape = Literal[
    "ovate", "lanceolate", "serrate", "obovate", "linear", "orbicular", "deltoid",
    "cordate", "sagittate", "lobed", "palmate", "trifoliate", "pinnate", "pinnatifid",
]
Arrangement = Literal["alternate", "opposite", "whorled", "rosette", "tuft"]
LAYOUTS = ("csv", "folders", "filenames")
#: Darwin Core columns of ``occurrences.csv`` (``layout="csv"``), in file order.
CSV_COLUMNS: tuple[str, ...] = (
    "occurrenceID",
    "catalogNumber",
    "institutionCode",
    "scientificName",
    "genus",
    "family",
    "recordedBy",
    "recordNumber",
    "eventDate",
    "country",
    "associatedMedia",
)
INSTITUTIONS: tuple[str, ...] = ("SYN-A", "SYN-B", "SYN-C")
COUNTRIES: tuple[str, ...] = ("Costa Rica", "France", "Canada", "Brazil", "Japan", "Kenya")


# --------------------------------------------------------------------------- species


@dataclass(frozen=True)
class SyntheticSpecies:
    """How one invented species looks when pressed.

    Species differ in leaf *shape* first, then arrangement, leaf count and colour, so a
    classifier has a real (if easy) visual signal to learn.
    """

    genus: str
    epithet: str
    family: str
    authorship: str
    leaf: LeafShape
    arrangement: Arrangement
    #: Nodes on the stem (alternate/opposite/whorled) or leaves (rosette/tuft).
    count: int
    #: Leaf length as a fraction of the plant's height.
    leaf_length: float
    #: Petiole length as a fraction of the leaf length.
    petiole: float
    colour: RGB
    flowers: RGB | None = None

    @property
    def name(self) -> str:
        """The canonical binomial (``Genus epithet``)."""
        return f"{self.genus} {self.epithet}"

    @property
    def name_with_authorship(self) -> str:
        """The name as a label would write it, so that name normalisation has work to do."""
        return f"{self.name} {self.authorship}"

    @property
    def file_stem(self) -> str:
        """``Genus_epithet``, the folder/file-name form of the name."""
        return f"{self.genus}_{self.epithet}"


_OLIVE, _DARK, _YELLOW, _BLUE, _BROWN, _GREY = (
    (96, 112, 56), (58, 84, 46), (128, 134, 62), (66, 98, 84), (112, 96, 56), (104, 116, 92),
)
_YELLOW_FLOWER, _PURPLE_FLOWER, _WHITE_FLOWER = (200, 168, 78), (118, 72, 108), (214, 204, 170)

#: The invented species. The first entries span several genera and families, so that
#: even a small collection (``n_species=4``) has genus and family structure.
SPECIES: tuple[SyntheticSpecies, ...] = (
    SyntheticSpecies("Synthetica", "ovata", "Synthaceae", "Smith", "ovate", "alternate", 6, 0.30, 0.15, _OLIVE),
    SyntheticSpecies("Synthetica", "lanceolata", "Synthaceae", "(Doe) Roe", "lanceolate", "opposite", 5, 0.32, 0.05, _DARK),
    SyntheticSpecies("Fictaria", "lobata", "Synthaceae", "Poe & Loe", "lobed", "alternate", 4, 0.34, 0.45, _YELLOW),
    SyntheticSpecies("Placeholderia", "graminea", "Imaginaceae", "Fict.", "linear", "tuft", 9, 0.75, 0.0, _YELLOW),
    SyntheticSpecies("Mockia", "orbicularis", "Imaginaceae", "A.B.Author", "orbicular", "opposite", 7, 0.13, 0.12, _GREY, _YELLOW_FLOWER),
    SyntheticSpecies("Pseudoflora", "pinnata", "Artefactaceae", "Synth. ex Mock", "pinnate", "alternate", 4, 0.42, 0.12, _BLUE),
    SyntheticSpecies("Synthetica", "cordata", "Synthaceae", "Smith", "cordate", "alternate", 4, 0.30, 0.50, _DARK),
    SyntheticSpecies("Fictaria", "trifoliata", "Synthaceae", "(Roe) Doe", "trifoliate", "alternate", 5, 0.28, 0.35, _BROWN, _PURPLE_FLOWER),
    SyntheticSpecies("Placeholderia", "linearis", "Imaginaceae", "Fict.", "linear", "alternate", 14, 0.20, 0.0, _OLIVE),
    SyntheticSpecies("Mockia", "obovata", "Imaginaceae", "Poe", "obovate", "rosette", 8, 0.42, 0.10, _BLUE, _WHITE_FLOWER),
    SyntheticSpecies("Pseudoflora", "sagittata", "Artefactaceae", "Loe", "sagittate", "alternate", 4, 0.30, 0.40, _GREY),
    SyntheticSpecies("Simulanthus", "pinnatifidus", "Artefactaceae", "Smith & Doe", "pinnatifid", "rosette", 7, 0.48, 0.05, _OLIVE, _YELLOW_FLOWER),
    SyntheticSpecies("Synthetica", "serrata", "Synthaceae", "Roe", "serrate", "opposite", 4, 0.27, 0.10, _BLUE),
    SyntheticSpecies("Mockia", "deltoidea", "Imaginaceae", "(Smith) Poe", "deltoid", "alternate", 6, 0.22, 0.30, _DARK),
    SyntheticSpecies("Simulanthus", "verticillatus", "Artefactaceae", "Doe", "lanceolate", "whorled", 3, 0.24, 0.0, _BROWN),
    SyntheticSpecies("Fictaria", "palmata", "Synthaceae", "Mock", "palmate", "alternate", 3, 0.36, 0.55, _GREY),
)

#: Canonical binomials of :data:`SPECIES`, in species-index order.
SPECIES_NAMES: tuple[str, ...] = tuple(s.name for s in SPECIES)


def species_index(species: int) -> int:
    """Validate a species index (numpy integers welcome) against :data:`SPECIES`."""
    index = operator.index(species)
    if not 0 <= index < len(SPECIES):
        raise ValueError(f"species index {index} out of range 0..{len(SPECIES) - 1}")
    return index


# --------------------------------------------------------------------------- style & layout


LabelCorner = Literal["bottom-right", "bottom-left"]
BarcodePlace = Literal["top-right", "top-left", "above-label"]
ColourBarPlace = Literal["top", "bottom"]


@dataclass(frozen=True)
class SheetStyle:
    """Which non-plant elements a sheet carries and where, plus its paper.

    :meth:`sample` draws the mix real collections show (label bottom-right most of the
    time, ruler and stamp on some sheets); tests that need a particular case build one
    directly, e.g. ``SheetStyle(stamp=True, tape=3)`` or :meth:`plant_only`.
    """

    paper: RGB = (236, 231, 214)
    #: Standard deviation of per-pixel noise (paper grain, sensor noise).
    texture: float = 2.5
    #: Amplitude of the slow brightness variation (uneven lighting, ageing).
    shading: float = 4.0
    label: LabelCorner | None = "bottom-right"
    barcode: BarcodePlace | None = "top-right"
    colour_bar: ColourBarPlace | None = "bottom"
    ruler: bool = True
    stamp: bool = False
    #: Number of mounting-tape strips over the plant.
    tape: int = 2

    def __post_init__(self) -> None:
        if self.label not in (None, "bottom-right", "bottom-left"):
            raise ValueError(f"label corner {self.label!r}")
        if self.barcode not in (None, "top-right", "top-left", "above-label"):
            raise ValueError(f"barcode place {self.barcode!r}")
        if self.colour_bar not in (None, "top", "bottom"):
            raise ValueError(f"colour bar place {self.colour_bar!r}")
        if self.tape < 0:
            raise ValueError("tape must be >= 0")

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "SheetStyle":
        """A random style with roughly the frequencies seen on digitised sheets."""
        papers = ((238, 233, 218), (232, 226, 205), (242, 240, 232), (228, 221, 199))
        # brightness varies more than hue: paper yellows, it does not turn pink
        base = np.array(papers[rng.integers(len(papers))], dtype=float) + rng.normal(0, 4) + rng.normal(0, 1.2, 3)
        label = _choice(rng, ("bottom-right", "bottom-left", None), (0.85, 0.1, 0.05))
        return cls(
            paper=_rgb(base),
            texture=float(rng.uniform(1.5, 4.0)),
            shading=float(rng.uniform(2.0, 8.0)),
            label=label,
            barcode=_choice(rng, ("top-right", "top-left", "above-label", None), (0.4, 0.15, 0.35, 0.1)),
            colour_bar=_choice(rng, ("bottom", "top", None), (0.45, 0.35, 0.2)),
            ruler=bool(rng.random() < 0.5),
            stamp=bool(rng.random() < 0.4),
            tape=int(rng.integers(0, 4)),
        )

    @classmethod
    def plant_only(cls, paper: RGB = (236, 231, 214)) -> "SheetStyle":
        """Paper and plant, nothing else: the target a perfect sheet cleaner aims for."""
        return cls(paper=paper, label=None, barcode=None, colour_bar=None, ruler=False, stamp=False, tape=0)


@dataclass(eq=False)
class SheetLayout:
    """Ground truth of one rendered sheet.

    Boxes are ``(x0, y0, x1, y1)`` pixels, x1/y1 exclusive; ``None`` means the sheet has
    no such element. ``plant_mask`` (H×W bool) marks the *visible* plant pixels: pixels
    under tape are not plant, so "mask the tape, keep the plant" is consistent. Plant and
    the other elements never overlap; ``plant_box`` is the bounding box of the mask.
    """

    size: tuple[int, int]
    species: int
    plant_box: Box
    plant_mask: np.ndarray
    label_box: Box | None = None
    barcode_box: Box | None = None
    colour_bar_box: Box | None = None
    ruler_box: Box | None = None
    stamp_box: Box | None = None
    tape_boxes: tuple[Box, ...] = ()

    def element_boxes(self) -> dict[str, Box]:
        """Every non-plant element present, by kind (``tape_0``, ``tape_1`` … for tape)."""
        named = {
            "label": self.label_box,
            "barcode": self.barcode_box,
            "colour_bar": self.colour_bar_box,
            "ruler": self.ruler_box,
            "stamp": self.stamp_box,
        }
        boxes = {kind: box for kind, box in named.items() if box is not None}
        boxes.update({f"tape_{i}": box for i, box in enumerate(self.tape_boxes)})
        return boxes

    def element_mask(self) -> np.ndarray:
        """H×W bool: True inside any non-plant element's box."""
        width, height = self.size
        mask = np.zeros((height, width), dtype=bool)
        for x0, y0, x1, y1 in self.element_boxes().values():
            mask[y0:y1, x0:x1] = True
        return mask


# --------------------------------------------------------------------------- rendering


def render_sheet(
    species: int,
    rng: np.random.Generator,
    *,
    size: tuple[int, int] = (400, 600),
    style: SheetStyle | None = None,
) -> tuple[Image.Image, SheetLayout]:
    """Draw one synthetic herbarium sheet of ``species`` (an index into :data:`SPECIES`).

    ``size`` is ``(width, height)``. Without a ``style`` one is drawn from ``rng``
    (:meth:`SheetStyle.sample`). The result depends only on the arguments and the state of
    ``rng``, so the same seed gives the same pixels.
    """
    index = species_index(species)
    width, height = size
    if width < 32 or height < 32:
        raise InvalidOption(f"sheet size {size} too small (min 32×32)")
    style = style if style is not None else SheetStyle.sample(rng)
    image = Image.new("RGB", size, style.paper)
    draw = ImageDraw.Draw(image)
    boxes = _place_elements(style, width, height, rng)
    region = _plant_region(boxes, width, height)
    plant_mask_img = Image.new("L", size, 0)
    tape_anchors = _draw_plant(SPECIES[index], draw, ImageDraw.Draw(plant_mask_img), region, rng)
    _draw_elements(draw, boxes, rng)
    tape_boxes = _draw_tape(image, plant_mask_img, tape_anchors[: style.tape], rng)
    image = _finish_paper(image, style, rng)
    mask = np.asarray(plant_mask_img) > 0
    layout = SheetLayout(
        size=(width, height),
        species=index,
        plant_box=_mask_box(mask),
        plant_mask=mask,
        label_box=boxes.get("label"),
        barcode_box=boxes.get("barcode"),
        colour_bar_box=boxes.get("colour_bar"),
        ruler_box=boxes.get("ruler"),
        stamp_box=boxes.get("stamp"),
        tape_boxes=tuple(tape_boxes),
    )
    return image, layout


# ---- element placement: each corner holds a stack of elements growing from the edge


_CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


def _element_sizes(style: SheetStyle, width: int, height: int, rng: np.random.Generator) -> dict[str, tuple[int, int]]:
    """Pixel sizes of the elements the style asks for, jittered like real sheets."""
    sizes: dict[str, tuple[int, int]] = {}
    if style.label:
        sizes["label"] = (_px(width * rng.uniform(0.40, 0.46)), _px(height * rng.uniform(0.12, 0.16)))
    if style.barcode:
        sizes["barcode"] = (_px(width * rng.uniform(0.22, 0.28)), _px(height * rng.uniform(0.045, 0.06)))
    if style.colour_bar:
        sizes["colour_bar"] = (_px(width * rng.uniform(0.36, 0.44)), _px(height * rng.uniform(0.03, 0.05)))
    if style.ruler:
        sizes["ruler"] = (_px(width * rng.uniform(0.32, 0.42)), _px(height * rng.uniform(0.018, 0.026)))
    if style.stamp:
        diameter = _px(min(width, height) * rng.uniform(0.10, 0.14))
        sizes["stamp"] = (diameter, diameter)
    return sizes


def _assign_corners(style: SheetStyle, rng: np.random.Generator) -> dict[str, list[str]]:
    """Which corner stacks each element, in stacking order (edge first)."""
    stacks: dict[str, list[str]] = {corner: [] for corner in _CORNERS}
    label_corner = style.label or "bottom-right"
    other_bottom = "bottom-left" if label_corner == "bottom-right" else "bottom-right"
    if style.label:
        stacks[label_corner].append("label")
    if style.barcode == "above-label":
        stacks[label_corner].append("barcode")
    elif style.barcode:
        stacks[style.barcode].append("barcode")
    bar_corner = other_bottom
    if style.colour_bar == "top":
        bar_corner = "top-left" if style.barcode != "top-left" else "top-right"
    if style.colour_bar:
        stacks[bar_corner].append("colour_bar")
    if style.ruler:
        stacks[bar_corner if style.colour_bar else other_bottom].append("ruler")
    if style.stamp:
        emptiest = sorted(_CORNERS, key=lambda c: (len(stacks[c]), c))[:2]
        stacks[emptiest[rng.integers(2)]].append("stamp")
    return stacks


def _place_elements(style: SheetStyle, width: int, height: int, rng: np.random.Generator) -> dict[str, Box]:
    """Boxes of every non-plant element, stacked in the sheet's corners without overlap."""
    sizes = _element_sizes(style, width, height, rng)
    margin_x, margin_y, gap = _px(width * 0.03), _px(height * 0.02), _px(height * 0.012)
    half = width // 2
    boxes: dict[str, Box] = {}
    for corner, kinds in _assign_corners(style, rng).items():
        top = corner.startswith("top")
        cursor = margin_y if top else height - margin_y
        for kind in kinds:
            w, h = sizes[kind]
            w = min(w, half - margin_x - 1)
            slack = max(0, half - margin_x - w - 1)
            offset = margin_x + int(rng.integers(0, slack // 3 + 1))
            x0 = offset if corner.endswith("left") else width - offset - w
            y0 = cursor if top else cursor - h
            boxes[kind] = (x0, y0, x0 + w, y0 + h)
            cursor = y0 + h + gap if top else y0 - gap
    return boxes


def _plant_region(boxes: dict[str, Box], width: int, height: int) -> Box:
    """The band between the top and bottom element stacks, where the plant goes."""
    margin_x, margin_y, gap = _px(width * 0.04), _px(height * 0.02), _px(height * 0.02)
    top = max([b[3] + gap for b in boxes.values() if b[1] < height / 2] + [margin_y])
    bottom = min([b[1] - gap for b in boxes.values() if b[1] >= height / 2] + [height - margin_y])
    if bottom - top < height * 0.2:
        raise ValueError(f"sheet {width}×{height} leaves no room for the plant")
    return (margin_x, top, width - margin_x, bottom)


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


def _rotate(points: np.ndarray, degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    rotation = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return points @ rotation.T


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


def _jitter_colour(colour: RGB | np.ndarray, rng: np.random.Generator, sd: float) -> RGB:
    return _rgb(np.asarray(colour, dtype=float) + rng.normal(0, sd, 3))


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


# ---- non-plant elements


def _draw_elements(draw: ImageDraw.ImageDraw, boxes: dict[str, Box], rng: np.random.Generator) -> None:
    """Paint every placed element, always in the same order (determinism)."""
    painters = {
        "label": _draw_label, "barcode": _draw_barcode, "colour_bar": _draw_colour_bar,
        "ruler": _draw_ruler, "stamp": _draw_stamp,
    }
    for kind in ("label", "barcode", "colour_bar", "ruler", "stamp"):
        if kind in boxes:
            painters[kind](draw, boxes[kind], rng)


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font; deterministic for one Pillow build, no system fonts needed."""
    return ImageFont.load_default(size=size)


def _rect(draw: ImageDraw.ImageDraw, xy: tuple[float, float, float, float], **kwargs) -> None:
    """``draw.rectangle`` that skips boxes too small to draw (tiny test sheets)."""
    if xy[2] >= xy[0] and xy[3] >= xy[1]:
        draw.rectangle(xy, **kwargs)


def _ellipse(draw: ImageDraw.ImageDraw, xy: tuple[float, float, float, float], **kwargs) -> None:
    if xy[2] > xy[0] and xy[3] > xy[1]:
        draw.ellipse(xy, **kwargs)


def _text_strokes(draw: ImageDraw.ImageDraw, x0: int, x1: int, y: int, height: int, rng: np.random.Generator, ink: RGB) -> None:
    """A line of 'typed text': dark word-shaped bars with spaces, random and species-free
    (a label that named the species would let a classifier cheat)."""
    x = x0
    end = x1 - int(rng.integers(0, max(1, (x1 - x0) // 3)))
    while x < end:
        word = int(height * rng.uniform(1.5, 6.0))
        _rect(draw, (x, y, min(x + word, end), y + height - 1), fill=ink)
        x += word + max(2, height)


def _draw_label(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    """A printed determination label: white card, border, header and lines of text."""
    x0, y0, x1, y1 = box
    _rect(draw, (x0, y0, x1 - 1, y1 - 1), fill=_jitter_colour((247, 245, 236), rng, 2), outline=(70, 66, 60))
    height = y1 - y0
    pad = max(2, height // 12)
    ink = _jitter_colour((40, 38, 46), rng, 6)
    y = y0 + pad
    font_size = height // 7
    if font_size >= 8:
        draw.text((x0 + pad, y), "SYNTHETIC HERBARIUM", fill=ink, font=_font(font_size))
        y += font_size + pad
    stroke = max(1, height // 22)
    pitch = max(stroke + 2, height // 9)
    while y + stroke < y1 - pad:
        _text_strokes(draw, x0 + pad, x1 - pad, y, stroke, rng, ink)
        y += pitch


def _draw_barcode(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    """Black bars of random widths on white, with a line of 'digits' underneath."""
    x0, y0, x1, y1 = box
    _rect(draw, (x0, y0, x1 - 1, y1 - 1), fill=(250, 250, 248))
    unit = max(1, (x1 - x0) // 90)
    pad = max(2, 4 * unit)
    digits = max(2, (y1 - y0) // 5)
    bottom = y1 - pad // 2 - digits - 1
    x = x0 + pad
    while x < x1 - pad - 3 * unit:
        bar = int(rng.integers(1, 4)) * unit
        _rect(draw, (x, y0 + pad // 2, x + bar - 1, bottom), fill=(12, 12, 12))
        x += bar + int(rng.integers(1, 4)) * unit
    _text_strokes(draw, x0 + pad * 2, x1 - pad * 2, y1 - pad // 2 - digits + 1, max(1, digits // 2), rng, (20, 20, 20))


#: A colour-checker row: saturated patches, then a grey ramp (Kodak/X-Rite style).
_PATCHES: tuple[RGB, ...] = (
    (115, 82, 68), (194, 150, 130), (98, 122, 157), (87, 108, 67), (133, 128, 177), (103, 189, 170),
    (214, 126, 44), (80, 91, 166), (193, 90, 99), (94, 60, 108), (157, 188, 64), (224, 163, 46),
    (56, 61, 150), (70, 148, 73), (175, 54, 60), (231, 199, 31), (187, 86, 149), (8, 133, 161),
)
_GREYS: tuple[RGB, ...] = tuple((v, v, v) for v in (243, 200, 160, 122, 85, 52))


def _draw_colour_bar(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    """A strip of colour patches in a dark frame; sometimes a second, grey row."""
    x0, y0, x1, y1 = box
    _rect(draw, (x0, y0, x1 - 1, y1 - 1), fill=(34, 34, 36))
    rows = [_PATCHES[:12]]
    if y1 - y0 >= 16 and rng.random() < 0.5:
        rows = [_PATCHES[12:] + _GREYS, _PATCHES[:12]]
    if rng.random() < 0.5:
        rows = [row[::-1] for row in rows]
    inner_h = (y1 - y0 - 1) / len(rows)
    for r, row in enumerate(rows):
        cell = (x1 - x0 - 1) / len(row)
        for c, colour in enumerate(row):
            px0, py0 = x0 + 1 + round(c * cell), y0 + 1 + round(r * inner_h)
            px1, py1 = x0 + round((c + 1) * cell) - 1, y0 + round((r + 1) * inner_h) - 1
            if px1 >= px0 and py1 >= py0:
                _rect(draw, (px0, py0, px1, py1), fill=colour)


def _draw_ruler(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    """A scale bar: pale strip with millimetre-like ticks, longer every 5th and 10th."""
    x0, y0, x1, y1 = box
    paper = ((238, 226, 160), (246, 246, 240))[int(rng.integers(2))]
    _rect(draw, (x0, y0, x1 - 1, y1 - 1), fill=paper, outline=(30, 30, 30))
    height = y1 - y0
    pitch = max(3, (x1 - x0) // 40)
    for k, x in enumerate(range(x0 + 2, x1 - 2, pitch)):
        tick = height * (0.7 if k % 10 == 0 else 0.5 if k % 5 == 0 else 0.3)
        draw.line((x, y0, x, y0 + max(1, round(tick))), fill=(20, 20, 20))


def _draw_stamp(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    """A faded ink stamp: two concentric rings and a few strokes inside."""
    x0, y0, x1, y1 = box
    inks = ((150, 60, 70), (70, 80, 150), (110, 70, 130))
    ink = _rgb(0.7 * np.array(inks[int(rng.integers(len(inks)))]) + 0.3 * np.array([236, 231, 214]))
    ring = max(1, (x1 - x0) // 24)
    _ellipse(draw, (x0, y0, x1 - 1, y1 - 1), outline=ink, width=ring)
    inset = max(3, (x1 - x0) // 7)
    _ellipse(draw, (x0 + inset, y0 + inset, x1 - 1 - inset, y1 - 1 - inset), outline=ink, width=max(1, ring // 2))
    cy, stroke = (y0 + y1) // 2, max(1, (y1 - y0) // 16)
    for dy in (-2 * stroke, 0, 2 * stroke):
        _text_strokes(draw, x0 + 2 * inset, x1 - 2 * inset, cy + dy, stroke, rng, ink)


def _draw_tape(
    image: Image.Image,
    mask: Image.Image,
    anchors: list[tuple[np.ndarray, np.ndarray]],
    rng: np.random.Generator,
) -> list[Box]:
    """Translucent mounting-tape strips across the plant; the plant under them is no longer
    visible plant, so they are also cut out of the mask. Returns their boxes."""
    width, height = image.size
    boxes: list[Box] = []
    alpha = Image.new("L", image.size, 0)
    shade = ImageDraw.Draw(alpha)
    cut = ImageDraw.Draw(mask)
    for centre, direction in anchors:
        across = np.array([-direction[1], direction[0]])
        half_len = min(width, height) * rng.uniform(0.04, 0.06)
        half_wid = min(width, height) * rng.uniform(0.012, 0.018)
        along_dir = _rotate(direction[None, :], float(rng.normal(0, 8)))[0]
        across = _rotate(across[None, :], float(rng.normal(0, 8)))[0]
        corners = [centre + sa * half_len * across + sb * half_wid * along_dir for sa, sb in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
        polygon = [tuple(c) for c in np.asarray(corners).tolist()]
        shade.polygon(polygon, fill=int(rng.integers(185, 225)))
        cut.polygon(polygon, fill=0, outline=0)
        xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
        box = (max(0, math.floor(min(xs))), max(0, math.floor(min(ys))), min(width, math.ceil(max(xs)) + 1), min(height, math.ceil(max(ys)) + 1))
        boxes.append(box)
    if boxes:
        image.paste(_jitter_colour((236, 234, 222), rng, 3), (0, 0, width, height), alpha)
    return boxes


def _finish_paper(image: Image.Image, style: SheetStyle, rng: np.random.Generator) -> Image.Image:
    """Uneven lighting and grain over the whole photograph, plant and labels included."""
    width, height = image.size
    coarse = rng.normal(0.0, style.shading, (4, 3)).astype(np.float32)
    shading = np.asarray(Image.fromarray(coarse, mode="F").resize((width, height), Image.Resampling.BILINEAR))
    grain = rng.standard_normal((height, width), dtype=np.float32) * style.texture
    pixels = np.asarray(image, dtype=np.float32) + (shading + grain)[:, :, None]
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), mode="RGB")


# --------------------------------------------------------------------------- collections


@dataclass(frozen=True)
class _Sheet:
    """One planned sheet of a collection: who, where, when, and which species."""

    species: int
    index: int
    number: int
    institution: str
    collector: str
    record_number: int
    event_date: str
    country: str

    @property
    def catalog_number(self) -> str:
        return f"{self.institution}-{self.number:06d}"


_SURNAME_HEADS = ("Ash", "Bram", "Cope", "Dell", "Elm", "Fern", "Glen", "Haw", "Ivy", "Jun", "Kest", "Larch", "Mead", "Nett", "Oak", "Pin")
_SURNAME_TAILS = ("grove", "ley", "wood", "ford", "by", "ton", "mere", "field", "well", "hurst", "combe", "stead")
_INITIALS = "ABCDEFGHJKLMNPRSTW"


def collector_name(k: int) -> str:
    """The ``k``-th invented collector, ``"A. Ashgrove"`` style.

    Surnames are letters only and unique per ``k``, because collector normalisation keys
    on the surname (digits would be stripped and merge everyone).
    """
    heads, tails = len(_SURNAME_HEADS), len(_SURNAME_TAILS)
    surname = _SURNAME_HEADS[k % heads] + _SURNAME_TAILS[(k // heads) % tails]
    rest = k // (heads * tails)
    while rest:
        surname += _SURNAME_TAILS[rest % tails]
        rest //= tails
    return f"{_INITIALS[(k * 7) % len(_INITIALS)]}. {surname}"


def sheet_rng(seed: int, species: int, index: int) -> np.random.Generator:
    """The generator :func:`make_synthetic_collection` renders sheet ``index`` of ``species``
    with, so a test can re-render a collection's sheet and get its :class:`SheetLayout`."""
    return np.random.default_rng([seed, species, index])


def _plan(n_species: int, per_species: int, collectors_per_species: int, seed: int, shared_collectors: bool) -> list[_Sheet]:
    """Metadata of every sheet. Collectors collect several sheets each (record numbers
    run on per collector); with ``shared_collectors`` neighbouring species share one
    collector, as real collectors rarely collect a single species."""
    rng = np.random.default_rng([seed, 7919])
    step = collectors_per_species - 1 if shared_collectors and collectors_per_species > 1 else collectors_per_species
    collector_ids = sorted({i * step + j for i in range(n_species) for j in range(collectors_per_species)})
    first_year = {c: int(rng.integers(1950, 2016)) for c in collector_ids}
    country = {c: COUNTRIES[int(rng.integers(len(COUNTRIES)))] for c in collector_ids}
    next_number = {c: int(rng.integers(100, 5000)) for c in collector_ids}
    sheets = []
    for species in range(n_species):
        for index in range(per_species):
            cid = species * step + index % collectors_per_species
            next_number[cid] += int(rng.integers(1, 6))
            year = first_year[cid] + int(rng.integers(0, 6))
            sheets.append(_Sheet(
                species=species,
                index=index,
                number=len(sheets) + 1,
                institution=INSTITUTIONS[int(rng.integers(len(INSTITUTIONS)))],
                collector=collector_name(cid),
                record_number=next_number[cid],
                event_date=f"{year:04d}-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}",
                country=country[cid],
            ))
    return sheets


def _image_path(sheet: _Sheet, layout: str) -> Path:
    """Where a sheet's JPEG goes, relative to the collection folder."""
    spec = SPECIES[sheet.species]
    if layout == "csv":
        return Path("images") / f"{sheet.catalog_number}.jpg"
    if layout == "folders":
        return Path(spec.file_stem) / f"{sheet.catalog_number}.jpg"
    return Path(f"{spec.file_stem}.{sheet.number}.{sheet.index + 1}.jpg")


def _csv_row(sheet: _Sheet, media: Path) -> dict[str, str]:
    spec = SPECIES[sheet.species]
    return {
        "occurrenceID": f"urn:{SYNTHETIC_LABEL}:{sheet.institution}:{sheet.number:06d}",
        "catalogNumber": sheet.catalog_number,
        "institutionCode": sheet.institution,
        "scientificName": spec.name_with_authorship,
        "genus": spec.genus,
        "family": spec.family,
        "recordedBy": sheet.collector,
        "recordNumber": str(sheet.record_number),
        "eventDate": sheet.event_date,
        "country": sheet.country,
        "associatedMedia": media.as_posix(),
    }


def make_synthetic_collection(
    out_dir: str | Path,
    *,
    n_species: int = 4,
    per_species: int = 6,
    collectors_per_species: int = 3,
    size: tuple[int, int] = (400, 600),
    seed: int = 0,
    layout: str = "csv",
    shared_collectors: bool = True,
    quality: int = 90,
) -> Path:
    """Write a collection of synthetic sheets (species ``0 .. n_species-1`` of
    :data:`SPECIES`) to ``out_dir``; return the location a source reads it from.

    That is ``out_dir/occurrences.csv`` for ``layout="csv"`` (the folder alone would look
    like a species folder named ``images``) and ``out_dir`` for the other layouts.

    ``layout`` chooses the on-disk form a source module would meet:

    * ``"csv"``: ``images/<catalogNumber>.jpg`` plus ``occurrences.csv`` with the Darwin
      Core columns :data:`CSV_COLUMNS` (``associatedMedia`` relative to the CSV);
    * ``"folders"``: ``<Genus_epithet>/<catalogNumber>.jpg``;
    * ``"filenames"``: flat ``<Genus_epithet>.<sheet number>.<index in species>.jpg``.

    Each species' sheets go round-robin to ``collectors_per_species`` collectors. Sheet
    ``i`` of species ``s`` is ``render_sheet(s, sheet_rng(seed, s, i), size=size)``; the
    whole output is byte-identical for the same arguments.
    """
    if layout not in LAYOUTS:
        raise InvalidOption(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    if not 1 <= n_species <= len(SPECIES):
        raise InvalidOption(f"n_species must be 1..{len(SPECIES)}, got {n_species}")
    if per_species < 1 or collectors_per_species < 1:
        raise InvalidOption("per_species and collectors_per_species must be >= 1")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    for sheet in _plan(n_species, per_species, collectors_per_species, seed, shared_collectors):
        relative = _image_path(sheet, layout)
        image, _ = render_sheet(sheet.species, sheet_rng(seed, sheet.species, sheet.index), size=size)
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / relative, format="JPEG", quality=quality)
        rows.append(_csv_row(sheet, relative))
    if layout == "csv":
        with open(root / "occurrences.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        return root / "occurrences.csv"
    return root


# --------------------------------------------------------------------------- helpers


def _px(value: float) -> int:
    return max(1, int(round(value)))


def _rgb(values: np.ndarray | tuple[float, float, float]) -> RGB:
    r, g, b = (int(np.clip(round(float(v)), 0, 255)) for v in values)
    return (r, g, b)


def _choice(rng: np.random.Generator, options: tuple[_T, ...], weights: tuple[float, ...]) -> _T:
    return options[int(rng.choice(len(options), p=np.asarray(weights) / sum(weights)))]


def _mask_box(mask: np.ndarray) -> Box:
    """Bounding box of the True pixels (x1/y1 exclusive)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return (0, 0, 0, 0)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
