"""Composing one sheet: paper, plant and clutter in their places, then the lighting
and grain of a photograph over it all (:func:`render_sheet`)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from herbid.data.synthetic.catalogue import SPECIES, species_index
from herbid.data.synthetic.clutter import _draw_elements, _draw_tape
from herbid.data.synthetic.geometry import _mask_box
from herbid.data.synthetic.layout import SheetLayout, SheetStyle, _place_elements, _plant_region
from herbid.data.synthetic.plant import _draw_plant
from herbid.errors import InvalidOption


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


def _finish_paper(image: Image.Image, style: SheetStyle, rng: np.random.Generator) -> Image.Image:
    """Uneven lighting and grain over the whole photograph, plant and labels included."""
    width, height = image.size
    coarse = rng.normal(0.0, style.shading, (4, 3)).astype(np.float32)
    shading = np.asarray(Image.fromarray(coarse, mode="F").resize((width, height), Image.Resampling.BILINEAR))
    grain = rng.standard_normal((height, width), dtype=np.float32) * style.texture
    pixels = np.asarray(image, dtype=np.float32) + (shading + grain)[:, :, None]
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), mode="RGB")
