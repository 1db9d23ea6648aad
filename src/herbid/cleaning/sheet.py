"""Sheet cleaning: separate the pressed plant from the clutter on a herbarium sheet.

Carranza-Rojas et al. (2017) end with the advice to "get rid of labels and other visual
noise" before training: labels, barcodes, colour bars and rulers are shared by every
species of an institution, so a classifier can learn *who mounted the sheet* instead of
*what grows on it*. This module provides

* a :class:`SheetSegmenter` protocol, so a trained detector can replace the classical
  method later without touching callers (register it in :data:`SEGMENTERS`);
* :class:`ClassicalSegmenter`, a weight-free colour + connected-component method;
* :func:`clean_sheet`, which paints the clutter with paper colour or crops to the plant.

The classical method relies on two facts that hold for most digitised sheets: the paper
covers most of the image (so its colour is the robust median), and the plant is
green/olive/brown while labels, barcodes and frames are neutral dark ink or saturated
non-vegetation colours arranged in compact, rectangular blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol

import numpy as np
from PIL import Image
from scipy import ndimage

from herbid.errors import InvalidOption

#: A pixel box ``(x0, y0, x1, y1)``, x1/y1 exclusive (same convention as PIL crops).
Box = tuple[int, int, int, int]
CleanMode = Literal["mask", "crop", "none"]


@dataclass
class SheetSegmentation:
    """What a segmenter found on one sheet, in full-resolution pixel coordinates.

    ``plant_mask`` is H×W bool; ``non_plant_boxes`` are the clutter regions (labels,
    barcodes, colour bars …) that cleaning should remove; ``plant_box`` is the bounding
    box of the plant mask, ``None`` when no plant was found.
    """

    plant_mask: np.ndarray
    non_plant_boxes: list[Box] = field(default_factory=list)
    plant_box: Box | None = None
    #: Estimated paper colour, so cleaning can paint with it (segmenters may leave None).
    paper_colour: tuple[int, int, int] | None = None


class SheetSegmenter(Protocol):
    """Anything that can split a sheet into plant and clutter (classical or learned)."""

    def segment(self, image: Image.Image) -> SheetSegmentation:
        """Segment ``image`` (any PIL mode; converted to RGB by implementations)."""
        ...


# --------------------------------------------------------------------------- helpers


def estimate_paper_colour(pixels: np.ndarray) -> np.ndarray:
    """Paper colour of an H×W×3 float array: the per-channel median of the brighter half.

    The paper is the largest single surface on a sheet, but dark plants and labels can
    cover a lot of it; restricting to pixels brighter than the median grey keeps the
    estimate on the paper while staying robust to yellowed or tinted paper.
    """
    grey = pixels.mean(axis=2)
    bright = pixels[grey >= np.median(grey)]
    return np.median(bright, axis=0)


def local_paper(pixels: np.ndarray, paper: np.ndarray, cells: int = 10) -> np.ndarray:
    """H×W×3 paper colour that follows uneven lighting across the sheet.

    A single paper colour fails on sheets lit from one side: the darker half ends up
    "far from paper" and looks like one giant label. Each cell of a coarse grid takes the
    90th percentile of its pixels (paper or white card, rarely plant), a 3×3 median over
    cells overrules cells a leaf or chart covers completely, and bilinear upsampling
    gives a smooth background. The result is never brighter than ``paper``.
    """
    height, width = pixels.shape[:2]
    step = max(4, min(height, width) // cells)
    rows, cols = max(1, height // step), max(1, width // step)
    grid = np.empty((rows, cols, 3), dtype=np.float32)
    for i in range(rows):
        for j in range(cols):
            y1 = height if i == rows - 1 else (i + 1) * step
            x1 = width if j == cols - 1 else (j + 1) * step
            cell = pixels[i * step:y1, j * step:x1].reshape(-1, 3)
            grid[i, j] = np.percentile(cell, 90, axis=0)
    grid = ndimage.median_filter(grid, size=(3, 3, 1), mode="nearest")
    # shadows may darken the paper, but nothing lightens it: a brighter cell is a white
    # label card, and treating it as paper would turn the real paper around it into
    # "foreground" that glues the label to its surroundings
    grid = np.clip(grid, paper - 40, paper)
    zoom = (height / rows, width / cols, 1)
    smooth = ndimage.zoom(grid, zoom, order=1, mode="nearest", grid_mode=True)
    return smooth[:height, :width]


def _downsample(image: Image.Image, max_side: int) -> tuple[np.ndarray, float]:
    """RGB float array of ``image`` shrunk so its longer side is at most ``max_side``.

    Segmentation only needs a coarse view; working small keeps it fast on 5000-pixel
    scans. Returns the array and the scale (small / full).
    """
    rgb = image.convert("RGB")
    scale = min(1.0, max_side / max(rgb.size))
    if scale < 1.0:
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.BOX)
    return np.asarray(rgb, dtype=np.float32), scale


def _vegetation(pixels: np.ndarray, paper: np.ndarray, *, loose: bool = False) -> np.ndarray:
    """Pixels coloured like dried plants: green, olive, yellow-green or brown, not bright.

    Dried specimens keep green above blue (chlorophyll and tannin browns both absorb
    blue), and they are clearly darker than the paper. Ink is neutral, barcodes black,
    and stamps/most colour patches have blue at or above green, so they fail this test;
    a minimum chroma rejects the warm-grey borders of label cards, and a maximum
    saturation rejects the vivid yellow/orange/green patches of colour charts (dried
    tissue is dull).

    ``loose`` widens every threshold; it is used to decide what is certainly *not*
    plant, so that the anti-aliased edges and midribs of leaves do not count as clutter
    and chain a plant to a nearby label.
    """
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    brightness = pixels.max(axis=2)
    chroma = brightness - pixels.min(axis=2)
    saturation = chroma / np.maximum(brightness, 1.0)
    if loose:
        darker = brightness < 0.95 * float(paper.max())
        greenish = (g - b > -2) | (g - r > 5)
        return darker & greenish & (r < g + 50) & (saturation < 0.75) & (chroma > 14)
    darker = brightness < 0.82 * float(paper.max())
    greenish = (g - b > 3) | (g - r > 15)
    return darker & greenish & (r < g + 40) & (saturation < 0.66) & (chroma > 14)


def _distinct_hues(pixels: np.ndarray, bins: int = 12, min_share: float = 0.02) -> int:
    """How many of ``bins`` hue sectors hold at least ``min_share`` of the coloured pixels.

    Colour charts are built to span the hue circle; a plant spans greens and browns
    plus perhaps one flower colour, so this count separates them where green patches
    would otherwise make a chart look like vegetation.
    """
    if len(pixels) == 0:
        return 0
    rgb = pixels.astype(np.float32)
    top, low = rgb.max(axis=1), rgb.min(axis=1)
    coloured = (top - low) > 30
    if not coloured.any():
        return 0
    r, g, b = rgb[coloured].T
    hue = np.degrees(np.arctan2(np.sqrt(3.0) * (g - b), 2 * r - g - b)) % 360
    counts = np.bincount((hue // (360 / bins)).astype(int) % bins, minlength=bins)
    return int((counts >= min_share * len(pixels)).sum())


def _boxes_from_labels(labels: np.ndarray, count: int) -> list[tuple[int, slice, slice]]:
    """(label id, row slice, column slice) for every connected component."""
    return [(i + 1, sl[0], sl[1]) for i, sl in enumerate(ndimage.find_objects(labels, count)) if sl is not None]


def _scale_box(box: Box, factor: float, width: int, height: int) -> Box:
    """Map a box from working resolution back to the full image, clipped to it."""
    x0, y0, x1, y1 = box
    return (
        max(0, int(np.floor(x0 / factor))),
        max(0, int(np.floor(y0 / factor))),
        min(width, int(np.ceil(x1 / factor))),
        min(height, int(np.ceil(y1 / factor))),
    )


def mask_box(mask: np.ndarray) -> Box | None:
    """Bounding box of the True pixels, ``None`` for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


