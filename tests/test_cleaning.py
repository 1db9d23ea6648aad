"""Sheet cleaning and quality scoring, checked against synthetic ground truth."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from herbid.cleaning import SEGMENTERS, ClassicalSegmenter, SheetSegmentation, clean_sheet, get_segmenter, sheet_quality
from herbid.data.synthetic import SheetLayout, SheetStyle, render_sheet

SEEDS = range(8)


@pytest.fixture(scope="module")
def sheets() -> list[tuple[Image.Image, SheetLayout, SheetSegmentation]]:
    """Eight sheets of different species and styles, segmented once."""
    segmenter = ClassicalSegmenter()
    out = []
    for seed in SEEDS:
        image, layout = render_sheet(seed * 2 % 16, np.random.default_rng(seed))
        out.append((image, layout, segmenter.segment(image)))
    return out


def _removed(seg: SheetSegmentation, box: tuple[int, int, int, int]) -> float:
    """Share of ``box`` covered by the segmentation's clutter boxes."""
    covered = np.zeros(seg.plant_mask.shape, dtype=bool)
    for x0, y0, x1, y1 in seg.non_plant_boxes:
        covered[y0:y1, x0:x1] = True
    x0, y0, x1, y1 = box
    return float(covered[y0:y1, x0:x1].mean())


@pytest.mark.parametrize("kind", ["label_box", "barcode_box", "colour_bar_box"])
def test_clutter_is_removed(sheets, kind: str) -> None:
    shares = [_removed(seg, getattr(layout, kind)) for _, layout, seg in sheets if getattr(layout, kind)]
    assert shares, f"no sheet has a {kind}"
    assert min(shares) >= 0.9, shares


def test_clutter_is_not_plant(sheets) -> None:
    for _, layout, seg in sheets:
        for kind in ("label", "barcode", "colour_bar"):
            box = layout.element_boxes().get(kind)
            if box:
                x0, y0, x1, y1 = box
                assert seg.plant_mask[y0:y1, x0:x1].mean() <= 0.02, kind


def test_plant_is_kept(sheets) -> None:
    recalls, ious = [], []
    for _, layout, seg in sheets:
        truth, pred = layout.plant_mask, seg.plant_mask
        recalls.append((truth & pred).sum() / truth.sum())
        ious.append((truth & pred).sum() / (truth | pred).sum())
    assert np.mean(recalls) >= 0.85 and min(recalls) >= 0.7, recalls
    assert np.mean(ious) >= 0.8 and min(ious) >= 0.6, ious


def test_mask_mode_paints_paper(sheets) -> None:
    image, layout, seg = sheets[0]
    cleaned = np.asarray(clean_sheet(image, mode="mask", segmentation=seg), dtype=float)
    assert cleaned.shape == np.asarray(image).shape
    x0, y0, x1, y1 = layout.label_box
    label = cleaned[y0:y1, x0:x1]
    assert (np.abs(label - np.array(seg.paper_colour)).max(axis=2) <= 1).mean() >= 0.9
    original = np.asarray(image, dtype=float)
    truth = layout.plant_mask
    assert (np.abs(cleaned[truth] - original[truth]).max(axis=1) == 0).mean() >= 0.95


def test_mask_mode_end_to_end_with_fill() -> None:
    image, layout = render_sheet(3, np.random.default_rng(42))
    cleaned = np.asarray(clean_sheet(image, fill=(255, 0, 255)))
    x0, y0, x1, y1 = layout.barcode_box or layout.label_box
    assert (cleaned[y0:y1, x0:x1] == (255, 0, 255)).all(axis=2).mean() >= 0.9


def test_crop_mode_contains_plant(sheets) -> None:
    for image, layout, seg in sheets:
        crop = clean_sheet(image, mode="crop", segmentation=seg)
        assert crop.width <= image.width * 1.5 and crop.height <= image.height * 1.5
        px0, py0, px1, py1 = seg.plant_box
        tx0, ty0, tx1, ty1 = layout.plant_box
        # the crop grows the predicted box by a margin, so check that grown box
        mx, my = 0.05 * (px1 - px0), 0.05 * (py1 - py0)
        gx0, gy0, gx1, gy1 = px0 - mx, py0 - my, px1 + mx, py1 + my
        inter = max(0, min(gx1, tx1) - max(gx0, tx0)) * max(0, min(gy1, ty1) - max(gy0, ty0))
        assert inter / ((tx1 - tx0) * (ty1 - ty0)) >= 0.9
        assert max(crop.size) / min(crop.size) <= 2.0 + 1e-6


def test_crop_mode_pads_to_the_training_aspect(sheets) -> None:
    for image, _, seg in sheets:
        crop = clean_sheet(image, mode="crop", aspect=1.4, segmentation=seg)
        px0, py0, px1, py1 = seg.plant_box
        assert crop.height / crop.width == pytest.approx(1.4, abs=0.02)
        # padded, never cut: the whole plant box still fits
        assert crop.width >= px1 - px0 and crop.height >= py1 - py0


def test_none_mode_and_unknown_names(sheets) -> None:
    image = sheets[0][0]
    assert clean_sheet(image, mode="none") is image
    with pytest.raises(ValueError):
        clean_sheet(image, mode="blur")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        get_segmenter("yolo")


