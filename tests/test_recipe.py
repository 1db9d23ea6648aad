"""The pieces of herbid's default ``sheet`` recipe and the experiment baselines.

Test-time flips, vertical flips, the linear-probe head (LP-FT), and ``herbid experiment --method linear-probe|knn``; small_cnn on synthetic
sheets, on the CPU.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from herbid.evaluation.baselines import run_baseline
from herbid.evaluation.evaluate import evaluate_bundle
from herbid.experiments.runner import ExperimentError, run_experiments
from herbid.inference.bundle import load_bundle
from herbid.inference.forward import SheetClassifier, forward
from herbid.training import loop
from herbid.training.config import DEFAULT_RECIPE, RECIPES, ConfigError, TrainConfig, load_config
from herbid.training.data import TrainTransform
from herbid.training.loop import train
from synthetic_data import half_held_out

SMALL = dict(arch="small_cnn", batch_size=4, lr=0.02, workers=0, device="cpu", input_size=64, resize_size=72)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return half_held_out(tmp_path_factory.mktemp("recipe"), seed=5, per_species=8)


# ----------------------------------------------------------------------- configs


def test_default_recipe_is_sheet_and_bare_config_is_the_paper() -> None:
    assert DEFAULT_RECIPE == "sheet"
    config = load_config()
    assert config.recipe == "sheet"
    assert (config.init, config.tta, config.head_init, config.vflip) == ("imagenet", "flip", "linear-probe", True)
    assert config.input_size > 224  # higher resolution than the paper's crops
    paper = load_config(overrides={"recipe": "paper"})
    assert paper == TrainConfig.from_recipe("paper")
    assert load_config() == TrainConfig()  # one default: the API's, the CLI's and load_config's
    assert (paper.lr, paper.batch_size, paper.input_size, paper.tta) == (0.0075, 16, None, "none")
    assert set(RECIPES) >= {"paper", "sheet", "smoke"}


@pytest.mark.parametrize("overrides, message", [({"tta": "rot"}, "tta must be"),
                                                ({"head_init": "zeros"}, "head_init must be"),
                                                ({"aspect": 0.1}, "aspect must be"),
                                                ({"aspect": 1.4, "rot90": True}, "rot90 needs aspect")])
def test_new_options_are_validated(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides)


# --------------------------------------------------------------------------- TTA


def test_flip_tta_is_the_mean_of_the_views() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(2, 5)).eval()
    x = torch.randn(2, 3, 16, 12)
    with torch.no_grad():
        assert torch.equal(SheetClassifier(model, "none")(x), model(x))
        expected = (model(x) + model(x.flip(3))) / 2
        assert torch.allclose(SheetClassifier(model, "flip")(x), expected, atol=1e-6)
        four = (model(x) + model(x.flip(3)) + model(x.flip(2)) + model(x.flip(2).flip(3))) / 4
        assert torch.allclose(SheetClassifier(model, "flip2")(x), four, atol=1e-6)
        # a mirror-invariant result: the flipped image gets the same flip-TTA logits
        assert torch.allclose(SheetClassifier(model, "flip")(x.flip(3)), expected, atol=1e-6)
    # forward() gives the same logits batch by batch, on a loader
    out = forward(model, [x[:1], x[1:]], "cpu", tta="flip")
    assert torch.allclose(out.logits, expected, atol=1e-6) and out.pooled is None
    with pytest.raises(ValueError, match="unknown tta"):
        SheetClassifier(model, "rot")


def test_vflip_flips_rows_and_leaves_other_configs_unchanged() -> None:
    image = Image.fromarray(np.arange(40 * 40 * 3, dtype=np.uint8).reshape(40, 40, 3))
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    plain = TrainTransform(32, 40, mean, std, hflip=True)
    explicit = TrainTransform(32, 40, mean, std, hflip=True, vflip=False)
    both = TrainTransform(32, 40, mean, std, hflip=False, vflip=True)
    for seed in range(8):  # no extra random draw without vflip: old runs replay exactly
        assert torch.equal(plain(image, random.Random(seed)), explicit(image, random.Random(seed)))
    outputs = [both(image, random.Random(seed)) for seed in range(16)]
    # rows of the source increase downwards; a flipped crop has them decreasing
    flipped = [bool(out[0, 0, 0] > out[0, -1, 0]) for out in outputs]
    assert 0 < sum(flipped) < len(flipped)


# ----------------------------------------------------------------------- LP head


def test_linear_probe_head_fits_the_training_images(dataset: Path, tmp_path: Path) -> None:
    """With 0 epochs the bundle is the initial model: an LP head already separates the
    training sheets; a random head is at chance."""
    probe = train(TrainConfig.from_recipe("paper", dataset=str(dataset), out=str(tmp_path / "lp"), epochs=0, head_init="linear-probe",
                              **SMALL), progress=False)
    fresh = train(TrainConfig.from_recipe("paper", dataset=str(dataset), out=str(tmp_path / "random"), epochs=0, **SMALL), progress=False)
    on_train = evaluate_bundle(probe.bundle_dir, dataset, split="train", device="cpu")
    assert on_train["top1"] >= 0.9
    assert evaluate_bundle(fresh.bundle_dir, dataset, split="train", device="cpu")["top1"] <= 0.5
    assert "linear probe on 16 training images" in load_bundle(probe.bundle_dir).provenance["init"]["note"]


def test_bundle_carries_tta_to_evaluation(dataset: Path, tmp_path: Path) -> None:
    result = train(TrainConfig.from_recipe("paper", dataset=str(dataset), out=str(tmp_path / "tta"), epochs=1, tta="flip", **SMALL),
                   progress=False)
    bundle = load_bundle(result.bundle_dir)
    assert bundle.preprocessing.tta == "flip"
    metrics = evaluate_bundle(bundle, dataset, split="test", device="cpu")
    # the loop's own test metrics (TTA applied there too) are the bundle's
    assert metrics["top1"] == pytest.approx(result.final["top1"]) and metrics["n"] == result.final["n"]
    assert metrics["loss"] == pytest.approx(result.final["loss"], rel=1e-5) and metrics["tta"] == "flip"
    # and evaluate really applies the flip: without it the same bundle gives other logits
    unflipped = evaluate_bundle(bundle, dataset, split="test", device="cpu", tta="none")
    assert unflipped["tta"] == "none" and unflipped["n"] == metrics["n"]
    assert unflipped["loss"] != pytest.approx(metrics["loss"], rel=1e-6)


# ------------------------------------------------------------ experiment baselines


def _toml(tmp_path: Path, dataset: Path) -> Path:
    path = tmp_path / "datasets.toml"
    path.write_text(f'[SYN]\npath = "{dataset}"\nsplit = {{ by = "specimen", test_fraction = 0.5 }}\n')
    return path


@pytest.mark.parametrize("method", ["linear-probe", "knn"])
def test_experiment_baseline_methods(dataset: Path, tmp_path: Path, method: str, monkeypatch) -> None:
    def never(*args, **kwargs):
        raise AssertionError("a baseline must not fine-tune")

    monkeypatch.setattr(loop, "train", never)
    base = {"arch": "small_cnn", "resize_size": 64, "aspect": 1.0, "device": "cpu"}
    out = tmp_path / "out"
    results = run_experiments(["R.SYN.SYN"], _toml(tmp_path, dataset), out, base_config=base, folds=2,
                              method=method, progress=False)
    row = results["R.SYN.SYN"]
    assert row.method == method and row.n_folds == 2 and row.n == 32
    # each fold is the baseline on that fold of the prepared dataset with the experiment's
    # options (random small_cnn, the whole 64 px sheet), computed here directly; the row is their mean
    prepared = row.provenance["datasets"]["SYN"]["prepared"]
    direct = [run_baseline(method, prepared, arch="small_cnn", init="random", fold=k, input_size=64,
                           resize_size=64, device="cpu") for k in (0, 1)]
    assert [f.fold for f in row.folds] == [0, 1]
    assert [(f.metrics["top1"], f.metrics["n"]) for f in row.folds] == [(d["top1"], d["n"]) for d in direct]
    assert sum(d["n"] for d in direct) == 32  # every sheet tested once
    assert row.top1 == pytest.approx(np.mean([d["top1"] for d in direct]))
    assert row.top5 == 1.0  # 4 species: top-5 is always right
    assert row.top1 >= 0.5  # chance is 1/4
    markdown = results.results_md.read_text()
    assert f"| R.SYN.SYN | {method} | Random | SYN | SYN | {row.top1:.3f} ± {row.top1_std:.3f} |" in markdown
    cached = sorted((out / "cache" / "baselines").iterdir())
    assert len(cached) == 2  # one per fold
    again = run_experiments(["R.SYN.SYN"], _toml(tmp_path, dataset), out, base_config=base, folds=2,
                            method=method, progress=False)
    assert again["R.SYN.SYN"].top1 == row.top1 and sorted((out / "cache" / "baselines").iterdir()) == cached


def test_unknown_experiment_method(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ExperimentError, match="linear-probe"):
        run_experiments(["R.SYN.SYN"], _toml(tmp_path, dataset), tmp_path / "out", method="svm", progress=False)


# ------------------------------------------------------------------ taxonomy loss


def test_hierarchical_loss_prefers_the_right_genus() -> None:
    from herbid.training.losses import HierarchicalLoss, make_criterion, rank_groups

    species = ["Acer rubrum", "Acer saccharum", "Quercus alba"]
    taxonomy = {"Acer rubrum": {"genus": "Acer", "family": "Sapindaceae"},
                "Acer saccharum": {"genus": "Acer", "family": "Sapindaceae"},
                "Quercus alba": {"genus": "Quercus", "family": "Fagaceae"}}
    assert rank_groups(species, taxonomy, "genus").tolist() == [0, 0, 1]
    one_genus = {s: {"genus": "Viola", "family": None} for s in species}
    assert rank_groups(species, one_genus, "genus") is None and rank_groups(species, one_genus, "family") is None
    loss = HierarchicalLoss(species, taxonomy, weight=1.0)
    assert loss.ranks == ["genus", "family"]
    target = torch.tensor([0])
    right_genus = torch.tensor([[0.0, 3.0, 0.0]])  # wrong species, right genus
    wrong_genus = torch.tensor([[0.0, 0.0, 3.0]])  # wrong species, wrong genus
    plain = torch.nn.CrossEntropyLoss()
    assert plain(right_genus, target) == pytest.approx(plain(wrong_genus, target).item())
    assert loss(right_genus, target) < loss(wrong_genus, target)
    # the genus term is exactly −log p(genus): here p(Acer) = (1 + e³) / (2 + e³)
    p_acer = (1 + np.exp(3.0)) / (2 + np.exp(3.0))
    expected = plain(right_genus, target).item() - 2 * np.log(p_acer)  # genus and family coincide here
    assert loss(right_genus, target).item() == pytest.approx(expected, rel=1e-5)
    # without usable ranks (one genus) it is the plain species loss
    same = make_criterion(species, one_genus, label_smoothing=0.0, taxonomy_weight=0.5)
    assert same(wrong_genus, target).item() == pytest.approx(plain(wrong_genus, target).item())


def test_training_with_taxonomy_loss_learns(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    config = TrainConfig.from_recipe("paper", dataset=str(dataset), out=str(tmp_path / "tax"), epochs=6, taxonomy_loss=0.5, seed=1,
                         **SMALL)
    criterion = loop.make_criterion(["a", "b"], {"a": {"genus": "A"}, "b": {"genus": "B"}}, label_smoothing=0.0,
                                    taxonomy_weight=0.5)
    assert criterion.ranks == ["genus"]
    built = []  # the criterion the training loop builds (the real one, recorded)
    real = loop.make_criterion
    monkeypatch.setattr(loop, "make_criterion", lambda *a, **kw: built.append(real(*a, **kw)) or built[-1])
    result = train(config, progress=False)
    # the synthetic species span 3 genera and 2 families: both rank terms, at the configured weight
    (used,) = built
    assert used.weight == 0.5 and used.ranks == ["genus", "family"]
    losses = [row["train_loss"] for row in result.history]
    assert len(losses) == 6 and all(np.isfinite(losses)) and losses[-1] < losses[0]


# ---------------------------------------------------- augmentations added for sheets


def test_rot90_turns_some_crops_and_replays_older_configs() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    plain = TrainTransform(32, 40, mean, std, hflip=True, vflip=True)
    turning = TrainTransform(32, 40, mean, std, hflip=True, vflip=True, rot90=True)
    turned = 0
    for seed in range(16):
        base, out = plain(image, random.Random(seed)), turning(image, random.Random(seed))
        # same crop and flips (the turn is drawn last), then either kept or turned by 90°
        if not torch.equal(base, out):
            assert torch.equal(out, torch.rot90(base, 1, (1, 2)))
            turned += 1
    assert 0 < turned < 16


def test_zoom_crops_cover_at_least_the_minimum_area() -> None:
    # a sheet whose pixel values encode their column: a crop's value range gives its width
    columns = np.tile(np.arange(100, dtype=np.uint8), (100, 1))
    image = Image.fromarray(np.stack([columns] * 3, axis=2))
    zoom = TrainTransform(50, 100, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), hflip=False, min_crop_area=0.5)
    widths = []
    for seed in range(20):
        out = zoom(image, random.Random(seed))
        assert out.shape == (3, 50, 50)
        widths.append(float(out[0, 0, -1] - out[0, 0, 0]) * 255 + 1)  # source columns spanned
    assert min(widths) >= np.sqrt(0.5) * 100 - 3 and max(widths) <= 100
    assert max(widths) - min(widths) > 5  # the zoom varies
    plain = TrainTransform(50, 100, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), hflip=False)
    for seed in range(5):
        out = plain(image, random.Random(seed))
        assert round(float(out[0, 0, -1] - out[0, 0, 0]) * 255) == 49  # a fixed 50-column crop


def test_sheet_aspect_keeps_the_shape_and_turns_landscape_images(tmp_path: Path) -> None:
    from herbid.inference.pixels import EvalTransform, read_squeezed

    # a landscape photo of a portrait sheet: a red band along its right edge, which a
    # quarter turn to the left makes the top
    pixels = np.full((60, 90, 3), 255, dtype=np.uint8)
    pixels[:, -10:] = (255, 0, 0)
    Image.fromarray(pixels).save(tmp_path / "landscape.png")
    upright = read_squeezed(tmp_path / "landscape.png", 40, aspect=1.5)
    assert upright.size == (40, 60)  # width × height: portrait, nothing squashed
    red = np.asarray(upright)[..., 1] < 128
    assert red[:5].all() and not red[10:].any()  # turned, not squeezed: the band is at the top
    square = read_squeezed(tmp_path / "landscape.png", 40)
    assert square.size == (40, 40) and (np.asarray(square)[:, -3:, 1] < 128).all()  # aspect 1: the paper's squeeze

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 40, 3), dtype=np.uint8))
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    crop = TrainTransform(32, 40, mean, std, aspect=1.5)(image, random.Random(0))
    zoom = TrainTransform(32, 40, mean, std, aspect=1.5, min_crop_area=0.5)(image, random.Random(0))
    centre = EvalTransform(32, 40, mean, std, aspect=1.5)(image)
    assert crop.shape == zoom.shape == centre.shape == (3, 48, 32)
    assert torch.equal(centre, torch.from_numpy(np.asarray(image)[6:54, 4:36].transpose(2, 0, 1) / np.float32(255)))
    with pytest.raises(ValueError, match="rot90"):
        TrainTransform(32, 40, mean, std, rot90=True, aspect=1.5)


def test_scanner_jitter_is_bounded_and_seeded() -> None:
    from herbid.training.data import scanner_jitter

    rng = np.random.default_rng(1)
    base = rng.uniform(0.2, 0.8, (3, 16, 16)).astype(np.float32)
    a = scanner_jitter(base.copy(), random.Random(3), 0.1)
    b = scanner_jitter(base.copy(), random.Random(3), 0.1)
    assert np.array_equal(a, b)  # the sample's seed decides everything
    assert a.min() >= 0.0 and a.max() <= 1.0 and not np.array_equal(a, base)
    # at most ±10 % brightness, ±10 % contrast and ±5 % per channel: small, scanner-like changes
    assert np.abs(a.mean() - base.mean()) <= 0.17 * base.mean()
    ratio = a.mean(axis=(1, 2)) / base.mean(axis=(1, 2))
    assert ratio.max() / ratio.min() <= 1.06 / 0.94 + 1e-3
    transform = TrainTransform(32, 40, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), jitter=0.1)
    image = Image.fromarray(np.full((40, 40, 3), 128, dtype=np.uint8))
    outs = {round(float(transform(image, random.Random(seed)).mean()), 4) for seed in range(6)}
    assert len(outs) > 1


# -------------------------------------------------------- BatchNorm and sample weights


def test_recalibrated_batchnorm_matches_the_data() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from herbid.training.prepare import recalibrate_batchnorm

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()).eval()
    images = torch.randn(24, 3, 10, 10) * 3 + 2  # far from the BN's initial statistics (0, 1)
    loader = DataLoader(TensorDataset(images, torch.zeros(24)), batch_size=8)
    assert recalibrate_batchnorm(model, loader, torch.device("cpu")) == 1
    assert not model.training and model[1].momentum == 0.1  # modes and momentum restored
    with torch.no_grad():
        conv = model[0](images)
    assert torch.allclose(model[1].running_mean, conv.mean((0, 2, 3)), atol=1e-4)
    assert torch.allclose(model[1].running_var, conv.var((0, 2, 3)), rtol=0.05)
    # so eval-mode outputs now agree with what train mode computes on the whole set
    with torch.no_grad():
        evaluated = model(images)
        model.train()
        batch_stats = model(images)
    assert torch.allclose(evaluated, batch_stats, atol=0.05)


def test_bn_linear_probe_head_fits_the_training_images(dataset: Path, tmp_path: Path) -> None:
    result = train(TrainConfig.from_recipe("paper", dataset=str(dataset), out=str(tmp_path / "bnlp"), epochs=0,
                               head_init="bn-linear-probe", **SMALL), progress=False)
    assert evaluate_bundle(result.bundle_dir, dataset, split="train", device="cpu")["top1"] >= 0.9
    note = load_bundle(result.bundle_dir).provenance["init"]["note"]
    assert "linear probe on 16 training images, BatchNorm statistics re-estimated on them" in note


def test_sample_weights_make_a_weighted_mean() -> None:
    from herbid.training.losses import make_criterion

    criterion = make_criterion(["a", "b", "c"], {}, label_smoothing=0.1, taxonomy_weight=0.0)
    logits, targets = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]]), torch.tensor([0, 1])
    each = torch.nn.functional.cross_entropy(logits, targets, label_smoothing=0.1, reduction="none")
    assert criterion(logits, targets).item() == pytest.approx(each.mean().item())
    assert criterion(logits, targets, torch.tensor([1.0, 0.0])).item() == pytest.approx(each[0].item())
    assert criterion(logits, targets, torch.tensor([0.25, 0.75])).item() == pytest.approx(
        (0.25 * each[0] + 0.75 * each[1]).item())


def test_quality_sample_weights_need_scores(dataset: Path, tmp_path: Path) -> None:
    import pandas as pd

    from herbid.data.dataset_folder import load_manifest, save_manifest

    config = TrainConfig.from_recipe("paper", dataset=str(dataset), out=str(tmp_path / "q"), epochs=2, sample_weight="quality", **SMALL)
    with pytest.raises(ValueError, match="--mode none"):
        train(config, progress=False)
    scored = tmp_path / "scored"
    import shutil

    shutil.copytree(dataset, scored)
    frame = load_manifest(scored)
    frame["quality"] = pd.Series(np.linspace(0.2, 1.0, len(frame)))
    save_manifest(scored, frame)
    result = train(config.replace(dataset=str(scored)), progress=False)
    losses = [row["train_loss"] for row in result.history]
    assert all(np.isfinite(losses)) and result.final["n"] == 16 and len(losses) == 2
    # the weights change the training: the same seed, data and batches unweighted give other losses
    unweighted = train(config.replace(dataset=str(scored), out=str(tmp_path / "u"), sample_weight="none"),
                       progress=False)
    assert [row["train_loss"] for row in unweighted.history] != pytest.approx(losses, rel=1e-6)


#: Experiment stage-key digests of the named recipes: paper and smoke as recorded before the
#: TrainConfig defaults became the sheet recipe (their cached stages stay valid); sheet as it
#: became in issue 13 (640 px, aspect 1.4, probe below 20 sheets per species) and finetune,
#: the sheet recipe before that (a new key: its probe head is now fitted on every TTA view).
RECIPE_KEY_DIGESTS = {
    "sheet": "bee3126fcaf81429bf507303c72544ec3dd2cfaf63e2889e7623b26dd35c6dd4",
    "finetune": "a40f0e7ff3a564005ee3055a010e47f6e09bf4ade1cb3600c48babe6cc76cdef",
    "paper": "96dc66848f2c92a2e3536b81341d11c45edb5b7a15d4d01b6a69106caae170b5",
    "smoke": "6bc210137396409d3398e5c93b2bdacab6498f8787d9f892d557365f949d6262",
}


def test_recipes_keep_their_stage_keys() -> None:
    from herbid.experiments.planning import digest
    from herbid.experiments.runner import config_key

    for recipe, expected in RECIPE_KEY_DIGESTS.items():
        assert digest(config_key(load_config(overrides={"recipe": recipe}))) == expected, recipe
    assert digest(config_key(TrainConfig())) == RECIPE_KEY_DIGESTS["sheet"]


def test_new_config_fields_keep_old_stage_keys() -> None:
    from herbid.experiments.runner import config_key

    base = config_key(TrainConfig.from_recipe("paper"))
    assert not {"rot90", "jitter", "sample_weight", "min_crop_area", "aspect", "trainable_from", "frozen_batchnorm",
                "l2_sp", "optimizer", "head_lr_scale", "finetune_min_per_species"} & set(base)
    assert config_key(TrainConfig())["finetune_min_per_species"] == 20
    assert config_key(TrainConfig(rot90=True))["rot90"] is True
    assert config_key(TrainConfig(jitter=0.1))["jitter"] == 0.1