# --------------------------------------------------------------------------- classical


@dataclass
class ClassicalSegmenter:
    """Weight-free plant/clutter segmentation from colour and connected components.

    Steps (on a copy whose longer side is ``work_size``):

    1. paper colour = robust median (:func:`estimate_paper_colour`), refined locally
       for uneven lighting (:func:`local_paper`);
    2. foreground = pixels further than ``paper_distance`` from the local paper colour;
    3. *artefact* pixels = foreground that is not even loosely vegetation-coloured
       (ink, black bars, saturated patches, pale ruler strips); closing and hole filling turn a label's text
       lines, a barcode's bars and a colour bar's patches into solid blocks;
    4. a block whose foreground is mostly non-vegetation, which is large enough and
       compact (fills most of its bounding box, as cards, bars and stamps do), is a
       clutter region: its bounding box, padded a little to catch card borders, becomes
       a ``non_plant_box``;
    5. plant = vegetation pixels outside clutter boxes, minus specks smaller than
       ``min_plant_fraction`` of the sheet.

    The thresholds are relative (fractions of the sheet, of the paper brightness), so the
    same defaults work on 400-pixel synthetic sheets and on full-size scans.
    """

    work_size: int = 512
    paper_distance: float = 28.0
    #: Closing size, as a fraction of the working image's shorter side.
    close_fraction: float = 0.02
    #: A block is clutter when less than this share of its foreground is vegetation.
    max_vegetation_share: float = 0.45
    #: Clutter is compact: its block fills at least this share of its bounding box
    #: (rectangles ~1, stamps ~0.8); sprawling plant parts that fail the colour test do not.
    min_extent: float = 0.65
    #: Ignore clutter blocks smaller than this share of the sheet (dust, plant shadows).
    min_block_fraction: float = 0.0015
    #: Blocks larger than this share of the sheet are not clutter but the scan's dark
    #: surround or a shadow; painting them would erase the plant with them.
    max_block_fraction: float = 0.25
    min_plant_fraction: float = 0.0002
    #: A foreground component joins the plant when this share of it is vegetation.
    min_component_vegetation: float = 0.3
    #: A block showing at least this many distinct hues is a colour chart, whatever
    #: its share of green and brown patches.
    chart_hues: int = 6

    def segment(self, image: Image.Image) -> SheetSegmentation:
        """Segment one sheet; see the class docstring for the method."""
        pixels, scale = _downsample(image, self.work_size)
        paper = estimate_paper_colour(pixels)
        background = local_paper(pixels, paper)
        foreground = np.linalg.norm(pixels - background, axis=2) > self.paper_distance
        vegetation = _vegetation(pixels, paper) & foreground
        self._pixels = pixels
        artefact = foreground & ~_vegetation(pixels, paper, loose=True)
        small_boxes = self._clutter_boxes(foreground, vegetation, artefact)
        candidates = foreground.copy()
        for x0, y0, x1, y1 in small_boxes:
            candidates[y0:y1, x0:x1] = False
        plant = self._drop_specks(self._grow_plant(candidates, vegetation))
        width, height = image.size
        full_mask = np.asarray(
            Image.fromarray(plant.astype(np.uint8) * 255).resize((width, height), Image.Resampling.NEAREST)
        ) > 0
        boxes = [_scale_box(box, scale, width, height) for box in small_boxes]
        return SheetSegmentation(
            plant_mask=full_mask,
            non_plant_boxes=boxes,
            plant_box=mask_box(full_mask),
            paper_colour=tuple(int(round(float(v))) for v in paper),  # type: ignore[arg-type]
        )

    def _clutter_boxes(self, foreground: np.ndarray, vegetation: np.ndarray, artefact: np.ndarray) -> list[Box]:
        """Bounding boxes of compact, mostly non-vegetation blocks (labels, bars, codes)."""
        height, width = foreground.shape
        size = max(3, int(round(self.close_fraction * min(height, width))))
        structure = np.ones((size, size), dtype=bool)
        blocks = ndimage.binary_fill_holes(ndimage.binary_closing(artefact, structure, border_value=0))
        labels, count = ndimage.label(blocks)
        min_area = self.min_block_fraction * height * width
        boxes: list[Box] = []
        for index, rows, cols in _boxes_from_labels(labels, count):
            component = labels[rows, cols] == index
            if not min_area <= component.sum() <= self.max_block_fraction * height * width:
                continue
            fg = foreground[rows, cols] & component
            veg_share = (vegetation[rows, cols] & component).sum() / max(1, fg.sum())
            extent = component.sum() / component.size
            chart = _distinct_hues(self._pixels[rows, cols][fg]) >= self.chart_hues
            # a chart's vegetation-coloured patches are not artefact pixels, so its block
            # can have gaps; the hue count is strong enough evidence to relax compactness
            clutter = veg_share < self.max_vegetation_share and extent >= self.min_extent
            # a card (label) is a near-perfect rectangle of mostly blank paper, even when
            # its ink happens to look olive
            clutter |= extent >= 0.9 and fg.sum() < 0.6 * component.sum()
            if clutter or (chart and extent >= self.min_extent / 2):
                pad = size // 2
                boxes.append((
                    max(0, cols.start - pad), max(0, rows.start - pad),
                    min(width, cols.stop + pad), min(height, rows.stop + pad),
                ))
        return boxes

    def _grow_plant(self, candidates: np.ndarray, vegetation: np.ndarray) -> np.ndarray:
        """Keep whole foreground components that are mostly vegetation-coloured.

        The colour test alone misses greyish leaves, pale flowers and faded parts; but
        those touch a stem or leaf that passes it. Growing from confident vegetation
        through connected foreground (hysteresis) recovers them, while isolated ink
        marks and stains, which touch no vegetation, stay out.
        """
        labels, count = ndimage.label(candidates, structure=np.ones((3, 3), dtype=bool))
        if count == 0:
            return candidates
        index = np.arange(1, count + 1)
        veg = ndimage.sum_labels(vegetation & candidates, labels, index=index)
        total = ndimage.sum_labels(candidates, labels, index=index)
        keep = np.concatenate([[False], veg >= self.min_component_vegetation * total])
        return keep[labels]

    def _drop_specks(self, plant: np.ndarray) -> np.ndarray:
        """Remove isolated vegetation-coloured specks (dust, stains, colour-bar leftovers)."""
        labels, count = ndimage.label(plant, structure=np.ones((3, 3), dtype=bool))
        if count == 0:
            return plant
        sizes = ndimage.sum_labels(plant, labels, index=np.arange(1, count + 1))
        keep = np.concatenate([[False], sizes >= self.min_plant_fraction * plant.size])
        return keep[labels]


