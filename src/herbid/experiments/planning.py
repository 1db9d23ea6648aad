"""Planning experiments into stages: each stage's key, chain and folder, validated before anything trains.

A stage's key hashes what determines its weights: the parent stage's key (or the base, R
or I), the data it trains on, the fold, and :func:`config_key` (the training config
without :data:`NOT_IN_KEY`). :class:`RunContext` is the state one call shares between
planning, running the stages (:mod:`herbid.experiments.stages`) and the runner
(:mod:`herbid.experiments.runner`): the datasets, prepared once, and the stages done so far.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from herbid.errors import UserError
from herbid.experiments.datasets import DatasetEntry, PreparedDataset, prepare_dataset
from herbid.experiments.spec import BASE_INIT, ExperimentSpec, describe_chain
from herbid.training.config import TrainConfig

#: ``--method`` values: fine-tuning with the training recipe, or a frozen-feature baseline
#: (see herbid.evaluation.baselines.METHODS).
FINETUNE = "finetune"
#: TrainConfig fields the runner sets for each stage; a user value would be overwritten.
RUNNER_FIELDS = ("dataset", "out", "init", "init_chain", "fold", "resume", "train_split", "test_split", "val_split")
#: Fields left out of the stage key: set per stage (and keyed structurally instead), or
#: only affecting speed (``shards`` in the global order trains on the folder's very batches).
NOT_IN_KEY = (*RUNNER_FIELDS, "workers", "shards")


class ExperimentError(UserError, ValueError):
    """An experiment that cannot run as asked (unknown alias, species mismatch, ...)."""


@dataclass(frozen=True)
class StagePlan:
    """One training stage: ``dataset`` trained from ``parent``'s model (or the base)."""

    key: str
    chain: tuple[str, ...]  # base, then every dataset trained on up to and including this one
    dataset: PreparedDataset
    fold: int | None
    folds: int | None
    parent: "StagePlan | None"
    directory: Path
    #: The training seed of a repeated-split experiment (None: the run config's seed).
    seed: int | None = None

    @property
    def run_dir(self) -> Path:
        """The stage folder is the training run folder (so ``herbid evaluate`` takes it)."""
        return self.directory

    @property
    def init(self) -> str:
        return str(self.parent.run_dir) if self.parent else BASE_INIT[self.chain[0]]

    def lineage(self) -> list["StagePlan"]:
        """This stage and its ancestors, oldest first."""
        return [*(self.parent.lineage() if self.parent else []), self]

    def label(self, names: dict[str, str]) -> str:
        text = describe_chain(self.chain, names, show_random=True)
        if self.fold is not None:
            return f"{text} (fold {self.fold + 1}/{self.folds})"
        return text if self.seed is None else f"{text} (split seed {self.seed})"


@dataclass
class StageOutcome:
    """What running (or reusing) a stage gave: its training curves and final metrics."""

    plan: StagePlan
    history: list[dict[str, Any]]
    final: dict[str, Any]
    #: True when this call trained (or finished) it, False when it came from the cache.
    trained: bool


@dataclass(frozen=True)
class FoldPlan:
    """One evaluation of an experiment: a fold, a repeated split (``repeat`` = its split and
    training seed), or the single split."""

    fold: int | None
    final: StagePlan
    test: PreparedDataset
    repeat: int | None = None


@dataclass(frozen=True)
class ExperimentPlan:
    spec: ExperimentSpec
    folds: list[FoldPlan]


@dataclass
class RunContext:
    """Shared state of one call: datasets, config, caches."""

    entries: dict[str, DatasetEntry]
    out: Path
    config: TrainConfig
    config_key: dict[str, Any]
    progress: bool
    method: str = FINETUNE
    prepared: dict[tuple[str, int | None, int | None], PreparedDataset] = field(default_factory=dict)
    outcomes: dict[str, StageOutcome] = field(default_factory=dict)

    @property
    def cache(self) -> Path:
        return self.out / "cache"

    @property
    def names(self) -> dict[str, str]:
        return {alias: entry.name for alias, entry in self.entries.items()}

    def dataset(self, alias: str, folds: int | None, split_seed: int | None = None) -> PreparedDataset:
        """``alias`` prepared with ``folds`` K, or split with ``split_seed`` instead of its own seed."""
        if (alias, folds, split_seed) not in self.prepared:
            entry = self.entries[alias]
            if split_seed is not None:
                entry = replace(entry, split=replace(entry.split, seed=split_seed))
            say(self.progress, f"preparing dataset {alias}" + (f" with {folds} folds" if folds else "")
                + (f" split with seed {split_seed}" if split_seed is not None else ""))
            self.prepared[(alias, folds, split_seed)] = prepare_dataset(entry, self.cache, folds=folds,
                                                                        progress=self.progress)
        return self.prepared[(alias, folds, split_seed)]


