"""Dataset build: bad input has a defined outcome, duplicates are handled, builds resume."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from herbid.data.build import BuildOptions, build_dataset
from herbid.data.dataset_folder import LARGE_WIDTH, TRAIN_SIZE, load_manifest

OPTIONS = BuildOptions(workers=1, progress=False)


def _sheet(seed: int, size: tuple[int, int] = (300, 450)) -> Image.Image:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 255, (size[1] // 10, size[0] // 10, 3), dtype=np.uint8)
    return Image.fromarray(array).resize(size, Image.Resampling.NEAREST)


def _jpeg_bytes(image: Image.Image, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **kw)
    return buffer.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG that claims width×height pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * (1 + width // 8) * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


@pytest.fixture()
def bad_folder(tmp_path: Path) -> Path:
    root = tmp_path / "collection"
    good = root / "Goodia_bona"
    good.mkdir(parents=True)
    for i in range(3):
        _sheet(i).save(good / f"sheet{i}.jpg", quality=90)
    bad = root / "Malia_varia"
    bad.mkdir()
    (bad / "zero.jpg").write_bytes(b"")
    (bad / "text.jpg").write_bytes(b"this is not an image at all\n" * 10)
    full = _jpeg_bytes(_sheet(10))
    (bad / "truncated.jpg").write_bytes(full[: len(full) // 2])
    _sheet(11).convert("CMYK").save(bad / "cmyk.jpg")
    sixteen = (np.linspace(0, 65535, 200 * 300).reshape(300, 200)).astype(np.uint16)
    Image.fromarray(sixteen).save(bad / "sixteen.png")
    _sheet(12).convert("P", palette=Image.Palette.ADAPTIVE).save(bad / "palette.png")
    rgba = _sheet(13).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(bad / "alpha.png")
    (bad / "bomb.png").write_bytes(_bomb_png(60000, 60000))
    (bad / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))
    # a byte-identical copy of a good sheet filed under another species
    (bad / "copy.jpg").write_bytes((good / "sheet0.jpg").read_bytes())
    return root


def _problems(out: Path) -> list[dict]:
    return json.loads((out / "report.json").read_text())["problems"]


def _outcome(problems: list[dict], name: str) -> tuple[str, str]:
    matches = [p for p in problems if Path(p["where"]).name == name]
    assert matches, f"no report entry for {name}"
    return matches[0]["action"], matches[0]["reason"]


def test_bad_inputs_each_get_a_defined_outcome(bad_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    result = build_dataset([bad_folder], out, BuildOptions(workers=1, progress=False, max_pixels=50_000_000))
    problems = _problems(out)
    assert _outcome(problems, "zero.jpg") == ("quarantined", "empty file (0 bytes)")
    assert _outcome(problems, "text.jpg") == ("quarantined", "not an image (unrecognised format)")
    assert _outcome(problems, "truncated.jpg") == ("quarantined", "truncated image")
    assert _outcome(problems, "bomb.png")[0] == "quarantined"
    assert "decompression bomb" in _outcome(problems, "bomb.png")[1]
    assert _outcome(problems, "garbage.png")[0] == "quarantined"
    for converted in ("cmyk.jpg", "sixteen.png", "palette.png", "alpha.png"):
        assert _outcome(problems, converted) == ("converted", "converted"), converted
    assert _outcome(problems, "copy.jpg")[1] == "exact duplicate"

    manifest = load_manifest(out)
    # 3 good + 4 converted; the copy is kept once (under the first name seen)
    assert result.images == len(manifest) == 7
    assert manifest["sha256"].is_unique
    counts = manifest["scientificName"].value_counts().to_dict()
    assert counts == {"Goodia bona": 3, "Malia varia": 4}
    for rel in manifest["image_path"]:
        with Image.open(out / rel) as image:
            assert image.size == (TRAIN_SIZE, TRAIN_SIZE) and image.mode == "RGB"
    for rel in manifest["large_image_path"]:
        with Image.open(out / rel) as image:
            assert image.width <= LARGE_WIDTH and image.mode == "RGB"


def test_alpha_is_composited_on_white(tmp_path: Path) -> None:
    folder = tmp_path / "in" / "Alba_clara"
    folder.mkdir(parents=True)
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(folder / "clear.png")
    out = tmp_path / "ds"
    build_dataset([tmp_path / "in"], out, OPTIONS)
    row = load_manifest(out).iloc[0]
    pixels = np.asarray(Image.open(out / row["image_path"]))
    assert pixels.min() >= 250  # fully transparent → white paper, not black


def test_large_copy_keeps_aspect_and_draft_decodes_big_jpeg(tmp_path: Path) -> None:
    folder = tmp_path / "in" / "Magna_folia"
    folder.mkdir(parents=True)
    _sheet(1, size=(3000, 4500)).save(folder / "big.jpg", quality=85)
    out = tmp_path / "ds"
    build_dataset([tmp_path / "in"], out, OPTIONS)
    row = load_manifest(out).iloc[0]
    assert (row["width"], row["height"]) == (3000, 4500)  # the original size is recorded
    with Image.open(out / row["large_image_path"]) as large:
        assert large.size == (LARGE_WIDTH, 1536)


def test_rebuild_resumes_without_redecoding(bad_folder: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "ds"
    build_dataset([bad_folder], out, OPTIONS)
    first = load_manifest(out)
    calls = []
    import herbid.data.imaging as imaging

    original = imaging.decode_rgb
    monkeypatch.setattr(imaging, "decode_rgb", lambda *a, **k: calls.append(1) or original(*a, **k))
    build_dataset([bad_folder], out, OPTIONS)
    second = load_manifest(out)
    # only the files that failed before are tried again; every stored image is reused
    assert len(calls) == 5  # zero-byte, text, truncated, bomb, garbage
    pd.testing.assert_frame_equal(first, second)


def test_interrupted_image_leaves_no_partial_files(bad_folder: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "ds"
    import herbid.data.imaging as imaging

    def fail_on_small(image):
        raise KeyboardInterrupt  # killed after the large copy, before the 256 copy and sidecar

    monkeypatch.setattr(imaging, "perceptual_hash", fail_on_small)
    with pytest.raises(KeyboardInterrupt):
        build_dataset([bad_folder], out, OPTIONS)
    leftovers = [p for p in out.rglob("*") if p.is_file() and p.name.endswith(".part")]
    assert leftovers == []
    assert not list((out / "images").rglob("*.json"))  # nothing marked finished
    monkeypatch.undo()
    result = build_dataset([bad_folder], out, OPTIONS)
    assert result.images == 7


def test_species_limits_are_seeded_and_reported(tmp_path: Path) -> None:
    root = tmp_path / "in"
    for species, n in (("Multa_folia", 6), ("Rara_planta", 2)):
        (root / species).mkdir(parents=True)
        for i in range(n):
            _sheet(100 * n + i).save(root / species / f"{i}.jpg")
    options = BuildOptions(workers=1, progress=False, min_per_species=3, max_per_species=4, seed=7)
    result = build_dataset([root], tmp_path / "a", options)
    manifest = load_manifest(tmp_path / "a")
    assert manifest["scientificName"].value_counts().to_dict() == {"Multa folia": 4}
    reasons = result.report["problems_by_reason"]
    assert reasons == {"over --max-per-species": 2, "under --min-per-species": 2}
    again = build_dataset([root], tmp_path / "b", options)
    assert sorted(load_manifest(tmp_path / "b")["image_id"]) == sorted(manifest["image_id"])
    assert again.report["manifest_sha256"] == result.report["manifest_sha256"]


def test_synonyms_are_applied(tmp_path: Path) -> None:
    root = tmp_path / "in"
    for species in ("Vandellia_diffusa", "Lindernia_diffusa"):
        (root / species).mkdir(parents=True)
        _sheet(ord(species[0])).save(root / species / "a.jpg")
    synonyms = tmp_path / "synonyms.csv"
    synonyms.write_text("name,accepted_name\nVandellia diffusa L.,Lindernia diffusa (L.) Wettst.\n")
    result = build_dataset([root], tmp_path / "ds", BuildOptions(workers=1, progress=False, synonyms=synonyms))
    manifest = load_manifest(tmp_path / "ds")
    assert set(manifest["scientificName"]) == {"Lindernia diffusa"}
    assert set(manifest["verbatimScientificName"]) == {"Vandellia_diffusa", "Lindernia_diffusa"}
    assert result.report["problems_by_reason"] == {"synonym replaced": 1}


def test_nothing_is_written_outside_the_output_folder(bad_folder: Path, tmp_path: Path) -> None:
    before = {p for p in bad_folder.rglob("*")}
    build_dataset([bad_folder], tmp_path / "ds", OPTIONS)
    assert {p for p in bad_folder.rglob("*")} == before
