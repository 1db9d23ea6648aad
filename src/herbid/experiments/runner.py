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

A stage is reused only once its ``stage.json`` says it is complete and its bundle is
there (see :mod:`herbid.experiments.stages`).

With K folds (``folds=K`` or the test dataset's ``folds`` setting) every stage that
trains on the *evaluation* dataset trains on the other K-1 folds, while stages on other
datasets do not depend on the fold and are shared by all K.

Training on X and testing on a different Y is allowed when every species of Y is among
the species of X's training split (the model can name every test sheet); otherwise the
experiment is rejected before anything is trained. The paper always trains and tests on
the same dataset.

Planning (stage keys, chains, validation) lives in :mod:`herbid.experiments.planning`,
training, reusing and evaluating stages in :mod:`herbid.experiments.stages`; this module
runs whole experiments and writes the results tables, and keeps those modules' names
importable from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herbid.experiments.datasets import load_datasets_toml
from herbid.experiments.planning import (
    FINETUNE,
    KEY_ONLY_WHEN_CHANGED,
    NOT_IN_KEY,
    RUNNER_FIELDS,
    ExperimentError,
    ExperimentPlan,
    FoldPlan,
    RunContext,
    StageOutcome,
    StagePlan,
    config_key,
    plan_experiment,
    say,
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
from herbid.experiments.spec import IMAGENET, ExperimentSpec, describe_chain, parse_specs
from herbid.experiments.stages import STAGE_JSON, evaluate_stage, run_baseline_fold, run_stage
from herbid.training.config import TrainConfig, load_config

__all__ = [
    "FINETUNE",
    "KEY_ONLY_WHEN_CHANGED",
    "NOT_IN_KEY",
    "RUNNER_FIELDS",
    "STAGE_JSON",
    "ExperimentError",
    "ExperimentPlan",
    "ExperimentResults",
    "FoldPlan",
    "StageOutcome",
    "StagePlan",
    "config_key",
    "evaluate_stage",
    "methods",
    "plan_experiment",
    "run_baseline_fold",
    "run_experiment",
    "run_experiments",
    "run_stage",
    "say",
    "write_reports",
]


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


# ------------------------------------------------------------------------------ API


def methods() -> list[str]:
    """Every ``--method``: fine-tuning first, then the frozen-feature baselines."""
    from herbid.evaluation.baselines import METHODS

    return [FINETUNE, *METHODS]


def run_experiments(specs: list[str], datasets_toml: str | Path, out: str | Path, *,
                    base_config: TrainConfig | dict[str, Any] | None = None, folds: int | None = None,
                    progress: bool = True, method: str = FINETUNE, repeats: int | None = None) -> ExperimentResults:
    """Train (or reuse) and evaluate every experiment; write the results tables.

    ``method="linear-probe"`` or ``"knn"`` scores the frozen features of each experiment's
    initialization (ImageNet, random, or the pre-trained stages of a chain) on the same
    folds instead of fine-tuning the last stage: the baseline a recipe has to beat.

    ``base_config`` is the training config of every stage (a :class:`TrainConfig` or
    overrides for :func:`load_config`); the runner sets its dataset, out, init, fold and
    splits per stage. ``folds``: None uses each test dataset's ``folds`` setting, K >= 2
    forces K-fold cross-validation everywhere, 0 or 1 forces the single train/test split.
    ``repeats`` N evaluates on N random splits instead (split seeds 0..N-1, each stage
    trained with its split's seed): the protocol for collections too small for folds.
    Everything is validated and planned before the first stage trains.
    """
    out = Path(out).resolve()
    if method not in methods():
        raise ExperimentError(f"unknown method {method!r}; choose one of {', '.join(methods())}")
    config = _base_config(base_config)
    context = RunContext(entries=load_datasets_toml(datasets_toml), out=out, config=config,
                       config_key=config_key(config), progress=progress, method=method)
    parsed = parse_specs(list(specs))
    _check_imagenet(parsed, config)
    if repeats is not None and repeats < 0:
        raise ExperimentError(f"--repeats must be >= 1 (0: the single split), got {repeats}")
    plans = [plan_experiment(spec, context, folds, repeats) for spec in parsed]
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


# ------------------------------------------------------------------------ execution


def run_experiment(plan: ExperimentPlan, context: RunContext) -> ExperimentResult:
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
                                stage_keys=[s.key for s in lineage], repeat=fold_plan.repeat))
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


# ------------------------------------------------------------------------- reports


def _environment(config: TrainConfig, datasets_toml: Path) -> dict[str, Any]:
    from herbid.provenance import provenance

    shared = {k: v for k, v in config.to_dict().items() if k not in RUNNER_FIELDS}
    return provenance(datasets_toml=str(datasets_toml.resolve()), config=shared)


def _experiment_provenance(plan: ExperimentPlan, context: RunContext) -> dict[str, Any]:
    stages = {s.dataset.alias: s.dataset for f in plan.folds for s in f.final.lineage()}
    stages[plan.spec.test] = plan.folds[0].test
    repeats = [f.repeat for f in plan.folds if f.repeat is not None]
    return {
        "seed": context.config.seed if not repeats else None,
        "split_and_training_seeds": repeats or None,
        "datasets": {alias: {"name": d.name, "source": str(d.source), "prepared": str(d.path),
                             "manifest_hash": d.manifest_hash, "split": d.split.to_dict(), "folds": d.folds,
                             "images": d.images, "species": len(d.species)}
                     for alias, d in stages.items()},
    }


def write_reports(results: ExperimentResults, context: RunContext, environment: dict[str, Any]) -> None:
    """results.csv, results.md, provenance.json and loss_curves.png for the rows so far."""
    results.out.mkdir(parents=True, exist_ok=True)
    write_results_csv(results.results_csv, results.experiments)
    write_results_md(results.results_md, results.experiments, environment)
    write_provenance(results.provenance_json, results.experiments, environment)
    histories = {o.plan.label(context.names): o.history for o in context.outcomes.values()}
    plot_loss_curves(histories, results.loss_curves)
