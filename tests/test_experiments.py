"""Experiment names, datasets.toml, cached multi-stage runs, folds and the results tables.

Training uses the tiny ``small_cnn`` for two short epochs on synthetic sheets, so the
numbers mean nothing; what is tested is which stages train, which are reused, and what
is written.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from herbid.data.build import BuildOptions, build_dataset
from herbid.data.dataset_folder import load_manifest, manifest_hash
from herbid.data.synthetic import make_synthetic_collection
from herbid.experiments.datasets import DatasetConfigError, load_datasets_toml, prepare_dataset
from herbid.experiments.report import MARKDOWN_COLUMNS, RESULT_COLUMNS
from herbid.experiments.runner import ExperimentError, run_experiments
from herbid.experiments.spec import SpecError, describe_chain, parse_spec, parse_specs
from herbid.training import loop

FAST = {"arch": "small_cnn", "recipe": "smoke", "epochs": 1, "batch_size": 8, "workers": 0, "device": "cpu",
        "input_size": 64, "resize_size": 72, "max_steps_per_epoch": 2}


# ------------------------------------------------------------------------- grammar


@pytest.mark.parametrize("text, chain, train, test, name", [
    ("R.H255.H255", ("R",), "H255", "H255", "R.H255.H255"),
    ("I.H1K.H1K", ("I",), "H1K", "H1K", "I.H1K.H1K"),
    ("H1K_I.H255.H255", ("I", "H1K"), "H255", "H255", "H1K_I.H255.H255"),
    ("H255.CR.CR", ("R", "H255"), "CR", "CR", "H255.CR.CR"),
    ("H255_R.CR.CR", ("R", "H255"), "CR", "CR", "H255.CR.CR"),  # explicit random base
    ("A_B_I.C.C", ("I", "B", "A"), "C", "C", "A_B_I.C.C"),  # right to left: ImageNet → B → A
    ("a-1_b2.c.d", ("R", "b2", "a-1"), "c", "d", "a-1_b2.c.d"),
])
def test_parse_valid_specs(text, chain, train, test, name):
    spec = parse_spec(text)
    assert (spec.init_chain, spec.train, spec.test, spec.name) == (chain, train, test, name)
    assert parse_spec(spec.name) == spec


@pytest.mark.parametrize("text, fragment", [
    ("", "3 parts"),
    ("R.H255", "3 parts"),
    ("R.H255.H255.X", "3 parts"),
    (".H255.H255", "initialization part is empty"),
    ("R..H255", "training dataset is empty"),
    ("I_A.B.B", "can only end"),
    ("A_I_R.B.B", "can only end"),
    ("A__I.B.B", "initialization dataset is empty"),
    ("R.I.I", "is an initialization"),
    ("R.H 255.H255", "bad dataset alias"),
    ("R.-x.-x", "bad dataset alias"),
])
def test_parse_invalid_specs(text, fragment):
    with pytest.raises(SpecError, match="expected <Initialization>") as info:
        parse_spec(text)
    assert fragment in str(info.value)


def test_chain_of_three_stages_and_descriptions():
    spec = parse_spec("A_B_I.C.D")
    assert spec.pretraining == ("B", "A")
    assert spec.stages == ("B", "A", "C")
    assert spec.aliases == ("B", "A", "C", "D")
    names = {"B": "Herbarium1K"}
    assert describe_chain(spec.init_chain, names) == "ImageNet → Herbarium1K → A"
    assert describe_chain(("R", "H1K")) == "H1K"  # as the paper prints H1K.H255.H255
    assert describe_chain(("R", "H1K"), show_random=True) == "Random → H1K"
    assert describe_chain(("R",)) == "Random"
    assert describe_chain(("I",)) == "ImageNet"


def test_parse_specs_drops_repeats():
    specs = parse_specs(["R.A.A", "H1K_R.A.A", "H1K.A.A", "R.A.A"])
    assert [s.name for s in specs] == ["R.A.A", "H1K.A.A"]


# -------------------------------------------------------------------- datasets.toml


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_toml_relative_paths_and_defaults(tmp_path):
    (tmp_path / "data" / "set").mkdir(parents=True)
    conf = tmp_path / "conf"
    conf.mkdir()
    toml = _write(conf / "datasets.toml", """
