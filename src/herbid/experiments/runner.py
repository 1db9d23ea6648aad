"""Run the paper's experiments by name: ``herbid experiment R.H255.H255 H1K_I.H255.H255 ...``.

An experiment is a chain of training *stages*: ``NY_I.HH.HH`` trains on NY from
ImageNet weights (stage 1), then on HH's training set from the stage-1 model with a new
classifier (stage 2, the paper's transfer protocol), and tests stage 2 on HH's test set.

Every stage is cached under ``OUT/cache/stages/<key>/`` where the key hashes what
determines its weights: the parent stage's key (or the base, R or I), the data (manifest
hash and split settings of the dataset it trains on), the fold, and the training config
without the fields that are per-stage or cannot change a result (see :data:`NOT_IN_KEY`).
So a stage shared by several experiments, folds or invocations is trained once; an
interrupted stage resumes from its checkpoint on the next call. The cache::

    OUT/cache/builds/<ALIAS>-<hash>/      raw sources built by herbid.data.build (+ built.json)
    OUT/cache/datasets/<ALIAS>-<hash>/    manifest with the split/folds applied, images/ → source
    OUT/cache/stages/<key>/               the stage's training run folder (bundle/, checkpoint.pt,
                                          metrics.jsonl, run.json ...) + stage.json + eval-*.json

``stage.json`` records the chain, data, fold and config, and ``"complete": true`` once
the run has finished; only then (and with its bundle present) is the stage reused.

With K folds (``folds=K`` or the test dataset's ``folds`` setting) every stage that
trains on the *evaluation* dataset trains on the other K-1 folds, while stages on other
datasets do not depend on the fold and are shared by all K.

Training on X and testing on a different Y is allowed when every species of Y is among
the species of X's training split (the model can name every test sheet); otherwise the
experiment is rejected before anything is trained. The paper always trains and tests on
the same dataset.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herbid.data.folder import read_json, write_json
from herbid.errors import UserError
from herbid.experiments.datasets import (
    DatasetEntry,
    PreparedDataset,
    load_datasets_toml,
    prepare_dataset,
)
from herbid.experiments.report import (
    LOSS_CURVES,
    PROVENANCE_JSON,
    RESULTS_CSV,
    RESULTS_MD,
    ExperimentResult,
    FoldResult,
    plot_loss_curves,
    write_provenance,
    write_results_csv,
    write_results_md,
)
from herbid.experiments.spec import (
    BASE_INIT,
    IMAGENET,
    RANDOM,
    ExperimentSpec,
    describe_chain,
    parse_specs,
)
from herbid.training.config import TrainConfig, load_config

STAGE_JSON = "stage.json"
#: ``--method`` values: fine-tuning with the training recipe, or a frozen-feature baseline
#: (see herbid.evaluation.baselines.METHODS).
FINETUNE = "finetune"
#: TrainConfig fields the runner sets for each stage; a user value would be overwritten.
RUNNER_FIELDS = ("dataset", "out", "init", "init_chain", "fold", "resume", "train_split", "test_split", "val_split")
#: Fields left out of the stage key: set per stage (and keyed structurally instead), or
#: only affecting speed.
NOT_IN_KEY = (*RUNNER_FIELDS, "workers")


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
        return text if self.fold is None else f"{text} (fold {self.fold + 1}/{self.folds})"


@dataclass
class StageOutcome:
    plan: StagePlan
    history: list[dict[str, Any]]
    final: dict[str, Any]
    #: True when this call trained (or finished) it, False when it came from the cache.
    trained: bool


@dataclass(frozen=True)
class FoldPlan:
    fold: int | None
    final: StagePlan
    test: PreparedDataset


@dataclass(frozen=True)
class ExperimentPlan:
    spec: ExperimentSpec
    folds: list[FoldPlan]


@dataclass
class ExperimentResults:
    """What :func:`run_experiments` did and wrote."""

    out: Path
    experiments: list[ExperimentResult]
    #: Stage keys trained in this call, and the ones reused from the cache.
    trained: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)

    @property
    def results_csv(self) -> Path:
        return self.out / RESULTS_CSV

    @property
    def results_md(self) -> Path:
        return self.out / RESULTS_MD

    @property
    def provenance_json(self) -> Path:
        return self.out / PROVENANCE_JSON

    @property
    def loss_curves(self) -> Path:
        return self.out / LOSS_CURVES

    def __getitem__(self, name: str) -> ExperimentResult:
        for result in self.experiments:
            if result.name == name:
                return result
        raise KeyError(name)


@dataclass
class _Context:
    """Shared state of one call: datasets, config, caches."""

    entries: dict[str, DatasetEntry]
    out: Path
    config: TrainConfig
    config_key: dict[str, Any]
    progress: bool
    method: str = FINETUNE
    prepared: dict[tuple[str, int | None], PreparedDataset] = field(default_factory=dict)
    outcomes: dict[str, StageOutcome] = field(default_factory=dict)

    @property
    def cache(self) -> Path:
        return self.out / "cache"

    @property
    def names(self) -> dict[str, str]:
        return {alias: entry.name for alias, entry in self.entries.items()}

    def dataset(self, alias: str, folds: int | None) -> PreparedDataset:
        if (alias, folds) not in self.prepared:
            say(self.progress, f"preparing dataset {alias}" + (f" with {folds} folds" if folds else ""))
            self.prepared[(alias, folds)] = prepare_dataset(self.entries[alias], self.cache, folds=folds,
                                                            progress=self.progress)
        return self.prepared[(alias, folds)]


def say(progress: bool, message: str) -> None:
    """Progress for the person at the terminal: stderr, never stdout (which carries results)."""
    if progress:
        print(f"herbid experiment: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ API


def methods() -> list[str]:
    """Every ``--method``: fine-tuning first, then the frozen-feature baselines."""
    from herbid.evaluation.baselines import METHODS

    return [FINETUNE, *METHODS]


def run_experiments(specs: list[str], datasets_toml: str | Path, out: str | Path, *,
                    base_config: TrainConfig | dict[str, Any] | None = None, folds: int | None = None,
                    progress: bool = True, method: str = FINETUNE) -> ExperimentResults:
    """Train (or reuse) and evaluate every experiment; write the results tables.

    ``method="linear-probe"`` or ``"knn"`` scores the frozen features of each experiment's
    initialization (ImageNet, random, or the pre-trained stages of a chain) on the same
    folds instead of fine-tuning the last stage: the baseline a recipe has to beat.

    ``base_config`` is the training config of every stage (a :class:`TrainConfig` or
    overrides for :func:`load_config`); the runner sets its dataset, out, init, fold and
    splits per stage. ``folds``: None uses each test dataset's ``folds`` setting, K >= 2
    forces K-fold cross-validation everywhere, 0 or 1 forces the single train/test split.
    Everything is validated and planned before the first stage trains.
    """
    out = Path(out).resolve()
    if method not in methods():
        raise ExperimentError(f"unknown method {method!r}; choose one of {', '.join(methods())}")
    config = _base_config(base_config)
    context = _Context(entries=load_datasets_toml(datasets_toml), out=out, config=config,
                       config_key=config_key(config), progress=progress, method=method)
    parsed = parse_specs(list(specs))
    _check_imagenet(parsed, config)
    plans = [plan_experiment(spec, context, folds) for spec in parsed]
    results = ExperimentResults(out=out, experiments=[])
    environment = _environment(config, Path(datasets_toml))
    for plan in plans:
        results.experiments.append(run_experiment(plan, context))
        write_reports(results, context, environment)
    results.trained = [k for k, o in context.outcomes.items() if o.trained]
    results.reused = [k for k, o in context.outcomes.items() if not o.trained]
    say(progress, f"done: {len(results.trained)} stages trained, {len(results.reused)} reused; "
                  f"results in {results.results_md}")
    return results


def _base_config(base: TrainConfig | dict[str, Any] | None) -> TrainConfig:
    if isinstance(base, TrainConfig):
        return base
    overrides = dict(base or {})
    owned = sorted(set(overrides) & set(RUNNER_FIELDS))
    if owned:
        raise ExperimentError(f"{', '.join(owned)} cannot be set for experiments: the experiment name chooses the "
                              "initialization and data, and --folds K the folds")
    return load_config(None, overrides)


def _check_imagenet(specs: list[ExperimentSpec], config: TrainConfig) -> None:
    """Fail before training when an experiment starts from ImageNet and the arch has no such weights."""
    from herbid.models.registry import get_entry

    needing = [s.name for s in specs if s.base == IMAGENET]
    if needing and get_entry(config.arch).load_imagenet is None:
        raise ExperimentError(f"{', '.join(needing)} start from ImageNet, but {config.arch} has no ImageNet "
                              "weights; choose another --arch or a random (R) initialization")


#: Config fields added after stages were cached: left out of the key while at this default,
#: so a stage trained before the field existed keeps its key (and its cached result).
KEY_ONLY_WHEN_CHANGED = {"rot90": False, "jitter": 0.0, "sample_weight": "none", "min_crop_area": 0.0,
                         "aspect": 1.0}


def config_key(config: TrainConfig) -> dict[str, Any]:
    """The part of the config that decides a stage's weights."""
    return {k: v for k, v in config.to_dict().items()
            if k not in NOT_IN_KEY and not (k in KEY_ONLY_WHEN_CHANGED and v == KEY_ONLY_WHEN_CHANGED[k])}


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------- plans