def say(progress: bool, message: str) -> None:
    """Progress for the person at the terminal: stderr, never stdout (which carries results)."""
    if progress:
        print(f"herbid experiment: {message}", file=sys.stderr, flush=True)


#: Config fields added after stages were cached: left out of the key while at this default,
#: so a stage trained before the field existed keeps its key (and its cached result).
KEY_ONLY_WHEN_CHANGED = {"rot90": False, "jitter": 0.0, "sample_weight": "none", "min_crop_area": 0.0,
                         "aspect": 1.0, "trainable_from": "", "frozen_batchnorm": False, "l2_sp": 0.0,
                         "optimizer": "sgd", "head_lr_scale": 1.0, "finetune_min_per_species": 0,
                         "shard_order": "global"}


def config_key(config: TrainConfig) -> dict[str, Any]:
    """The part of the config that decides a stage's weights."""
    return {k: v for k, v in config.to_dict().items()
            if k not in NOT_IN_KEY and not (k in KEY_ONLY_WHEN_CHANGED and v == KEY_ONLY_WHEN_CHANGED[k])}


def digest(value: Any) -> str:
    """A stable SHA-256 of a JSON-able value (keys sorted): the cache keys of stages and results."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------- plans


def plan_experiment(spec: ExperimentSpec, context: RunContext, folds: int | None,
                    repeats: int | None = None) -> ExperimentPlan:
    """The stages of every fold (or repeated split), with the data prepared and the
    experiment validated.

    ``repeats`` N ≥ 1 evaluates on N random splits instead of folds: split seeds 0..N-1,
    each stage trained with the split's seed as its training seed, so the spread across
    repeats measures how the result depends on which sheets were held out, not only on
    the training noise (for collections too small for group-aware folds).
    """
    missing = [alias for alias in spec.aliases if alias not in context.entries]
    if missing:
        raise ExperimentError(f"experiment {spec.name}: unknown dataset alias {missing[0]!r}; "
                              f"datasets.toml defines {', '.join(sorted(context.entries))}")
    if repeats is not None and repeats >= 1:
        if folds is not None and folds >= 2:
            raise ExperimentError("--repeats and --folds are two protocols: choose one")
        fold_plans = []
        for seed in range(repeats):
            test = context.dataset(spec.test, None, split_seed=seed)
            fold_plans.append(FoldPlan(None, _plan_chain(spec, context, test, None, None, seed=seed), test, seed))
        _check_species(spec, fold_plans[0].final.dataset, fold_plans[0].test)
        return ExperimentPlan(spec, fold_plans)
    k = folds if folds is not None else context.entries[spec.test].folds
    k = k if k and k >= 2 else None
    test = context.dataset(spec.test, k)
    fold_plans = [FoldPlan(fold, _plan_chain(spec, context, test, fold, k), test)
                  for fold in (range(k) if k else [None])]
    _check_species(spec, fold_plans[0].final.dataset, test)
    return ExperimentPlan(spec, fold_plans)


def _plan_chain(spec: ExperimentSpec, context: RunContext, test: PreparedDataset, fold: int | None,
                folds: int | None, *, seed: int | None = None) -> StagePlan:
    """The stages of ``spec`` for one fold (or the repeat with split and training ``seed``),
    oldest first; returns the last one."""
    parent: StagePlan | None = None
    chain: tuple[str, ...] = (spec.base,)
    config = context.config_key if seed is None else {**context.config_key, "seed": seed}
    for alias in spec.stages:
        data = test if alias == spec.test else context.dataset(alias, None, split_seed=seed)
        on_test_data = fold is not None and data.data_key() == test.data_key()
        data = test if on_test_data else data
        chain = (*chain, alias)
        key = digest({
            "parent": parent.key if parent else spec.base,
            "data": data.data_key(),
            "fold": {"k": fold, "of": folds} if on_test_data else None,
            "config": config,
        })
        parent = StagePlan(key=key, chain=chain, dataset=data, fold=fold if on_test_data else None,
                           folds=folds if on_test_data else None, parent=parent,
                           directory=context.cache / "stages" / key[:20], seed=seed)
    assert parent is not None  # a spec always has a training dataset
    return parent


def _check_species(spec: ExperimentSpec, trained: PreparedDataset, test: PreparedDataset) -> None:
    """Cross-dataset testing only where the model knows every test species."""
    if trained.data_key() == test.data_key():
        return
    unknown = sorted(set(test.species) - set(trained.train_species))
    if unknown:
        raise ExperimentError(
            f"experiment {spec.name}: {len(unknown)} of {len(test.species)} species of {spec.test} are not in "
            f"{spec.train}'s training split (e.g. {', '.join(unknown[:3])}); test on {spec.train} or on a "
            f"dataset with the same species")
