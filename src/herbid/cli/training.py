"""``herbid models|train|evaluate|experiment|demo``: models, training, evaluation and experiments.

Each command's parser stands right before its handler; :func:`add_parsers` registers them.
The flags that override the training recipe, shared by ``train`` and ``experiment``, are
declared once in :data:`TRAIN_OPTIONS`. torch and the training code are imported inside
the handlers.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from herbid.cli.common import add_bundle_argument, command, print_json

#: The flags that map one-to-one onto TrainConfig fields, in help order, with their
#: ``add_argument`` keywords; an unset flag stays None and keeps the recipe's value.
TRAIN_OPTIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--arch", {"help": "model name (herbid models) or timm:NAME (default efficientnet_lite0)"}),
    ("--init", {"help": "random, imagenet, or a weights file / bundle / run folder (transfer)"}),
    ("--recipe", {"help": "named recipe: sheet (default: a linear probe on 640 px frozen features below 20 "
                          "training sheets per species, LP-FT above), finetune (always fine-tune, 448 px), paper "
                          "(Carranza-Rojas et al. 2017), smoke"}),
    ("--epochs", {"type": int}),
    ("--batch-size", {"type": int}),
    ("--lr", {"type": float}),
    ("--momentum", {"type": float}),
    ("--weight-decay", {"type": float}),
    ("--schedule", {}),
    ("--label-smoothing", {"type": float}),
    ("--input-size", {"type": int}),
    ("--resize-size", {"type": int}),
    ("--val-fraction", {"type": float, "help": "validation carved from train; selects the epoch"}),
    ("--fold", {"type": int, "help": "test on fold K of a --folds dataset, train on the others"}),
    ("--seed", {"type": int}),
    ("--device", {"help": "auto, cpu, cuda, cuda:1, ..."}),
    ("--amp", {"choices": ["none", "bf16", "fp16"]}),
    ("--workers", {"type": int, "help": "data-loading processes"}),
)
#: The TrainConfig fields those flags set (their argparse ``dest``).
TRAIN_FLAGS = tuple(flag[2:].replace("-", "_") for flag, _ in TRAIN_OPTIONS)


def add_train_flags(parser: argparse.ArgumentParser, *, with_init: bool = True) -> None:
    """Flags that override the recipe (TrainConfig fields); unset flags keep the recipe's values."""
    group = parser.add_argument_group("training (overrides the recipe)")
    for flag, options in TRAIN_OPTIONS:
        if with_init or flag != "--init":
            group.add_argument(flag, **options)
    group.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other TrainConfig field")


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig values the user set: flags first, then ``--set key=value`` pairs."""
    from herbid.training.config import parse_overrides

    overrides = {name: getattr(args, name) for name in TRAIN_FLAGS if getattr(args, name, None) is not None}
    overrides.update(parse_overrides(getattr(args, "set", None) or []))
    return overrides


def add_parsers(top: argparse._SubParsersAction) -> None:
    """Register ``models``, ``train``, ``evaluate``, ``experiment`` and ``demo``."""
    for add in (_add_models, _add_train, _add_evaluate, _add_experiment, _add_demo):
        add(top)


# --- models and training ----------------------------------------------------------------

def _add_models(top: argparse._SubParsersAction) -> None:
    models = top.add_parser("models", help="list the registered model architectures")
    models.add_argument("--json", action="store_true")


@command("models")
def models_list(args: argparse.Namespace) -> int:
    from herbid.models.registry import MODELS, list_models

    names = list_models()
    if args.json:
        print_json(names)
    else:
        for name in names:
            entry = MODELS.get(name)
            print(f"{name:24s} {entry.description if entry else 'timm model by name; ImageNet weights when online'}")
    return 0


def _add_train(top: argparse._SubParsersAction) -> None:
    train = top.add_parser("train", help="train a species classifier on a dataset folder")
    train.add_argument("--dataset", required=True, type=Path, help="dataset folder (built and split)")
    train.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, metrics, bundle)")
    train.add_argument("--config", type=Path, default=None, help="YAML config (fields of TrainConfig)")
    train.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    train.add_argument("--shards", type=Path, default=None,
                       help="read the training sheets from this dataset's shards (herbid dataset shard); "
                            "--set shard_order=local lets each process read its own shards")
    train.add_argument("--no-progress", action="store_true")
    train.add_argument("--json", action="store_true")
    add_train_flags(train)


@command("train")
def train_command(args: argparse.Namespace) -> int:
    from herbid.training.choice import describe_plan
    from herbid.training.config import load_config
    from herbid.training.loop import train

    overrides = train_overrides(args)
    overrides.update(dataset=str(args.dataset), out=str(args.out), resume=args.resume)
    if args.shards is not None:
        overrides["shards"] = str(args.shards)
    config = load_config(args.config, overrides)
    result = train(config, progress=not args.no_progress)
    summary = {"run": str(result.run_dir), "bundle": str(result.bundle_dir), "best_epoch": result.best_epoch,
               "resumed": result.resumed, **{f"test_{k}": v for k, v in result.final.items()},
               "plan": describe_plan(result.plan)}
    if args.json:
        print_json(summary)
    else:
        from herbid.display import show_mapping

        show_mapping(f"trained {config.arch} on {config.dataset}", summary)
    return 0


# --- evaluation and experiments ---------------------------------------------------------

def _add_evaluate(top: argparse._SubParsersAction) -> None:
    evaluate = top.add_parser("evaluate", help="top-1/top-5 (and genus/family) of a bundle on a dataset split")
    add_bundle_argument(evaluate)
    evaluate.add_argument("--dataset", required=True, type=Path)
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--fold", type=int, default=None, help="evaluate on this fold instead of a split")
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--tta", default=None, help="test-time augmentation instead of the bundle's: none, flip, "
                                                      "flip2 (all four flips)")
    evaluate.add_argument("--knn-fusion", type=float, default=0.0, metavar="W",
                          help="mix W × the votes of the 5 most similar training sheets into the probabilities")
    evaluate.add_argument("--per-image", action="store_true",
                          help="also give each test sheet's calibrated probabilities over the bundle's species")
    evaluate.add_argument("--json", action="store_true")


@command("evaluate")
def evaluate_command(args: argparse.Namespace) -> int:
    from herbid.evaluation.evaluate import evaluate_bundle

    result = evaluate_bundle(args.bundle, args.dataset, split=args.split, fold=args.fold,
                             batch_size=args.batch_size, device=args.device, tta=args.tta,
                             knn_fusion=args.knn_fusion, per_image=args.per_image)
    if args.json:
        print_json(result)
    else:
        from herbid.display import show_mapping

        show_mapping(f"evaluate {args.bundle} on {args.dataset} ({args.split})",
                     {k: v for k, v in result.items() if k not in ("per_species", "per_image")})
    return 0


def _add_experiment(top: argparse._SubParsersAction) -> None:
    experiment = top.add_parser("experiment", help="run the paper's experiments by name, e.g. I.H255.H255")
    experiment.add_argument("specs", nargs="+", metavar="SPEC",
                            help="<Initialization>.<Training>.<Testing>: R, I, ALIAS or ALIAS_I chains")
    experiment.add_argument("--datasets", required=True, type=Path, help="datasets.toml mapping aliases to data")
    experiment.add_argument("--out", required=True, type=Path)
    experiment.add_argument("--folds", type=int, default=None, help="group-aware K-fold cross-validation")
    experiment.add_argument("--repeats", type=int, default=None, metavar="N",
                            help="N random splits instead (split seeds 0..N-1, training seed = split seed): "
                                 "mean ± std over held-out sets, for collections too small for --folds")
    experiment.add_argument("--method", default="finetune",
                            help="finetune (the training recipe, default), or a frozen-feature baseline on the "
                                 "same folds: linear-probe (logistic regression) or knn")
    experiment.add_argument("--no-progress", action="store_true")
    add_train_flags(experiment, with_init=False)


@command("experiment")
def experiment_command(args: argparse.Namespace) -> int:
    from herbid.experiments.runner import run_experiments

    results = run_experiments(args.specs, args.datasets, args.out, base_config=train_overrides(args),
                              folds=args.folds, progress=not args.no_progress, method=args.method,
                              repeats=args.repeats)
    print((Path(args.out) / "results.md").read_text(encoding="utf-8"))
    return 0 if results is not None else 1


# --- demo -------------------------------------------------------------------------------

def _add_demo(top: argparse._SubParsersAction) -> None:
    demo_parser = top.add_parser("demo", help="run the main job end to end on a small collection")
    demo_parser.add_argument("--out", type=Path, default=Path("demo-out"))
    demo_parser.add_argument("--source", default=None,
                             help="folder, DwC-A or CSV (default: $DEMO_SOURCE, else iDigBio when online, else synthetic)")
    demo_parser.add_argument("--workers", type=int, default=None)
    demo_parser.add_argument("--allow-private-hosts", action="store_true",
                             help="let the source's image downloads reach loopback/private addresses")


@command("demo")
def demo(args: argparse.Namespace) -> int:
    from herbid.demo import run_demo

    return run_demo(out=args.out, source=args.source, workers=args.workers,
                    allow_private_hosts=args.allow_private_hosts)