def plan_experiment(spec: ExperimentSpec, context: _Context, folds: int | None) -> ExperimentPlan:
    """The stages of every fold, with the data prepared and the experiment validated."""
    missing = [alias for alias in spec.aliases if alias not in context.entries]
    if missing:
        raise ExperimentError(f"experiment {spec.name}: unknown dataset alias {missing[0]!r}; "
                              f"datasets.toml defines {', '.join(sorted(context.entries))}")
    k = folds if folds is not None else context.entries[spec.test].folds
    k = k if k and k >= 2 else None
    test = context.dataset(spec.test, k)
    fold_plans = [FoldPlan(fold, _plan_chain(spec, context, test, fold, k), test)
                  for fold in (range(k) if k else [None])]
    _check_species(spec, fold_plans[0].final.dataset, test)
    return ExperimentPlan(spec, fold_plans)


def _plan_chain(spec: ExperimentSpec, context: _Context, test: PreparedDataset, fold: int | None,
                folds: int | None) -> StagePlan:
    """The stages of ``spec`` for one fold, oldest first; returns the last one."""
    parent: StagePlan | None = None
    chain: tuple[str, ...] = (spec.base,)
    for alias in spec.stages:
        data = test if alias == spec.test else context.dataset(alias, None)
        on_test_data = fold is not None and data.data_key() == test.data_key()
        data = test if on_test_data else data
        chain = (*chain, alias)
        key = _digest({
            "parent": parent.key if parent else spec.base,
            "data": data.data_key(),
            "fold": {"k": fold, "of": folds} if on_test_data else None,
            "config": context.config_key,
        })
        parent = StagePlan(key=key, chain=chain, dataset=data, fold=fold if on_test_data else None,
                           folds=folds if on_test_data else None, parent=parent,
                           directory=context.cache / "stages" / key[:20])
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


