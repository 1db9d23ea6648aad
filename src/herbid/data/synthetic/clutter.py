"""The non-plant marks of a sheet: determination label, barcode, colour chart, ruler,
ink stamp and mounting tape."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from herbid.data.synthetic.colour import RGB, _jitter_colour, _rgb
from herbid.data.synthetic.geometry import Box, _rotate


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