[H255]
path = "../data/set"
name = "Herbarium255"
split = { by = "specimen", test_fraction = 0.2, seed = 3 }
folds = 4
[CR]
path = "../data/set"
split = { by = "none", folds = 3 }
""")
    entries = load_datasets_toml(toml)
    assert entries["H255"].path == (tmp_path / "data" / "set").resolve()
    assert entries["H255"].name == "Herbarium255"
    assert (entries["H255"].split.by, entries["H255"].split.test_fraction, entries["H255"].split.seed) == ("specimen", 0.2, 3)
    assert entries["H255"].folds == 4
    assert entries["CR"].name == "CR" and entries["CR"].folds == 3 and entries["CR"].split.test_fraction == 0.3


@pytest.mark.parametrize("body, fragment", [
    ('[A]\nname = "x"\n', "needs path"),
    ('[A]\npath = "missing"\n', "does not exist"),
    ('[A]\npath = "."\nsplitt = {}\n', "unknown key 'splitt'"),
    ('[A]\npath = "."\nsplit = { by = "herbarium" }\n', "split.by 'herbarium'"),
    ('[A]\npath = "."\nsplit = { test_fraction = 1.5 }\n', "fractions"),
    ('[A]\npath = "."\nsplit = { seed = "x" }\n', "seed must be an integer"),
    ('[A]\npath = "."\nsplit = { colour = 1 }\n', "unknown key 'colour'"),
    ('[A]\npath = "."\nfolds = 1\n', "folds must be an integer >= 2"),
    ('[A]\npath = "."\nfolds = 3\nsplit = { folds = 4 }\n', "folds given twice"),
    ('[A]\npath = "."\nbuild = { turbo = true }\n', "unknown key 'turbo'"),
    ('[R]\npath = "."\n', "reserved"),
    ('["A.B"]\npath = "."\n', "bad alias"),
    ('A = 3\n', "expected a table"),
    ('[A\npath = "."\n', "not valid TOML"),
    ('', "no datasets"),
])
def test_toml_errors_are_one_line(tmp_path, body, fragment):
    toml = _write(tmp_path / "datasets.toml", body)
    with pytest.raises(DatasetConfigError) as info:
        load_datasets_toml(toml)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ synthetic data


def _collection(root: Path, name: str, *, seed: int, n_species: int = 4, per_species: int = 8) -> Path:
    return make_synthetic_collection(root / f"{name}-src", n_species=n_species, per_species=per_species,
                                     seed=seed, size=(160, 240))


@pytest.fixture(scope="module")
def collections(tmp_path_factory) -> dict[str, Path]:
    """SYNA: a built dataset folder; SYNB: a raw CSV source (built by the experiments);
    SYNC: a 3-species set (other species than SYNB has)."""
    root = tmp_path_factory.mktemp("collections")
    built = root / "syna"
    build_dataset([_collection(root, "a", seed=1)], built, BuildOptions(workers=1, progress=False))
    return {
        "SYNA": built,
        "SYNB": _collection(root, "b", seed=2),
        "SYNC": build_dataset([_collection(root, "c", seed=3, n_species=3, per_species=4)], root / "sync",
                              BuildOptions(workers=1, progress=False)).out,
    }


@pytest.fixture
def datasets_toml(tmp_path, collections) -> Path:
    return _write(tmp_path / "datasets.toml", "\n".join([
        f'[SYNA]\npath = "{collections["SYNA"]}"\nsplit = {{ by = "collector", test_fraction = 0.3 }}',
        f'[SYNB]\npath = "{collections["SYNB"]}"\nname = "Synthetic B"\nsplit = {{ by = "specimen" }}',
        f'[SYNC]\npath = "{collections["SYNC"]}"\nsplit = {{ by = "specimen" }}',
    ]) + "\n")


@pytest.fixture
def train_calls(monkeypatch) -> list:
    """Every TrainConfig handed to the training loop (the real loop still runs)."""
    calls: list = []
    real = loop.train

    def counting(config, **kwargs):
        calls.append(config)
        return real(config, **kwargs)

    monkeypatch.setattr(loop, "train", counting)
    return calls


def test_prepare_leaves_source_untouched_and_shares_images(tmp_path, collections, datasets_toml):
    source = collections["SYNA"]
    before = manifest_hash(source)
    entry = load_datasets_toml(datasets_toml)["SYNA"]
    prepared = prepare_dataset(entry, tmp_path / "cache", folds=3, progress=False)
    assert manifest_hash(source) == before
    assert (prepared.path / "images").is_symlink()
    assert (prepared.path / "images").resolve() == (source / "images").resolve()
    frame = load_manifest(prepared.path)
    assert set(frame["split"]) == {"train", "test"}
    assert sorted(set(frame["fold"])) == [0, 1, 2]
    assert prepared.species == tuple(sorted(set(frame["scientificName"])))
    again = prepare_dataset(entry, tmp_path / "cache", folds=3, progress=False)
    assert again == prepared
    # without folds: another folder, but the same data key (stages are shared)
    plain = prepare_dataset(entry, tmp_path / "cache", progress=False)
    assert plain.path != prepared.path and plain.data_key() == prepared.data_key()


# ------------------------------------------------------------------------ runs


def test_chain_stages_are_trained_once_across_calls(tmp_path, datasets_toml, train_calls):
    out = tmp_path / "out"
    first = run_experiments(["SYNA.SYNB.SYNB"], datasets_toml, out, base_config=FAST, progress=False)
    assert len(train_calls) == 2  # R → SYNA, then SYNA → SYNB
    assert [Path(c.dataset).name.split("-")[0] for c in train_calls] == ["SYNA", "SYNB"]
    assert train_calls[0].init == "random"
    assert train_calls[1].init == str(Path(train_calls[0].out))  # transfer from stage 1's run folder
    assert train_calls[1].init_chain == ["SYNA"]
    assert len(first.trained) == 2 and first.reused == []
    stage_a, stage_b = first["SYNA.SYNB.SYNB"].folds[0].stage_keys

    train_calls.clear()
    # R.SYNA.SYNA *is* stage 1; SYNA.SYNA.SYNB needs one new stage (R → SYNA → SYNA),
    # tested on SYNB, which has the same species.
    second = run_experiments(["SYNA.SYNB.SYNB", "R.SYNA.SYNA", "SYNA.SYNA.SYNB"], datasets_toml, out,
                             base_config=FAST, progress=False)
    assert len(train_calls) == 1
    assert train_calls[0].init == str(out.resolve() / "cache" / "stages" / stage_a[:20])
    assert set(second.reused) == {stage_a, stage_b}
    assert second["R.SYNA.SYNA"].folds[0].stage_keys == [stage_a]
    rows = list(csv.DictReader(open(second.results_csv, encoding="utf-8")))
    assert [r["Experiment"] for r in rows] == ["SYNA.SYNB.SYNB", "R.SYNA.SYNA", "SYNA.SYNA.SYNB"]
    assert rows[0]["Initialization"] == "SYNA" and rows[0]["Training"] == "Synthetic B"
    assert float(rows[0]["Top-1 accuracy"]) == pytest.approx(first["SYNA.SYNB.SYNB"].top1)


def test_a_changed_config_is_a_new_stage(tmp_path, datasets_toml, train_calls):
    out = tmp_path / "out"
    run_experiments(["R.SYNA.SYNA"], datasets_toml, out, base_config=FAST, progress=False)
    run_experiments(["R.SYNA.SYNA"], datasets_toml, out, base_config={**FAST, "workers": 1}, progress=False)
    assert len(train_calls) == 1  # workers only change speed
    run_experiments(["R.SYNA.SYNA"], datasets_toml, out, base_config={**FAST, "seed": 1}, progress=False)
    assert len(train_calls) == 2


def test_folds_report_mean_and_std(tmp_path, datasets_toml, train_calls):
    out = tmp_path / "out"
    results = run_experiments(["SYNA.SYNB.SYNB"], datasets_toml, out, base_config=FAST, folds=3, progress=False)
    # the SYNA pre-training does not depend on SYNB's folds: trained once, shared by all 3
    assert len(train_calls) == 1 + 3
    assert sorted(c.fold for c in train_calls[1:]) == [0, 1, 2] and train_calls[0].fold is None
    result = results["SYNA.SYNB.SYNB"]
    assert [f.fold for f in result.folds] == [0, 1, 2]
    assert len({f.stage_keys[0] for f in result.folds}) == 1
    assert len({f.stage_keys[1] for f in result.folds}) == 3
    assert result.n == 32  # every image tested exactly once
    assert result.top1 == pytest.approx(sum(f.top1 for f in result.folds) / 3)
    assert result.top1_std is not None and result.top1_std >= 0

    with open(out / "results.csv", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == RESULT_COLUMNS
        (row,) = list(reader)
    assert row["Folds"] == "3" and row["n"] == "32"
    assert float(row["Top-1 std"]) == pytest.approx(result.top1_std)
    lines = (out / "results.md").read_text(encoding="utf-8").splitlines()
    header = next(line for line in lines if line.startswith("| Experiment"))
    assert [c.strip() for c in header.strip("|").split("|")] == list(MARKDOWN_COLUMNS)
    assert "±" in next(line for line in lines if line.startswith("| SYNA.SYNB.SYNB"))
    provenance = json.loads((out / "provenance.json").read_text(encoding="utf-8"))
    assert provenance["herbid_version"] and "git_commit" in provenance
    (experiment,) = provenance["experiments"]
    assert experiment["init_chain"] == ["R", "SYNA"] and experiment["seed"] == 0
    assert len(experiment["folds"]) == 3 and all(len(f["run_dirs"]) == 2 for f in experiment["folds"])
    assert set(experiment["datasets"]) == {"SYNA", "SYNB"}
    assert all(len(d["manifest_hash"]) == 64 for d in experiment["datasets"].values())
    assert (out / "loss_curves.png").stat().st_size > 0


def test_repeats_are_split_seeds_with_matching_training_seeds(tmp_path, datasets_toml, train_calls):
    out = tmp_path / "out"
    single = run_experiments(["R.SYNA.SYNA"], datasets_toml, out, base_config=FAST, progress=False)
    train_calls.clear()
    results = run_experiments(["R.SYNA.SYNA"], datasets_toml, out, base_config=FAST, repeats=3, progress=False)
    result = results["R.SYNA.SYNA"]
    assert [f.repeat for f in result.folds] == [0, 1, 2] and all(f.fold is None for f in result.folds)
    # repeat 0 is the single split with seed 0: its cached stage is reused, 1 and 2 are trained
    assert result.folds[0].stage_keys == single["R.SYNA.SYNA"].folds[0].stage_keys
    assert sorted(c.seed for c in train_calls) == [1, 2]
    # each repeat trains and tests on its own split: different held-out sheets, one dataset
    tests = []
    for config in train_calls:
        frame = load_manifest(config.dataset)
        tests.append(frozenset(frame.loc[frame["split"] == "test", "image_id"]))
    assert len(set(tests)) == 2 and all(len(t) > 0 for t in tests)
    assert result.top1 == pytest.approx(sum(f.top1 for f in result.folds) / 3)
    assert result.top1_std == pytest.approx(__import__("statistics").stdev(f.top1 for f in result.folds))
    assert result.n == sum(int(f.metrics["n"]) for f in result.folds)
    with open(out / "results.csv", encoding="utf-8") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["Repeats"] == "3" and row["Folds"] == "1"
    assert "3 seeds" in next(line for line in (out / "results.md").read_text(encoding="utf-8").splitlines()
                             if line.startswith("| R.SYNA.SYNA"))
    provenance = json.loads((out / "provenance.json").read_text(encoding="utf-8"))
    assert provenance["experiments"][0]["split_and_training_seeds"] == [0, 1, 2]

    # the frozen-feature yardstick on the very same splits
    probe = run_experiments(["R.SYNA.SYNA"], datasets_toml, out, base_config=FAST, repeats=3, method="knn",
                            progress=False)["R.SYNA.SYNA"]
    assert [int(f.metrics["n"]) for f in probe.folds] == [int(f.metrics["n"]) for f in result.folds]
    with pytest.raises(ExperimentError, match="choose one"):
        run_experiments(["R.SYNA.SYNA"], datasets_toml, out, base_config=FAST, repeats=2, folds=3, progress=False)


def test_cross_dataset_needs_known_species(tmp_path, datasets_toml, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("nothing may train when an experiment is invalid")

    monkeypatch.setattr(loop, "train", never)
    with pytest.raises(ExperimentError, match="species of SYNB are not in SYNC's training split"):
        run_experiments(["R.SYNA.SYNA", "R.SYNC.SYNB"], datasets_toml, tmp_path / "out", base_config=FAST,
                        progress=False)
    with pytest.raises(ExperimentError, match="unknown dataset alias 'NOPE'"):
        run_experiments(["NOPE.SYNA.SYNA"], datasets_toml, tmp_path / "out", base_config=FAST, progress=False)
    with pytest.raises(ExperimentError, match="fold, init cannot be set"):
        run_experiments(["R.SYNA.SYNA"], datasets_toml, tmp_path / "out", base_config={**FAST, "init": "imagenet",
                                                                                        "fold": 1}, progress=False)


class _Killed(Exception):
    pass


def test_an_interrupted_stage_resumes(tmp_path, datasets_toml, monkeypatch):
    real = loop.train
    calls: list = []

    def killed_after_epoch_1(config, **kwargs):
        calls.append(config)

        def kill(row):
            raise _Killed(row["epoch"])

        return real(config, hooks=loop.TrainHooks(on_epoch_end=kill), **kwargs)

    two_epochs = {**FAST, "epochs": 2}
    monkeypatch.setattr(loop, "train", killed_after_epoch_1)
    with pytest.raises(_Killed):
        run_experiments(["R.SYNA.SYNA"], datasets_toml, tmp_path / "out", base_config=two_epochs, progress=False)
    assert not (tmp_path / "out" / "results.csv").exists()

    def resumed(config, **kwargs):
        calls.append(config)
        return real(config, **kwargs)

    monkeypatch.setattr(loop, "train", resumed)
    results = run_experiments(["R.SYNA.SYNA"], datasets_toml, tmp_path / "out", base_config=two_epochs,
                              progress=False)
    assert [c.resume for c in calls] == [False, True] and calls[0].out == calls[1].out
    stage = json.loads((Path(calls[1].out) / "stage.json").read_text(encoding="utf-8"))
    assert stage["complete"] and [row["epoch"] for row in stage["history"]] == [1, 2]
    assert results["R.SYNA.SYNA"].n > 0


def test_imagenet_start_needs_imagenet_weights(tmp_path, datasets_toml):
    with pytest.raises(ExperimentError, match="I.SYNA.SYNA start from ImageNet, but small_cnn has no ImageNet"):
        run_experiments(["R.SYNA.SYNA", "I.SYNA.SYNA"], datasets_toml, tmp_path / "out", base_config=FAST,
                        progress=False)