# ------------------------------------------------------------------------ execution


def run_experiment(plan: ExperimentPlan, context: _Context) -> ExperimentResult:
    spec = plan.spec
    say(context.progress, f"experiment {spec.name}")
    folds = []
    for fold_plan in plan.folds:
        if context.method == FINETUNE:
            final = run_stage(fold_plan.final, context)
            metrics = evaluate_stage(final, fold_plan.test, fold_plan.fold, context)
            lineage = fold_plan.final.lineage()
        else:
            metrics = run_baseline_fold(fold_plan, context)
            lineage = fold_plan.final.lineage()[:-1]  # the frozen backbone's stages; the last is not trained
        folds.append(FoldResult(fold=fold_plan.fold, metrics=metrics, run_dirs=[str(s.run_dir) for s in lineage],
                                stage_keys=[s.key for s in lineage]))
    names = context.names
    return ExperimentResult(
        name=spec.name,
        initialization=describe_chain(spec.init_chain, names),
        training=names[spec.train],
        testing=names[spec.test],
        init_chain=list(spec.init_chain),
        folds=folds,
        provenance=_experiment_provenance(plan, context),
        method=context.method,
    )


def run_stage(plan: StagePlan, context: _Context) -> StageOutcome:
    """The stage's model, from this call, the cache, or trained now (parents first)."""
    if plan.key in context.outcomes:
        return context.outcomes[plan.key]
    record = _read_stage(plan)
    # A parent is needed to train this stage; a cached one is also loaded for the curves.
    if plan.parent is not None and (not record.get("complete") or _read_stage(plan.parent).get("complete")):
        run_stage(plan.parent, context)
    if record.get("complete"):
        say(context.progress, f"stage {plan.label(context.names)}: reusing {plan.directory}")
        outcome = StageOutcome(plan, record.get("history", []), record.get("final", {}), trained=False)
    else:
        outcome = _train_stage(plan, context)
    context.outcomes[plan.key] = outcome
    return outcome