def test_registry_accepts_a_new_segmenter(sheets) -> None:
    class Nothing:
        def segment(self, image: Image.Image) -> SheetSegmentation:
            return SheetSegmentation(np.zeros((image.height, image.width), bool), [(0, 0, 10, 10)], None, (1, 2, 3))

    SEGMENTERS["nothing"] = Nothing
    try:
        out = np.asarray(clean_sheet(sheets[0][0], mode="crop", segmenter="nothing"))
    finally:
        del SEGMENTERS["nothing"]
    assert out.shape == np.asarray(sheets[0][0]).shape  # no plant: crop falls back to mask
    assert (out[:10, :10] == (1, 2, 3)).all()


def test_blank_sheet_has_no_plant() -> None:
    image, _ = render_sheet(0, np.random.default_rng(1), style=SheetStyle.plant_only())
    blank = Image.new("RGB", image.size, (236, 231, 214))
    noise = np.random.default_rng(0).normal(0, 2.5, (image.height, image.width, 1))
    blank = Image.fromarray(np.clip(np.asarray(blank) + noise, 0, 255).astype(np.uint8))
    scores = sheet_quality(blank)
    assert scores["plant_fraction"] <= 0.001
    assert scores["quality"] <= 0.1


def test_quality_drops_with_blur_and_overexposure(sheets) -> None:
    image, _, seg = sheets[1]
    base = sheet_quality(image, seg)
    blurred = sheet_quality(image.filter(ImageFilter.GaussianBlur(4)))
    bright = sheet_quality(ImageEnhance.Brightness(image).enhance(1.8), seg)
    for scores in (base, blurred, bright):
        assert all(0.0 <= scores[k] <= 1.0 for k in ("blur", "exposure", "plant_fraction", "quality"))
    assert blurred["blur"] < base["blur"] and blurred["quality"] < base["quality"]
    assert bright["exposure"] < base["exposure"] and bright["quality"] < base["quality"]
    assert bright["clipped_bright"] > base["clipped_bright"]
    assert 0.005 < base["plant_fraction"] < 0.5


def test_white_scanner_background_is_not_overexposure(sheets) -> None:
    """A scan whose background is rendered pure white has clipped pixels, but the plant
    kept its detail: exposure must stay high (it was 0 for a quarter of real Viola sheets)."""
    image, _, seg = sheets[1]
    pixels = np.asarray(image).copy()
    pixels[~seg.plant_mask] = 255  # background → pure white, plant untouched
    white = Image.fromarray(pixels)
    scores = sheet_quality(white, seg)
    assert scores["clipped_bright"] < 0.05  # measured on the plant
    assert scores["exposure"] > 0.5 and scores["quality"] > 0.5


# ------------------------------------------------------------------ whole datasets


def test_clean_dataset_keeps_rows_and_adds_quality(tmp_path) -> None:
    from herbid.cleaning.dataset import QUALITY_COLUMNS, clean_dataset
    from herbid.data.build import BuildOptions, build_dataset
    from herbid.data.dataset_folder import load_manifest
    from herbid.data.splits import split_dataset
    from herbid.data.synthetic import make_synthetic_collection

    source = make_synthetic_collection(tmp_path / "src", n_species=2, per_species=3, seed=4, size=(300, 420))
    built = build_dataset([source], tmp_path / "ds", BuildOptions(workers=1, progress=False)).out
    split_dataset(built, by="none", test_fraction=0.5, seed=0)
    result = clean_dataset(built, tmp_path / "clean", mode="mask", progress=False)
    original, cleaned = load_manifest(built), load_manifest(tmp_path / "clean")
    assert result.images == len(original) == len(cleaned) == 6
    # identity, labels and split are the original sheet's; only the pixels changed
    for column in ("image_id", "sha256", "scientificName", "split"):
        assert cleaned[column].tolist() == original[column].tolist()
    assert result.boxes_removed >= 6  # every synthetic sheet has at least a label or barcode
    for column in QUALITY_COLUMNS:
        assert cleaned[column].between(0, 1).all() or column == "blur" and (cleaned[column] >= 0).all()
    changed = 0
    for before, after in zip(original["large_image_path"], cleaned["large_image_path"]):
        a = np.asarray(Image.open(tmp_path / "ds" / before).convert("L"), dtype=np.float32)
        b = np.asarray(Image.open(tmp_path / "clean" / after).convert("L"), dtype=np.float32)
        assert a.shape == b.shape
        changed += (np.abs(a - b) > 40).mean() > 0.002  # some clutter painted over
    assert changed >= 5  # a sheet may come without label (SheetStyle.sample draws it)
    # other pixels, so another manifest hash (no shared cached stages or provenance)
    from herbid.data.dataset_folder import manifest_hash

    assert manifest_hash(tmp_path / "clean") != manifest_hash(built)
    assert cleaned["cleaned_sha256"].str.len().eq(64).all()
    # resumable: a second call finds every image written and changes nothing
    again = clean_dataset(built, tmp_path / "clean", mode="mask", progress=False)
    assert again.images == 6 and load_manifest(tmp_path / "clean").equals(cleaned)
    with pytest.raises(ValueError, match="mask"):
        clean_dataset(built, tmp_path / "x", mode="blur", progress=False)
    # mode none: the very same image files, only the scores added
    scored = clean_dataset(built, tmp_path / "scored", mode="none", progress=False)
    scored_frame = load_manifest(tmp_path / "scored")
    assert scored.images == 6 and scored_frame["quality"].tolist() == cleaned["quality"].tolist()
    for column in ("image_path", "large_image_path"):
        for before, after in zip(original[column], scored_frame[column]):
            assert (tmp_path / "ds" / before).read_bytes() == (tmp_path / "scored" / after).read_bytes()
    assert manifest_hash(tmp_path / "scored") == manifest_hash(built)  # the very same pixels