#: Segmenters by name; a trained detector registers itself here (``SEGMENTERS["yolo"] = …``).
SEGMENTERS: dict[str, Callable[[], SheetSegmenter]] = {"classical": ClassicalSegmenter}


def get_segmenter(name: str | SheetSegmenter = "classical") -> SheetSegmenter:
    """The segmenter registered as ``name`` (instances pass through unchanged)."""
    if not isinstance(name, str):
        return name
    try:
        return SEGMENTERS[name]()
    except KeyError:
        raise InvalidOption(f"unknown segmenter {name!r}; known: {', '.join(sorted(SEGMENTERS))}") from None


# --------------------------------------------------------------------------- cleaning


def clean_sheet(
    image: Image.Image,
    mode: CleanMode = "mask",
    segmenter: str | SheetSegmenter = "classical",
    fill: tuple[int, int, int] | None = None,
    *,
    margin: float = 0.05,
    max_aspect: float = 2.0,
    aspect: float | None = None,
    segmentation: SheetSegmentation | None = None,
) -> Image.Image:
    """Remove non-plant clutter from a sheet image.

    * ``"mask"`` paints every clutter box with ``fill`` (default: the estimated paper
      colour), so the image keeps its geometry but labels/barcodes/colour bars vanish;
    * ``"crop"`` crops to the plant box plus ``margin`` (fraction of the box size) and
      pads with paper colour so the aspect ratio stays within ``max_aspect``; without a
      plant it falls back to ``"mask"``; with ``aspect`` (height / width) it pads to exactly
      that shape instead, so that training at that aspect (``TrainConfig.aspect``) does
      not distort the plant;
    * ``"none"`` returns the image unchanged (an explicit no-op keeps pipelines simple).

    A precomputed ``segmentation`` skips segmenting again (e.g. when quality used it).
    """
    if mode == "none":
        return image
    if mode not in ("mask", "crop"):
        raise InvalidOption(f"clean mode {mode!r}: expected 'mask', 'crop' or 'none'")
    rgb = image.convert("RGB")
    seg = segmentation if segmentation is not None else get_segmenter(segmenter).segment(rgb)
    colour = fill or seg.paper_colour or _paper_of(rgb)
    masked = _paint_boxes(rgb, seg.non_plant_boxes, colour)
    if mode == "mask" or seg.plant_box is None:
        return masked
    return _crop_padded(masked, seg.plant_box, colour, margin, max_aspect, aspect)


