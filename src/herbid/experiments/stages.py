"""A stage's model: reused from this call or the stage cache, or trained now; then evaluated.

A stage's folder ``OUT/cache/stages/<key>/`` is its training run folder. ``stage.json``
there records the chain, data, fold and config, and ``"complete": true`` once the run
has finished; only then (and with its bundle present) is the stage reused, else it is
trained, resuming from its checkpoint if an earlier call was interrupted. A stage's
evaluations (``eval-*.json``) are cached next to it and frozen-feature baselines under
``OUT/cache/baselines/``, keyed by everything that decides their numbers.
"""

from __future__ import annotations

from typing import Any

from herbid.data.dataset_folder import read_json, write_json
from herbid.experiments.datasets import PreparedDataset
from herbid.experiments.planning import FoldPlan, RunContext, StageOutcome, StagePlan, config_key, digest, say
from herbid.experiments.spec import BASE_INIT, RANDOM
from herbid.training.config import TrainConfig

STAGE_JSON = "stage.json"


def run_stage(plan: StagePlan, context: RunContext) -> StageOutcome:
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


def _stage_record(plan: StagePlan, context: RunContext, config: TrainConfig) -> dict[str, Any]:
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


def _train_stage(plan: StagePlan, context: RunContext) -> StageOutcome:
    from herbid.training import loop as training_loop
    from herbid.training.checkpoint import CHECKPOINT

    resume = (plan.run_dir / CHECKPOINT).is_file()
    config = context.config.replace(
        dataset=str(plan.dataset.path), out=str(plan.run_dir), init=plan.init, fold=plan.fold, resume=resume,
        init_chain=_init_chain(plan), train_split="train", test_split="test",
        **({"seed": plan.seed} if plan.seed is not None else {}),
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


def evaluate_stage(outcome: StageOutcome, test: PreparedDataset, fold: int | None, context: RunContext) -> dict[str, Any]:
    """The final model's metrics on the test rows; cached next to the stage."""
    from herbid.evaluation.evaluate import evaluate_bundle

    key = digest({"data": test.data_key(), "fold": fold, "folds": test.folds})[:16]
    path = outcome.plan.directory / f"eval-{key}.json"
    if path.is_file() and not outcome.trained:
        return read_json(path)
    metrics = evaluate_bundle(outcome.plan.run_dir, test.path, split="test", fold=fold,
                              batch_size=max(64, context.config.batch_size), device=context.config.device)
    write_json(path, metrics)
    return metrics


def run_baseline_fold(fold_plan: FoldPlan, context: RunContext) -> dict[str, Any]:
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
    key = digest({"method": context.method, "init": final.parent.key if final.parent else init,
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
