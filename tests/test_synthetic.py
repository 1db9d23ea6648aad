"""Tests of the synthetic herbarium sheets every other test of the pipeline relies on."""

from __future__ import annotations

import csv
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from herbid.data.names import normalize_collector, parse_scientific_name
from herbid.data.records import DWC_TERMS
from herbid.data.synthetic import (
    CSV_COLUMNS,
    SPECIES,
    SPECIES_NAMES,
    SYNTHETIC_LABEL,
    SheetLayout,
    SheetStyle,
    collector_name,
    make_synthetic_collection,
    render_sheet,
    sheet_rng,
)

FULL = SheetStyle(stamp=True, tape=3)


def _render(species: int, seed: int, style: SheetStyle | None = None, size=(400, 600)) -> tuple[np.ndarray, SheetLayout]:
    image, layout = render_sheet(species, np.random.default_rng(seed), size=size, style=style)
    return np.asarray(image), layout


def _read_rows(table: Path) -> list[dict[str, str]]:
    with open(table, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _all_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- species


def test_species_names_have_genus_and_family_structure():
    assert len(SPECIES_NAMES) >= 12
    assert len(set(SPECIES_NAMES)) == len(SPECIES_NAMES)
    assert all(re.fullmatch(r"[A-Z][a-z]+ [a-z]+", name) for name in SPECIES_NAMES)
    genera = {s.genus for s in SPECIES}
    families = {s.family for s in SPECIES}
    assert len(genera) >= 5 and len(families) >= 3
    assert all(f.endswith("aceae") for f in families)
    # a genus belongs to exactly one family
    assert all(len({s.family for s in SPECIES if s.genus == g}) == 1 for g in genera)
    # the default 4-species collection already has more than one genus and family
    assert len({s.genus for s in SPECIES[:4]}) >= 3 and len({s.family for s in SPECIES[:4]}) >= 2


def test_authorship_is_stripped_by_name_normalisation():
    for spec in SPECIES:
        assert spec.name_with_authorship != spec.name
        assert parse_scientific_name(spec.name_with_authorship).canonical == spec.name


def test_species_differ_in_look():
    looks = {(s.leaf, s.arrangement, s.count, s.colour) for s in SPECIES}
    assert len(looks) == len(SPECIES)
    assert len({s.leaf for s in SPECIES}) >= 12


def test_collector_names_keep_distinct_normalised_keys():
    keys = {normalize_collector(collector_name(k)) for k in range(400)}
    assert len(keys) == 400
    assert collector_name(0) == "A. Ashgrove"


# --------------------------------------------------------------------------- one sheet


def test_render_sheet_returns_portrait_rgb_and_matching_mask():
    image, layout = render_sheet(0, np.random.default_rng(0))
    assert image.mode == "RGB" and image.size == (400, 600)
    assert layout.size == (400, 600) and layout.species == 0
    assert layout.plant_mask.shape == (600, 400) and layout.plant_mask.dtype == bool


def test_render_is_deterministic_per_generator_state():
    a, _ = _render(3, seed=11)
    b, _ = _render(3, seed=11)
    c, _ = _render(3, seed=12)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("species", range(len(SPECIES)))
def test_layout_boxes_are_inside_and_apart_from_the_plant(species):
    pixels, layout = _render(species, seed=100 + species, style=FULL)
    width, height = layout.size
    boxes = layout.element_boxes()
    assert {"label", "barcode", "colour_bar", "ruler", "stamp"} <= set(boxes)
    assert len(layout.tape_boxes) == 3
    for x0, y0, x1, y1 in [*boxes.values(), layout.plant_box]:
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    mask = layout.plant_mask
    assert mask.sum() > 500
    ys, xs = np.nonzero(mask)
    assert layout.plant_box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    printed = {k: b for k, b in boxes.items() if not k.startswith("tape")}
    for x0, y0, x1, y1 in printed.values():
        assert not mask[y0:y1, x0:x1].any()
    for (x0, y0, x1, y1) in layout.tape_boxes:  # tape sits on the plant
        assert layout.plant_box[0] - 40 < x0 and x1 < layout.plant_box[2] + 40
    names = sorted(printed)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ax0, ay0, ax1, ay1 = printed[a]
            bx0, by0, bx1, by1 = printed[b]
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, (a, b)


def test_elements_look_like_what_they_are():
    pixels, layout = _render(0, seed=5, style=FULL)
    grey = pixels.mean(axis=2)
    x0, y0, x1, y1 = layout.label_box
    label = grey[y0:y1, x0:x1]
    assert np.median(label) > 220  # white card ...
    assert 0.05 < (label < 100).mean() < 0.6  # ... with dark text
    x0, y0, x1, y1 = layout.barcode_box
    bars = grey[y0 + 3 : y0 + (y1 - y0) // 2, x0 + 4 : x1 - 4]
    columns = bars.mean(axis=0)
    assert (columns < 80).mean() > 0.25 and (columns > 180).mean() > 0.2  # black and white columns
    assert bars.std(axis=0).mean() < 15  # bars are vertical: columns are uniform
    x0, y0, x1, y1 = layout.colour_bar_box
    patch = pixels[y0:y1, x0:x1].astype(int)
    saturation = patch.max(axis=2) - patch.min(axis=2)
    assert (saturation > 100).mean() > 0.2
    plant = pixels[layout.plant_mask].astype(float).mean(axis=0)
    paper = pixels[~layout.plant_mask & ~layout.element_mask()].astype(float).mean(axis=0)
    assert plant.mean() < paper.mean() - 80  # plant is much darker than paper
    assert paper.min() > 200 and paper[0] >= paper[2]  # cream, not blue


def test_plant_only_style_has_no_elements():
    pixels, layout = _render(4, seed=2, style=SheetStyle.plant_only())
    assert layout.element_boxes() == {}
    assert not layout.element_mask().any()
    assert layout.plant_mask.any()
    saturation = pixels.max(axis=2).astype(int) - pixels.min(axis=2)
    assert (saturation[~layout.plant_mask] > 80).sum() == 0  # no colour patches anywhere


def test_sampled_styles_vary():
    styles = [SheetStyle.sample(np.random.default_rng(i)) for i in range(60)]
    assert Counter(s.label for s in styles).most_common(1)[0][0] == "bottom-right"
    assert len({s.paper for s in styles}) > 30
    assert 0 < sum(s.ruler for s in styles) < 60 and 0 < sum(s.stamp for s in styles) < 60


def test_small_and_invalid_requests():
    image, layout = render_sheet(2, np.random.default_rng(0), size=(64, 96))
    assert image.size == (64, 96) and layout.plant_mask.any()
    with pytest.raises(ValueError):
        render_sheet(len(SPECIES), np.random.default_rng(0))
    with pytest.raises(ValueError):
        SheetStyle(label="top-left")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        make_synthetic_collection("unused", layout="xml")


def test_species_are_distinguishable_by_plant_shape():
    """Nearest centroid on 32×32 plant-mask thumbnails beats chance by far (8 species)."""
    def thumbnail(layout: SheetLayout) -> np.ndarray:
        x0, y0, x1, y1 = layout.plant_box
        crop = Image.fromarray(layout.plant_mask[y0:y1, x0:x1].astype(np.uint8) * 255)
        return np.asarray(crop.resize((32, 32), Image.Resampling.BILINEAR), dtype=float).ravel() / 255

    n_species, n_train, n_test = 8, 6, 4
    features = {s: [thumbnail(_render(s, seed=1000 * s + i)[1]) for i in range(n_train + n_test)] for s in range(n_species)}
    centroids = np.stack([np.mean(features[s][:n_train], axis=0) for s in range(n_species)])
    hits = [
        int(np.argmin(((centroids - f) ** 2).sum(axis=1)) == s)
        for s in range(n_species)
        for f in features[s][n_train:]
    ]
    accuracy = np.mean(hits)
    assert accuracy > 2 / n_species, accuracy


# --------------------------------------------------------------------------- collections


def test_csv_collection_rows_and_columns(tmp_path):
    table = make_synthetic_collection(tmp_path / "c", n_species=4, per_species=6, collectors_per_species=3, size=(120, 180))
    assert table == tmp_path / "c" / "occurrences.csv"
    root = table.parent
    rows = _read_rows(table)
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert set(CSV_COLUMNS) - {"associatedMedia"} <= set(DWC_TERMS)
    assert len(rows) == 24
    per_species = Counter(parse_scientific_name(r["scientificName"]).canonical for r in rows)
    assert per_species == {name: 6 for name in SPECIES_NAMES[:4]}
    by_species = defaultdict(Counter)
    for row in rows:
        spec = SPECIES[SPECIES_NAMES.index(parse_scientific_name(row["scientificName"]).canonical)]
        assert row["scientificName"] == spec.name_with_authorship
        assert (row["genus"], row["family"]) == (spec.genus, spec.family)
        assert row["institutionCode"].startswith("SYN-")
        assert SYNTHETIC_LABEL in row["occurrenceID"]
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", row["eventDate"]) and row["recordNumber"].isdigit()
        assert row["country"]
        by_species[spec.name][row["recordedBy"]] += 1
    for counts in by_species.values():
        assert sorted(counts.values()) == [2, 2, 2]
    # neighbouring species share a collector; 4 species × 3 collectors → 9 people
    collectors = {r["recordedBy"] for r in rows}
    assert len(collectors) == 9
    assert len({normalize_collector(c) for c in collectors}) == 9
    assert len({r["catalogNumber"] for r in rows}) == 24 and len({r["occurrenceID"] for r in rows}) == 24
    assert len({r["institutionCode"] for r in rows}) >= 2
    # a collector's record numbers never repeat
    numbers = Counter((r["recordedBy"], r["recordNumber"]) for r in rows)
    assert max(numbers.values()) == 1
    for row in rows:
        path = root / row["associatedMedia"]
        assert path.parent.name == "images" and path.suffix == ".jpg"
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.size == (120, 180) and image.mode == "RGB"


def test_unshared_collectors(tmp_path):
    rows = _read_rows(make_synthetic_collection(tmp_path, n_species=3, per_species=4, collectors_per_species=2, size=(64, 96), shared_collectors=False))
    by_collector = defaultdict(set)
    for row in rows:
        by_collector[row["recordedBy"]].add(row["scientificName"])
    assert len(by_collector) == 6 and all(len(s) == 1 for s in by_collector.values())


def test_collection_is_byte_identical_per_seed(tmp_path):
    kwargs = dict(n_species=2, per_species=3, size=(96, 144))
    a = _all_bytes(make_synthetic_collection(tmp_path / "a", seed=4, **kwargs).parent)
    b = _all_bytes(make_synthetic_collection(tmp_path / "b", seed=4, **kwargs).parent)
    c = _all_bytes(make_synthetic_collection(tmp_path / "c", seed=5, **kwargs).parent)
    assert a == b
    assert len(a) == 7  # 6 images + CSV
    images_a = {v for k, v in a.items() if k.endswith(".jpg")}
    images_c = {v for k, v in c.items() if k.endswith(".jpg")}
    assert len(images_c) == 6 and not images_a & images_c
    assert a["occurrences.csv"] != c["occurrences.csv"]


def test_collection_sheet_can_be_re_rendered_with_its_layout(tmp_path):
    table = make_synthetic_collection(tmp_path, n_species=2, per_species=2, size=(96, 144), seed=9)
    row = _read_rows(table)[3]  # species 1, sheet 1
    image, layout = render_sheet(1, sheet_rng(9, 1, 1), size=(96, 144))
    saved = np.asarray(Image.open(table.parent / row["associatedMedia"]), dtype=float)
    assert np.abs(saved - np.asarray(image, dtype=float)).mean() < 6  # same sheet up to JPEG
    assert layout.species == 1


def test_folders_layout(tmp_path):
    root = make_synthetic_collection(tmp_path, n_species=3, per_species=4, size=(64, 96), layout="folders")
    folders = sorted(p.name for p in root.iterdir())
    assert folders == sorted(s.file_stem for s in SPECIES[:3])
    for folder in folders:
        files = list((root / folder).iterdir())
        assert len(files) == 4 and all(f.suffix == ".jpg" for f in files)
    assert not (root / "occurrences.csv").exists()


def test_filenames_layout(tmp_path):
    root = make_synthetic_collection(tmp_path, n_species=3, per_species=4, size=(64, 96), layout="filenames")
    files = sorted(p.name for p in root.iterdir())
    assert len(files) == 12
    assert all(re.fullmatch(r"[A-Z][a-z]+_[a-z]+\.\d+\.\d+\.jpg", f) for f in files)
    counts = Counter(f.split(".")[0].replace("_", " ") for f in files)
    assert counts == {name: 4 for name in SPECIES_NAMES[:3]}


@pytest.mark.parametrize(("layout", "kind"), [("csv", "csv"), ("folders", "folders"), ("filenames", "filenames")])
def test_returned_location_is_read_by_the_matching_source(tmp_path, layout, kind):
    """What the function returns is what ``herbid dataset build`` should be given."""
    from herbid.data.sources import ProblemLog, open_source

    location = make_synthetic_collection(tmp_path, n_species=3, per_species=2, size=(64, 96), layout=layout)
    source = open_source(location)
    problems = ProblemLog()
    records = list(source.records(problems))
    assert source.name == kind and len(problems) == 0
    names = Counter(parse_scientific_name(r.scientificName).canonical for r in records)
    assert names == {name: 2 for name in SPECIES_NAMES[:3]}
    assert all(Path(r.source_path).is_file() for r in records)
