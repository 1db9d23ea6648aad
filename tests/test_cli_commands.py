"""``train``, ``evaluate``, ``experiment``, ``models`` and ``dataset clean`` through ``main(argv)``.

One tiny synthetic dataset (4 species × 6 sheets, half held out) and one 1-epoch small_cnn
run trained by the ``train`` command itself; every other command is checked against the
Python API it wraps, on the same files.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from herbid.cli.main import main
from herbid.data.dataset_folder import load_manifest
from herbid.evaluation.evaluate import evaluate_bundle
from herbid.models.registry import MODELS, list_models
from herbid.training import loop
from synthetic_data import half_held_out

#: The training flags of a fast CPU run (``train`` and ``experiment`` take the same ones).
FAST_FLAGS = ["--arch", "small_cnn", "--recipe", "smoke", "--epochs", "1", "--batch-size", "8", "--input-size", "64",
              "--resize-size", "72", "--workers", "0", "--device", "cpu"]
QUALITY_COLUMNS = {"quality", "blur", "exposure", "plant_fraction"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return half_held_out(tmp_path_factory.mktemp("cli-commands"), seed=21, per_species=6)


@pytest.fixture(scope="module")
def run(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """``herbid train ... --json`` once for the module: its exit code, summary and run folder."""
    out = tmp_path_factory.mktemp("cli-run") / "run"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["train", "--dataset", str(dataset), "--out", str(out), *FAST_FLAGS, "--no-progress", "--json"])
    return SimpleNamespace(code=code, summary=json.loads(stdout.getvalue()), out=out)


def _rows(dataset: Path, split: str) -> int:
    return int((load_manifest(dataset)["split"] == split).sum())


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("herbid: error:") and "\n" not in err and "Traceback" not in err
    assert captured.out == ""
    return err


# ------------------------------------------------------------------------------ train


def test_train_writes_a_bundle_and_prints_its_test_metrics(dataset: Path, run: SimpleNamespace) -> None:
    assert run.code == 0
    summary = run.summary
    assert Path(summary["run"]) == run.out and Path(summary["bundle"]) == run.out / "bundle"
    assert (run.out / "bundle" / "weights.pt").is_file()
    meta = json.loads((run.out / "bundle" / "bundle.json").read_text())
    assert meta["arch"] == "small_cnn" and meta["num_classes"] == 4
    assert meta["species"] == sorted(set(load_manifest(dataset)["scientificName"]))
    assert meta["preprocessing"]["input_size"] == 64 and meta["preprocessing"]["resize_size"] == 72
    # the flags reached the config: 1 epoch of the smoke recipe, not the default sheet recipe
    assert (summary["best_epoch"], summary["resumed"]) == (1, False)
    record = json.loads((run.out / "run.json").read_text())
    assert record["epochs"] == 1 and len(record["history"]) == 1
    assert record["final"] == {key[len("test_"):]: value for key, value in summary.items() if key.startswith("test_")}
    # the printed test metrics are the bundle's on the test rows
    assert summary["test_n"] == _rows(dataset, "test") == 12
    metrics = evaluate_bundle(summary["bundle"], dataset, split="test", device="cpu")
    assert summary["test_top1"] == pytest.approx(metrics["top1"]) and 0.0 <= summary["test_top1"] <= 1.0
    assert summary["test_loss"] == pytest.approx(metrics["loss"], rel=1e-4)


def test_train_on_a_missing_dataset_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--dataset", str(tmp_path / "missing"), "--out", str(tmp_path / "run"), *FAST_FLAGS,
                 "--no-progress", "--json"]) == 1
    assert str(tmp_path / "missing") in _one_line_error(capsys)
    assert not (tmp_path / "run" / "bundle").exists()


# --------------------------------------------------------------------------- evaluate


def test_evaluate_json_is_evaluate_bundle(dataset: Path, run: SimpleNamespace,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(run.out), "--dataset", str(dataset), "--device", "cpu", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["n"] == _rows(dataset, "test") == 12 and printed["split"] == "test"
    assert 0.0 <= printed["top1"] <= printed["top5"] <= 1.0
    expected = evaluate_bundle(run.out, dataset, split="test", device="cpu")
    assert printed["top1"] == expected["top1"]
    assert printed == json.loads(json.dumps(expected, default=str))  # every field, per-species rows included
    assert sum(row["n"] for row in printed["per_species"].values()) == printed["n"]

    # the flags reach evaluate_bundle: another split, and k-NN fusion
    assert main(["evaluate", str(run.out), "--dataset", str(dataset), "--device", "cpu", "--split", "train",
                 "--knn-fusion", "0.5", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = evaluate_bundle(run.out, dataset, split="train", device="cpu", knn_fusion=0.5)
    assert printed["n"] == _rows(dataset, "train") == 12 and printed["split"] == "train"
    assert printed["knn_fusion"] == 0.5
    assert (printed["top1"], printed["loss"]) == (expected["top1"], pytest.approx(expected["loss"]))


def test_evaluate_table_leaves_out_the_per_species_rows(dataset: Path, run: SimpleNamespace,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(run.out), "--dataset", str(dataset), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    expected = evaluate_bundle(run.out, dataset, split="test", device="cpu")
    rows = [re.split(r"[│|]", line) for line in out.splitlines()]  # rich's box, or its ASCII fallback
    cells = {row[1].strip(): row[2].strip() for row in rows if len(row) == 4 and row[1].strip()}
    assert cells["n"] == "12" and cells["unknown_species"] == "0" and cells["split"] == "test"
    assert float(cells["top1"]) == pytest.approx(expected["top1"])
    assert "per_species" not in out


def test_evaluate_on_a_missing_dataset_is_one_line(run: SimpleNamespace, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(run.out), "--dataset", str(tmp_path / "missing"), "--device", "cpu",
                 "--json"]) == 1
    assert str(tmp_path / "missing") in _one_line_error(capsys)
    assert main(["evaluate", str(tmp_path / "no-bundle"), "--dataset", str(tmp_path), "--device", "cpu"]) == 1
    _one_line_error(capsys)


# ----------------------------------------------------------------------------- models


def test_models_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--json"]) == 0
    names = json.loads(capsys.readouterr().out)
    assert names == list_models()
    assert "small_cnn" in names and set(MODELS) <= set(names)
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line[:24].rstrip() for line in lines] == names  # one line per model, the name in a 24-wide column
    for name, line in zip(names, lines):
        if name in MODELS:
            assert line[25:] == MODELS[name].description


# ------------------------------------------------------------------------- experiment


def test_experiment_trains_evaluates_and_writes_the_tables(dataset: Path, tmp_path: Path, monkeypatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    toml = tmp_path / "datasets.toml"
    toml.write_text(f'[SYN]\npath = "{dataset}"\nsplit = {{ by = "specimen", test_fraction = 0.5 }}\n')
    out = tmp_path / "out"
    argv = ["experiment", "R.SYN.SYN", "--datasets", str(toml), "--out", str(out), *FAST_FLAGS, "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed == (out / "results.md").read_text(encoding="utf-8") + "\n"
    for name in ("results.csv", "results.md", "provenance.json", "loss_curves.png"):
        assert (out / name).stat().st_size > 0
    (row,) = list(csv.DictReader(open(out / "results.csv", encoding="utf-8")))
    (experiment,) = json.loads((out / "provenance.json").read_text(encoding="utf-8"))["experiments"]
    assert row["Experiment"] == experiment["Experiment"] == "R.SYN.SYN" and row["Folds"] == "1"
    # the row's numbers are the stage's bundle evaluated on the prepared dataset's test rows
    prepared = Path(experiment["datasets"]["SYN"]["prepared"])
    (fold,) = experiment["folds"]
    metrics = evaluate_bundle(fold["run_dirs"][-1], prepared, split="test", device="cpu")
    assert int(row["n"]) == metrics["n"] == _rows(prepared, "test")
    assert float(row["Top-1 accuracy"]) == pytest.approx(metrics["top1"])
    assert json.loads((Path(fold["run_dirs"][-1]) / "run.json").read_text())["epochs"] == 1  # --epochs reached it
    table_row = next(line for line in printed.splitlines() if line.startswith("| R.SYN.SYN |"))
    assert f"| {metrics['top1']:.3f} |" in table_row

    # the same command again reuses the trained stage: nothing is trained, the same row is printed
    def never(*args, **kwargs):
        raise AssertionError("the cached stage must be reused")

    monkeypatch.setattr(loop, "train", never)
    assert main(argv) == 0
    assert table_row in capsys.readouterr().out.splitlines()


def test_experiment_with_an_unknown_alias_is_one_line(dataset: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    toml = tmp_path / "datasets.toml"
    toml.write_text(f'[SYN]\npath = "{dataset}"\n')
    assert main(["experiment", "R.NOPE.NOPE", "--datasets", str(toml), "--out", str(tmp_path / "out"), *FAST_FLAGS,
                 "--no-progress"]) == 1
    assert "NOPE" in _one_line_error(capsys)
    assert not (tmp_path / "out" / "results.md").exists()


# ---------------------------------------------------------------------- dataset clean


def test_dataset_clean_none_keeps_every_row_and_adds_quality(dataset: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "scored"
    assert main(["dataset", "clean", str(dataset), "--out", str(out), "--mode", "none", "--workers", "1",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    before, after = load_manifest(dataset), load_manifest(out)
    assert summary["images"] == len(after) == len(before) == 24
    assert (summary["mode"], Path(summary["out"])) == ("none", out)
    # the same rows in the same order, every original column kept, the quality columns added
    assert after["image_id"].tolist() == before["image_id"].tolist()
    assert after["scientificName"].tolist() == before["scientificName"].tolist()
    assert after["split"].tolist() == before["split"].tolist()
    assert set(after.columns) - set(before.columns) == QUALITY_COLUMNS
    assert after["quality"].notna().all() and after["quality"].between(0.0, 1.0).all()
    assert after["plant_fraction"].between(0.0, 1.0).all()
    # mode none: the very same image files, so no cleaned-pixel hash
    for (_, old), (_, new) in zip(before.iterrows(), after.iterrows()):
        assert (out / new["image_path"]).read_bytes() == (dataset / old["image_path"]).read_bytes()
    report = json.loads((out / "clean.json").read_text())
    assert (report["mode"], report["images"]) == ("none", 24)


def test_dataset_clean_errors_are_one_line(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dataset", "clean", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--mode", "none",
                 "--json"]) == 1
    assert str(tmp_path / "missing") in _one_line_error(capsys)
    assert main(["dataset", "clean", str(dataset), "--out", str(dataset), "--mode", "none", "--json"]) == 1
    assert "own folder" in _one_line_error(capsys)
