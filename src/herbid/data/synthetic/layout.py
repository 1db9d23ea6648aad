"""Sheet style and layout: which non-plant elements a sheet carries, where each one
goes, where the plant may grow, and the ground truth (:class:`SheetLayout`) of it all."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np

from herbid.data.synthetic.colour import RGB, _rgb
from herbid.data.synthetic.geometry import Box, _px

_T = TypeVar("_T")

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


def _choice(rng: np.random.Generator, options: tuple[_T, ...], weights: tuple[float, ...]) -> _T:
    return options[int(rng.choice(len(options), p=np.asarray(weights) / sum(weights)))]