def _paper_of(image: Image.Image) -> tuple[int, int, int]:
    pixels, _ = _downsample(image, 256)
    r, g, b = (int(round(float(v))) for v in estimate_paper_colour(pixels))
    return (r, g, b)


def _paint_boxes(image: Image.Image, boxes: list[Box], colour: tuple[int, int, int]) -> Image.Image:
    """Copy of ``image`` with every box filled with ``colour``."""
    out = image.copy()
    for box in boxes:
        if box[2] > box[0] and box[3] > box[1]:
            out.paste(colour, box)
    return out


def _crop_padded(
    image: Image.Image, box: Box, colour: tuple[int, int, int], margin: float, max_aspect: float,
    aspect: float | None = None,
) -> Image.Image:
    """Crop ``box`` grown by ``margin`` and pad it to an aspect ratio ≤ ``max_aspect``
    (or to height / width = ``aspect`` exactly).

    Padding (rather than cropping tighter) keeps every plant pixel, and a bounded aspect
    ratio stops a thin grass culm from becoming a 1:10 strip that resizing would squash.
    """
    x0, y0, x1, y1 = box
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    crop_box = (
        max(0, int(x0 - mx)), max(0, int(y0 - my)),
        min(image.width, int(np.ceil(x1 + mx))), min(image.height, int(np.ceil(y1 + my))),
    )
    crop = image.crop(crop_box)
    w, h = crop.size
    if aspect is not None:
        target_w, target_h = max(w, round(h / aspect)), max(h, round(w * aspect))
    else:
        target_w = max(w, int(np.ceil(h / max_aspect)))
        target_h = max(h, int(np.ceil(w / max_aspect)))
    if (target_w, target_h) == (w, h):
        return crop
    canvas = Image.new("RGB", (target_w, target_h), colour)
    canvas.paste(crop, ((target_w - w) // 2, (target_h - h) // 2))
    return canvas
