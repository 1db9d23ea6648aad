"""The institution as a first-class column: splits that hold herbaria out, and metrics that
tell whether a model learned the plant or the herbarium."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from herbid.cli.dataset import SPLIT_MODES
from herbid.cli.main import main
from herbid.data.build import BuildOptions, build_dataset
from herbid.data.dataset_folder import load_manifest
from herbid.data.grouping import GROUP_MODES
from herbid.data.splits import split_dataset
from herbid.data.synthetic import make_synthetic_collection
from herbid.errors import InvalidOption
from herbid.evaluation.evaluate import evaluate_bundle
from herbid.evaluation.shortcut import institution_metrics
from herbid.training.config import TrainConfig
from herbid.training.loop import train

SPECIES = ["Viola alba", "Viola betonicifolia"]


def _frame(rows: list[tuple[str, str | None]]) -> pd.DataFrame:
    return pd.DataFrame({"scientificName": [r[0] for r in rows], "institutionCode": [r[1] for r in rows]})


def test_seen_and_unseen_pairs_and_the_shortcut_share() -> None:
    a, b = SPECIES
    train_rows = _frame([(a, "X"), (a, "X"), (b, "Y")])
    test_rows = _frame([(a, "X"), (a, "Y"), (b, "X"), (b, "Y"), (b, None)])
    # predicted: a (right), b (wrong: b was trained from Y), a (wrong: a trained from X), b (right), a (wrong)
    probabilities = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6], [0.6, 0.4]])
    targets = torch.tensor([0, 0, 1, 1, 1])
    metrics = institution_metrics(train_rows, test_rows, probabilities, targets, SPECIES)
    assert metrics["seen_pairs"] == {"top1": 1.0, "top5": 1.0, "n": 2}
    assert metrics["unseen_pairs"] == {"top1": 0.0, "top5": 1.0, "n": 2}
    # both wrong answers with a known institution name the species trained from that institution
    assert metrics["wrong"] == 2 and metrics["shortcut_share"] == 1.0
    assert metrics["shortcut_chance"] == 0.5  # one of the two species per institution


def test_no_institution_no_metrics() -> None:
    rows = _frame([(SPECIES[0], None), (SPECIES[1], None)])
    assert institution_metrics(rows, rows, torch.eye(2), torch.tensor([0, 1]), SPECIES) is None


def test_the_cli_knows_every_split_mode() -> None:
    assert sorted(SPLIT_MODES) == sorted(GROUP_MODES)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("institutions")
    source = make_synthetic_collection(root / "source", n_species=4, per_species=9, seed=8, size=(160, 240))
    return build_dataset([source], root / "dataset", BuildOptions(workers=1, progress=False)).out


def test_split_by_institution_tests_unseen_species_institution_pairs(dataset: Path) -> None:
    assert main(["dataset", "split", str(dataset), "--by", "institution", "--test-fraction", "0.3", "--seed", "0",
                 "--json"]) == 0
    frame = load_manifest(dataset)
    sides = frame.groupby(["scientificName", "institutionCode"])["split"].agg(set)
    assert all(len(split) == 1 for split in sides), sides.to_dict()  # no pair on both sides
    assert set(frame["split"]) == {"train", "test"}
    # so every test sheet is an unseen pair for the institution metrics
    train_rows, test_rows = frame[frame["split"] == "train"], frame[frame["split"] == "test"]
    targets = torch.zeros(len(test_rows), dtype=torch.long)
    metrics = institution_metrics(train_rows, test_rows, torch.ones(len(test_rows), 4), targets, ["a", "b", "c", "d"])
    assert metrics["seen_pairs"]["n"] == 0 and metrics["unseen_pairs"]["n"] == len(test_rows)


def test_evaluate_reports_institution_metrics(dataset: Path, tmp_path: Path) -> None:
    split_dataset(dataset, by="none", test_fraction=0.4, seed=0)
    run = train(TrainConfig.from_recipe("smoke", dataset=str(dataset), out=str(tmp_path / "run"), epochs=1,
                                        input_size=64, resize_size=72, device="cpu"), progress=False)
    result = evaluate_bundle(run.bundle_dir, dataset, device="cpu")
    assert result["seen_pairs"]["n"] + result["unseen_pairs"]["n"] == result["n"]
    assert result["seen_pairs"]["n"] > 0 and 0.0 <= result["shortcut_chance"] <= 1.0
    wrong = round((1 - result["top1"]) * result["n"])
    assert result["wrong"] == wrong
    assert json.loads(json.dumps(result))["seen_pairs"] == result["seen_pairs"]  # JSON-ready


def test_institutions_from_file_names(tmp_path: Path) -> None:
    source = make_synthetic_collection(tmp_path / "source", n_species=2, per_species=3, seed=2, size=(120, 180),
                                       layout="folders")
    files = sorted(p for p in source.rglob("*.jpg"))
    for index, path in enumerate(files):  # viola-dev style names: Vxx_YY_ZZZ.jpg
        path.rename(path.with_name(f"V{index:02d}_{10 + index % 2}_{index:03d}.jpg"))
    out = tmp_path / "dataset"
    assert main(["dataset", "build", str(source), "--out", str(out), "--workers", "1", "--no-progress",
                 "--institution-pattern", r"^V\d+_(?P<institution>\d+)_"]) == 0
    frame = load_manifest(out)
    assert sorted(frame["institutionCode"].unique()) == ["10", "11"] and len(frame) == len(files)
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["institutions_from_file_names"] == len(files)
    assert main(["dataset", "build", str(source), "--out", str(tmp_path / "bad"), "--workers", "1",
                 "--no-progress", "--institution-pattern", "V(unclosed"]) == 1


# ------------------------------------------------------- institution-balanced weights


def test_institution_weights_balance_each_species_herbaria() -> None:
    from herbid.training.data import institution_weights

    frame = pd.DataFrame({"scientificName": ["a", "a", "a", "a", "b", "b"],
                          "institutionCode": ["X", "X", "X", "Y", "X", "Y"]})
    weights = institution_weights(frame)
    assert weights == pytest.approx([4 / 6, 4 / 6, 4 / 6, 2.0, 1.0, 1.0])
    # every (species, herbarium) pair weighs the same within a species; each species keeps its count
    assert sum(weights[:3]) == pytest.approx(weights[3]) and sum(weights[:4]) == pytest.approx(4)
    with pytest.raises(InvalidOption, match="institutionCode"):
        institution_weights(frame.assign(institutionCode=[None, "X", "X", "Y", "X", "Y"]))


def test_weighted_probe_equals_repeated_rows() -> None:
    from herbid.evaluation.baselines import fit_logistic_regression

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 5)), np.arange(12) % 3
    weighted = fit_logistic_regression(x, y, 3, sample_weight=np.r_[2.0, np.ones(11)])
    repeated = fit_logistic_regression(np.r_[x[:1], x], np.r_[y[:1], y], 3)
    # same loss up to the standardiser (fitted on the rows as given): compare predictions
    assert np.abs(weighted.predict_proba(x) - repeated.predict_proba(x)).max() < 0.05
    plain = fit_logistic_regression(x, y, 3)
    same = fit_logistic_regression(x, y, 3, sample_weight=np.full(12, 3.0))
    assert np.allclose(plain.predict_proba(x), same.predict_proba(x), atol=1e-6)


def test_institution_weights_reduce_a_confounded_shortcut() -> None:
    """Species confounded with the herbarium (paper colour as a clean feature, the plant as a
    noisy one): the institution metrics detect the shortcut, and balancing each species'
    herbaria in the probe's loss moves it onto the plant."""
    from herbid.evaluation.baselines import fit_logistic_regression
    from herbid.training.data import institution_weights

    rng = np.random.default_rng(0)

    def sheets(species: str, institution: str, n: int) -> tuple[np.ndarray, list[tuple[str, str]]]:
        plant = (1.0 if species == SPECIES[0] else -1.0) + rng.normal(0, 1.0, n)
        paper = (1.0 if institution.startswith("X") else -1.0) + rng.normal(0, 0.1, n)
        return np.c_[plant, paper], [(species, institution)] * n

    a, b = SPECIES
    # a few sheets of each species from a second herbarium whose paper looks like the other's
    parts = [sheets(a, "X", 47), sheets(a, "Y2", 3), sheets(b, "Y", 47), sheets(b, "X2", 3)]
    train_x, train_rows = np.concatenate([p[0] for p in parts]), _frame([r for p in parts for r in p[1]])
    tests = [sheets(a, "X", 50), sheets(a, "Y", 50), sheets(b, "Y", 50), sheets(b, "X", 50)]  # 100 unseen pairs
    test_x, test_rows = np.concatenate([p[0] for p in tests]), _frame([r for p in tests for r in p[1]])
    train_y = (train_rows["scientificName"] == b).to_numpy().astype(int)
    test_y = torch.as_tensor((test_rows["scientificName"] == b).to_numpy().astype(int))

    def metrics(weights: list[float] | None) -> dict:
        probe = fit_logistic_regression(train_x, train_y, 2, sample_weight=weights)
        probabilities = torch.as_tensor(probe.predict_proba(test_x))
        return institution_metrics(train_rows, test_rows, probabilities, test_y, SPECIES)

    plain, balanced = metrics(None), metrics(institution_weights(train_rows))
    # detected: the plain probe names the herbarium's species on sheets from the "wrong" herbarium
    assert plain["seen_pairs"]["top1"] > 0.9 and plain["unseen_pairs"]["top1"] < 0.5
    assert plain["shortcut_share"] > 0.9 > plain["shortcut_chance"]
    # reduced: with balanced herbaria the unseen pairs are named from the plant
    assert balanced["unseen_pairs"]["top1"] > plain["unseen_pairs"]["top1"] + 0.2
    assert balanced["shortcut_share"] < plain["shortcut_share"] - 0.2
    # (at a price on the seen pairs, which the herbarium had made easy: 0.97 → 0.82 here)
