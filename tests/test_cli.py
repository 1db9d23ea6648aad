"""The CLI end to end on synthetic sheets: build → split → audit → stats, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from herbid.cli.main import main
from herbid.data.dataset_folder import load_manifest, read_json
from herbid.data.synthetic import make_synthetic_collection


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_collection(root, n_species=4, per_species=9, collectors_per_species=3, seed=3)


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_build_split_audit_stats(collection: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ds"
    assert main(["dataset", "build", str(collection), "--out", str(out), "--workers", "1",
                 "--no-progress", "--json"]) == 0
    built = _json(capsys)
    assert built["images"] == 36 and built["species"] == 4
    manifest = load_manifest(out)
    # authorship stripped from the CSV's names, collectors kept verbatim
    assert all(len(name.split()) == 2 for name in manifest["scientificName"])
    assert manifest["recordedBy"].notna().all()

    assert main(["dataset", "split", str(out), "--by", "collector", "--test-fraction", "0.3",
                 "--seed", "0", "--json"]) == 0
    split = _json(capsys)
    assert split["counts"]["train"] + split["counts"]["test"] == 36
    assert 0.15 <= split["achieved"]["test"] <= 0.45
    assert read_json(out / "splits.json")["seed"] == 0

    assert main(["dataset", "audit", str(out), "--json", "--strict"]) == 0
    audit = _json(capsys)
    assert (audit["groups_in_both"], audit["identical_images_across"], audit["near_duplicates_across"]) == (0, 0, 0)

    assert main(["dataset", "stats", str(out), "--json"]) == 0
    stats = _json(capsys)
    assert stats["images"] == 36 and stats["species"] == 4
    assert stats["images_per_species"] == {"min": 9, "median": 9.0, "max": 9}


def test_folds_cover_every_image_once(collection: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ds"
    main(["dataset", "build", str(collection), "--out", str(out), "--workers", "1", "--no-progress", "--json"])
    capsys.readouterr()
    assert main(["dataset", "split", str(out), "--folds", "3", "--seed", "1", "--json"]) == 0
    manifest = load_manifest(out)
    assert sorted(manifest["fold"].unique().tolist()) == [0, 1, 2]
    for _, group in manifest.groupby(["scientificName", "recordedBy"]):
        assert group["fold"].nunique() == 1


def test_user_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert main(["dataset", "stats", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("herbid: error:") and "\n" not in err
    assert main(["dataset", "build", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    assert "no such file or folder" in capsys.readouterr().out + (tmp_path / "o" / "report.json").read_text()


def test_help_does_not_import_torch() -> None:
    code = "import sys; from herbid.cli.main import main\ntry: main(['--help'])\nexcept SystemExit: pass\nprint('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().endswith("False")


def test_demo_offline_runs_on_synthetic_sheets(tmp_path: Path, monkeypatch, capsys) -> None:
    import herbid.demo as demo

    monkeypatch.delenv("DEMO_SOURCE", raising=False)
    monkeypatch.setattr(demo, "is_online", lambda *a, **k: False)
    # the demo's own EfficientNet-Lite0 runs take minutes; the tiny CNN checks the wiring
    monkeypatch.setattr(demo, "DEMO_TRAINING", {"arch": "small_cnn", "epochs": 2, "lr": 0.05})
    monkeypatch.setattr(demo, "DEMO_EXPERIMENTS", ("R.DEMO.DEMO",))
    assert main(["demo", "--out", str(tmp_path), "--workers", "1"]) == 0
    captured = capsys.readouterr()
    assert "SYNTHETIC" in captured.err
    manifest = load_manifest(tmp_path / "dataset-synthetic")
    assert len(manifest) == 72 and set(manifest["split"]) == {"train", "test"}
    assert "| R.DEMO.DEMO |" in captured.out  # the results table is printed
    results = (tmp_path / "experiments" / "results.csv").read_text().splitlines()
    assert results[0].startswith("Experiment,Initialization,Training,Testing,Top-1 accuracy,Top-5 accuracy")
    assert len(results) == 2