def _read_stage(plan: StagePlan) -> dict[str, Any]:
    """The stage record, if its bundle is there too (else it must be (re)trained)."""
    from herbid.inference.bundle import BundleError, resolve_bundle_path

    path = plan.directory / STAGE_JSON
    if not path.is_file():
        return {}
    record = read_json(path)
    try:
        resolve_bundle_path(plan.run_dir)
    except BundleError:
        return {**record, "complete": False}
    return record


def _stage_record(plan: StagePlan, context: _Context, config: TrainConfig) -> dict[str, Any]:
    return {
        "key": plan.key,
        "chain": list(plan.chain),
        "label": plan.label(context.names),
        "dataset": {"alias": plan.dataset.alias, "path": str(plan.dataset.path), "source": str(plan.dataset.source),
                    **plan.dataset.data_key()},
        "fold": plan.fold,
        "folds": plan.folds,
        "parent": plan.parent.key if plan.parent else None,
        "config": config.to_dict(),
        "complete": False,
    }


def _train_stage(plan: StagePlan, context: _Context) -> StageOutcome:
    from herbid.training import loop as training_loop
    from herbid.training.checkpoint import CHECKPOINT

    resume = (plan.run_dir / CHECKPOINT).is_file()
    config = context.config.replace(
        dataset=str(plan.dataset.path), out=str(plan.run_dir), init=plan.init, fold=plan.fold, resume=resume,
        init_chain=_init_chain(plan), train_split="train", test_split="test",
    )
    say(context.progress, f"stage {plan.label(context.names)}: {'resuming' if resume else 'training'} in "
                          f"{plan.directory}")
    record = _stage_record(plan, context, config)
    write_json(plan.directory / STAGE_JSON, record)
    result = training_loop.train(config, progress=context.progress)
    record.update(complete=True, history=result.history, final=result.final, best_epoch=result.best_epoch,
                  bundle=str(result.bundle_dir))
    write_json(plan.directory / STAGE_JSON, record)
    return StageOutcome(plan, result.history, result.final, trained=True)


def _init_chain(plan: StagePlan) -> list[str]:
    """What came before this stage, in the training loop's notation: ``["imagenet", "NY"]``
    (a random start is the empty chain)."""
    base = [] if plan.chain[0] == RANDOM else [BASE_INIT[plan.chain[0]]]
    return [*base, *plan.chain[1:-1]]


def evaluate_stage(outcome: StageOutcome, test: PreparedDataset, fold: int | None, context: _Context) -> dict[str, Any]:
    """The final model's metrics on the test rows; cached next to the stage."""
    from herbid.evaluation.evaluate import evaluate_bundle

    key = _digest({"data": test.data_key(), "fold": fold, "folds": test.folds})[:16]
    path = outcome.plan.directory / f"eval-{key}.json"
    if path.is_file() and not outcome.trained:
        return read_json(path)
    metrics = evaluate_bundle(outcome.plan.run_dir, test.path, split="test", fold=fold,
                              batch_size=max(64, context.config.batch_size), device=context.config.device)
    write_json(path, metrics)
    return metrics


def run_baseline_fold(fold_plan: FoldPlan, context: _Context) -> dict[str, Any]:
    """A frozen-feature baseline on one fold: the initialization's features (after any
    pre-training stages, trained or reused first) + ``context.method`` on the training rows.

    Features are of the whole sheet at the run's resize size (default 256, uncropped).
    Cached under ``OUT/cache/baselines/`` by everything that decides the number.
    """
    from herbid.evaluation.baselines import baseline_on_datasets

    final = fold_plan.final
    if final.parent is not None:
        run_stage(final.parent, context)
    init = final.init
    size = context.config.resize_size or context.config.input_size or 256
    key = _digest({"method": context.method, "init": final.parent.key if final.parent else init,
                   "train": final.dataset.data_key(), "test": fold_plan.test.data_key(), "fold": fold_plan.fold,
                   "folds": fold_plan.test.folds, "arch": context.config.arch, "size": size,
                   **{k: v for k, v in config_key(context.config).items() if k == "aspect"}})
    path = context.cache / "baselines" / f"{context.method}-{key[:20]}.json"
    if path.is_file():
        say(context.progress, f"{context.method} {final.label(context.names)}: reusing {path}")
        return read_json(path)
    say(context.progress, f"{context.method} {final.label(context.names)}: frozen {context.config.arch} features "
                          f"at {size} px")
    metrics = baseline_on_datasets(context.method, final.dataset.path, fold_plan.test.path, arch=context.config.arch,
                                   init=init, fold=fold_plan.fold, input_size=size, resize_size=size,
                                   aspect=context.config.aspect, device=context.config.device)
    write_json(path, metrics)
    return metrics


# ------------------------------------------------------------------------- reports


def _environment(config: TrainConfig, datasets_toml: Path) -> dict[str, Any]:
    from herbid.provenance import provenance

    shared = {k: v for k, v in config.to_dict().items() if k not in RUNNER_FIELDS}
    return provenance(datasets_toml=str(datasets_toml.resolve()), config=shared)


def _experiment_provenance(plan: ExperimentPlan, context: _Context) -> dict[str, Any]:
    stages = {s.dataset.alias: s.dataset for f in plan.folds for s in f.final.lineage()}
    stages[plan.spec.test] = plan.folds[0].test
    return {
        "seed": context.config.seed,
        "datasets": {alias: {"name": d.name, "source": str(d.source), "prepared": str(d.path),
                             "manifest_hash": d.manifest_hash, "split": d.split.to_dict(), "folds": d.folds,
                             "images": d.images, "species": len(d.species)}
                     for alias, d in stages.items()},
    }


def write_reports(results: ExperimentResults, context: _Context, environment: dict[str, Any]) -> None:
    """results.csv, results.md, provenance.json and loss_curves.png for the rows so far."""
    results.out.mkdir(parents=True, exist_ok=True)
    write_results_csv(results.results_csv, results.experiments)
    write_results_md(results.results_md, results.experiments, environment)
    write_provenance(results.provenance_json, results.experiments, environment)
    histories = {o.plan.label(context.names): o.history for o in context.outcomes.values()}
    plot_loss_curves(histories, results.loss_curves)
