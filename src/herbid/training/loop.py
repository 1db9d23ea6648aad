"""``train(config)``: one run, from a dataset folder to a model bundle.

The same function runs on a laptop CPU, one GPU, or N GPUs / nodes under ``torchrun``.
Per epoch it trains, evaluates on val (if any) and test, checkpoints, and rewrites the
metrics files and the learning curve. Test metrics are reported, never used to choose
anything: with a val split the best *val* epoch is bundled, otherwise the last.

Reproducibility: the model init is seeded with ``seed``; every epoch reseeds the global
RNGs from ``(seed, epoch, rank)`` and draws its data order and augmentations from
``(seed, epoch)`` (see :mod:`herbid.training.data`). Resuming from the checkpoint of
epoch k therefore replays epochs k+1… exactly; on CPU the result is bit-identical to an
uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from herbid.data.dataset_folder import manifest_hash, write_json
from herbid.errors import UserError
from herbid.evaluation.metrics import evaluate_model
from herbid.inference.bundle import RUN_BUNDLE_DIR, BundleError, read_bundle_meta, save_bundle
from herbid.inference.device import autocast
from herbid.inference.forward import forward
from herbid.models.base import HerbidModel, InitRecord, Preprocessing
from herbid.provenance import provenance
from herbid.training.calibration import fit_temperature
from herbid.training.checkpoint import (
    BEST_WEIGHTS,
    CHECKPOINT,
    TrainState,
    load_checkpoint,
    restore_rng_states,
    save_checkpoint,
    save_weights,
    state_from_checkpoint,
)
from herbid.training.choice import adapt_to_collection, describe_plan
from herbid.training.config import CONFIG_YAML, TrainConfig, config_from_dict, save_config, validate
from herbid.training.curves import LOSS_CURVE, plot_curves, write_metrics
from herbid.training.distributed import DistContext, all_reduce_sum, setup
from herbid.training.losses import make_criterion
from herbid.training.partial import StartingPointPenalty, freeze_before, train_mode
from herbid.training.precision import grad_scaler
from herbid.training.prepare import (
    Loaders,
    Splits,
    build_model,
    effective_preprocessing,
    eval_loader,
    init_head_from_probe,
    make_loaders,
    make_optimizer,
    prepare_splits,
)
from herbid.training.progress import TrainProgress
from herbid.training.schedules import LrLambda, make_scheduler

log = logging.getLogger(__name__)

RUN_JSON = "run.json"
#: Config keys that may differ between a run and its resumption (they do not change what
#: the finished epochs computed). Changing ``epochs`` stretches the LR schedule from there on;
#: ``shards`` in the global order reads the folder's very samples, ``shard_order`` orders the
#: epochs still to come (and checkpoints from before either existed stay resumable).
RESUMABLE_CHANGES = frozenset({"epochs", "resume", "workers", "device", "out", "shards", "shard_order"})
#: Redraw the learning curve at most this often (and after the last epoch): matplotlib
#: takes about a second per figure here, which would dominate short epochs.
PLOT_EVERY_SECONDS = 60.0


class ResumeError(UserError, RuntimeError):
    """A checkpoint that does not belong to this config, or a run that would be overwritten."""


@dataclass
class RunResult:
    run_dir: Path
    bundle_dir: Path
    history: list[dict[str, Any]]
    #: The bundled model's test metrics {"top1", "top5", "n", "loss"}.
    final: dict[str, Any]
    best_epoch: int
    resumed: bool
    temperature: float = 1.0
    #: What the run did on this collection and why (herbid.training.choice).
    plan: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainHooks:
    """Callbacks for callers that watch a run (experiments, tests that simulate a kill)."""

    #: After every optimiser step: (epoch, step within the epoch, 1-based).
    on_step: Callable[[int, int], None] | None = None
    #: After each epoch's checkpoint and metrics files are written: the history row.
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None


@dataclass
class _Run:
    """The live objects of a run, passed between the loop's small functions."""

    config: TrainConfig
    context: DistContext
    device: torch.device
    splits: Splits
    model: HerbidModel
    net: nn.Module  # the model, or its DDP wrapper
    init: InitRecord
    preprocessing: Preprocessing
    loaders: Loaders
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    #: L2-SP toward the initial weights (zero unless ``config.l2_sp`` > 0).
    anchor: StartingPointPenalty
    run_dir: Path
    #: What this run does on this collection and why (herbid.training.choice).
    plan: dict[str, Any] = field(default_factory=dict)
    state: TrainState = field(default_factory=TrainState)
    resumed: bool = False
    last_plot: float = float("-inf")


# ------------------------------------------------------------------------ seeding


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank, 0x5EED]).generate_state(1)[0])


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Reseed every global RNG for ``epoch``, so the epoch is the same after a resume."""
    value = epoch_seed(seed, epoch, rank)
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)


# ----------------------------------------------------------------------- assembly


def _steps_per_epoch(loaders: Loaders) -> int:
    return len(loaders.train_sampler)


def _assemble(config: TrainConfig, context: DistContext, device: torch.device) -> _Run:
    splits = prepare_splits(config)
    config, plan = adapt_to_collection(config, splits.train)
    model, init = build_model(config, len(splits.species))
    preprocessing = effective_preprocessing(model, config)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    if config.head_init != "random" and not (config.resume and (Path(config.out) / CHECKPOINT).exists()):
        probe = init_head_from_probe(model, config, splits, preprocessing, device)
        adapted = ", BatchNorm statistics re-estimated on them" if probe["batchnorm_recalibrated"] else ""
        init.note = "; ".join(filter(None, [init.note, f"classifier from a linear probe on {probe['images']} "
                                                       f"training images{adapted} (LP-FT)"]))
    freeze_before(model, config.trainable_from)
    # θ₀ for L2-SP: the initial weights, taken before any resumed checkpoint is loaded
    anchor = StartingPointPenalty(model, model.get_classifier(), config.l2_sp)
    net: nn.Module = model
    if context.enabled:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    loaders = make_loaders(config, splits, preprocessing, context, device)
    optimizer = make_optimizer(model, config)
    steps = _steps_per_epoch(loaders)
    scheduler = make_scheduler(optimizer, config.schedule, total_steps=max(1, steps * config.epochs),
                               warmup_steps=steps * config.warmup_epochs)
    criterion = make_criterion(splits.species, splits.taxonomy, label_smoothing=config.label_smoothing,
                               taxonomy_weight=config.taxonomy_loss).to(device)
    return _Run(config, context, device, splits, model, net, init, preprocessing, loaders, optimizer, scheduler,
                grad_scaler(config.amp, device), criterion, anchor, Path(config.out), plan)


def _check_resumable(saved: dict[str, Any], config: TrainConfig) -> None:
    current = config.to_dict()
    changed = sorted(k for k in current if k not in RESUMABLE_CHANGES and saved.get(k) != current[k])
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} → {current[k]!r}" for k in changed)
        raise ResumeError(f"{config.out}: the checkpoint was written with a different config ({detail}); "
                          "use another --out or the original settings")


def _resume(run: _Run) -> None:
    """Load the last checkpoint into ``run`` (model, optimiser, schedule, history, RNGs)."""
    payload = load_checkpoint(run.run_dir / CHECKPOINT)
    _check_resumable(payload["config"], run.config)
    run.model.load_state_dict(payload["model"])
    run.optimizer.load_state_dict(payload["optimizer"])
    run.scheduler.load_state_dict(payload["scheduler"])
    # The schedule follows the *current* config (``epochs`` may have grown); set the LR the
    # next step uses from it, which is exactly the saved one when nothing changed.
    steps = _steps_per_epoch(run.loaders)
    fn = LrLambda(run.config.schedule, max(1, steps * run.config.epochs), steps * run.config.warmup_epochs)
    run.scheduler.lr_lambdas = [fn] * len(run.optimizer.param_groups)
    for group, base in zip(run.optimizer.param_groups, run.scheduler.base_lrs):
        group["lr"] = base * fn(run.scheduler.last_epoch)
    run.scaler.load_state_dict(payload["scaler"])
    restore_rng_states(payload["rng"])
    run.state = state_from_checkpoint(payload)
    run.resumed = True
    log.info("resumed %s after epoch %d", run.run_dir, run.state.epoch)


def _open_run_dir(run: _Run) -> None:
    """Continue the run in ``run_dir`` if asked to (never overwrite one silently), then
    record the config (after the resume check, so a refused resume changes nothing)."""
    checkpoint = run.run_dir / CHECKPOINT
    if checkpoint.exists() and not run.config.resume:
        raise ResumeError(f"{run.run_dir} already holds a run (checkpoint.pt); pass resume=True (--resume) "
                          "to continue it, or choose another output folder")
    if checkpoint.exists():
        _resume(run)
    if run.context.is_main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(run.config, run.run_dir / CONFIG_YAML)


# -------------------------------------------------------------------------- epoch


def _train_epoch(run: _Run, epoch: int, progress: TrainProgress, hooks: TrainHooks) -> dict[str, float]:
    """One pass over the training data; metrics are summed on the device, synced once."""
    train_mode(run.net, frozen_batchnorm=run.config.frozen_batchnorm)
    run.loaders.train_sampler.set_epoch(epoch)
    memory_format = torch.channels_last if run.config.channels_last else torch.contiguous_format
    sums = torch.zeros(3, dtype=torch.float64, device=run.device)  # loss·n, correct, n
    lr = run.optimizer.param_groups[0]["lr"]
    start = time.perf_counter()
    step = 0
    for batch in run.loaders.train:
        images = batch[0].to(run.device, non_blocking=True, memory_format=memory_format)
        targets = batch[1].to(run.device, non_blocking=True)
        sample_weights = batch[2].to(run.device, non_blocking=True) if len(batch) > 2 else None
        with autocast(run.config.amp, run.device):
            logits = run.net(images)
            loss = run.criterion(logits, targets, sample_weights)
        penalty = run.anchor()
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss + penalty).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        with torch.no_grad():
            n = targets.shape[0]
            sums += torch.stack([loss.detach().double() * n, (logits.argmax(1) == targets).sum().double(),
                                 torch.tensor(float(n), dtype=torch.float64, device=run.device)])
        step += 1
        progress.advance()
        if hooks.on_step is not None:
            hooks.on_step(epoch, step)
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    seconds = time.perf_counter() - start
    loss_sum, correct, n = all_reduce_sum(sums, run.context).tolist()
    return {"lr": lr, "train_loss": loss_sum / n if n else math.nan, "train_top1": correct / n if n else math.nan,
            "seconds": seconds, "images_per_second": n / seconds if seconds > 0 else math.nan}


def _evaluate(run: _Run, loader: Any) -> dict[str, Any]:
    return evaluate_model(run.net, loader, run.device, distributed=run.context.enabled, amp=run.config.amp,
                          tta=run.config.tta)


def _history_row(epoch: int, trained: dict[str, float], val: dict[str, Any] | None, test: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"epoch": epoch, "lr": trained["lr"], "train_loss": trained["train_loss"],
                           "train_top1": trained["train_top1"]}
    if val is not None:
        row.update(val_top1=val["top1"], val_loss=val["loss"])
    row.update(test_loss=test["loss"], test_top1=test["top1"], test_top5=test["top5"], test_n=test["n"],
               seconds=trained["seconds"], images_per_second=trained["images_per_second"])
    return row


def _update_best(run: _Run, row: dict[str, Any]) -> None:
    """With val: keep the best val epoch's weights (ties → the earlier epoch). Without: the last."""
    state = run.state
    if "val_top1" not in row:
        state.best_epoch = row["epoch"]
        return
    if row["val_top1"] > state.best_val_top1:
        state.best_epoch, state.best_val_top1 = row["epoch"], row["val_top1"]
        if run.context.is_main:
            save_weights(run.run_dir / BEST_WEIGHTS, run.model)


def _end_epoch(run: _Run, row: dict[str, Any], hooks: TrainHooks) -> None:
    state = run.state
    state.history.append(row)
    state.epoch = row["epoch"]
    _update_best(run, row)
    if run.context.is_main:
        save_checkpoint(run.run_dir / CHECKPOINT, model=run.model, optimizer=run.optimizer, scheduler=run.scheduler,
                        scaler=run.scaler, state=state, config=run.config.to_dict())
        write_metrics(run.run_dir, state.history)
        if state.epoch >= run.config.epochs or time.monotonic() - run.last_plot >= PLOT_EVERY_SECONDS:
            plot_curves({run.run_dir.name: state.history}, run.run_dir / LOSS_CURVE, title=run.config.arch)
            run.last_plot = time.monotonic()
    run.context.barrier()
    if hooks.on_epoch_end is not None:
        hooks.on_epoch_end(row)


def _run_epochs(run: _Run, progress: TrainProgress, hooks: TrainHooks) -> None:
    for epoch in range(run.state.epoch + 1, run.config.epochs + 1):
        seed_epoch(run.config.seed, epoch, run.context.rank)
        progress.start_epoch(epoch)
        trained = _train_epoch(run, epoch, progress, hooks)
        val = _evaluate(run, run.loaders.val) if run.loaders.val is not None else None
        test = _evaluate(run, run.loaders.test)
        row = _history_row(epoch, trained, val, test)
        progress.end_epoch(row)
        _end_epoch(run, row, hooks)


# ------------------------------------------------------------------------- finish


def _select_bundled_weights(run: _Run) -> dict[str, Any]:
    """Load the weights to bundle into the model; return their test metrics."""
    state = run.state
    if not state.history:  # zero epochs: the bundle is the initialised model (all ranks evaluate)
        return _evaluate(run, run.loaders.test)
    if run.loaders.val is not None and run.context.is_main:  # only rank 0 writes the bundle
        run.model.load_state_dict(torch.load(run.run_dir / BEST_WEIGHTS, map_location="cpu", weights_only=True))
    row = next(r for r in state.history if r["epoch"] == state.best_epoch)
    return {"top1": row["test_top1"], "top5": row["test_top5"], "n": row["test_n"], "loss": row["test_loss"]}


def _temperature(run: _Run) -> float:
    """Temperature scaling fitted on val (rank 0, whole val set); 1.0 without val."""
    if run.loaders.val is None or not run.context.is_main:
        return 1.0
    loader = eval_loader(run.loaders.val.dataset, run.loaders.val.batch_size, DistContext())
    out = forward(run.model, loader, run.device, tta=run.config.tta, amp=run.config.amp)
    return fit_temperature(out.logits, out.targets)


def infer_init_chain(config: TrainConfig) -> list[str]:
    """Where the initial weights came from, as a chain of stages (``config.init_chain`` wins)."""
    if config.init_chain:
        return list(config.init_chain)
    if config.init == "random":
        return []
    if config.init == "imagenet":
        return ["imagenet"]
    try:
        return list(read_bundle_meta(config.init).get("provenance", {}).get("init_chain", []))
    except (BundleError, OSError, ValueError):
        return [Path(config.init).name]


def _provenance(run: _Run) -> dict[str, Any]:
    dataset = Path(run.config.dataset)
    return provenance(seed=run.config.seed, dataset=str(dataset), dataset_manifest_hash=manifest_hash(dataset),
                      init=run.init.to_dict(), init_chain=infer_init_chain(run.config) + [dataset.resolve().name],
                      config=run.config.to_dict(), world_size=run.context.world_size, device=str(run.device))


def _finish(run: _Run) -> RunResult:
    final = _select_bundled_weights(run)
    temperature = _temperature(run)
    bundle_dir = run.run_dir / RUN_BUNDLE_DIR
    if run.context.is_main:
        record = _provenance(run)
        metrics = {"test": final, "best_epoch": run.state.best_epoch, "epochs": run.state.epoch}
        save_bundle(bundle_dir, model=run.model, arch=run.config.arch, species=run.splits.species,
                    taxonomy=run.splits.taxonomy, preprocessing=run.preprocessing, temperature=temperature,
                    provenance=record, metrics=metrics)
        write_json(run.run_dir / RUN_JSON, {"provenance": record, "final": final, "best_epoch": run.state.best_epoch,
                                            "temperature": temperature, "epochs": run.state.epoch,
                                            "resumed": run.resumed, "plan": run.plan,
                                            "history": run.state.history})
    run.context.barrier()
    return RunResult(run.run_dir, bundle_dir, run.state.history, final, run.state.best_epoch, run.resumed, temperature,
                     run.plan)


# --------------------------------------------------------------------------- train


def train(config: TrainConfig, *, progress: bool = True, hooks: TrainHooks | None = None) -> RunResult:
    """Train ``config.arch`` on ``config.dataset``; write the run folder and its bundle.

    Writes (rank 0 only) ``RUN/config.yaml``, ``checkpoint.pt`` (every epoch),
    ``best.pt`` (with val), ``metrics.jsonl``, ``metrics.csv``, ``loss_curve.png``,
    ``run.json`` and ``bundle/``. With ``config.resume`` it continues from
    ``checkpoint.pt``. Under ``torchrun`` every process calls this same function.
    """
    config = validate(config_from_dict(config.to_dict()))
    if config.resume and not (Path(config.out) / CHECKPOINT).is_file():
        raise ResumeError(f"{config.out}: no {CHECKPOINT} to resume from; drop --resume to start a new run there")
    hooks = hooks or TrainHooks()
    context, device = setup(config.device)
    try:
        run = _assemble(config, context, device)
        if progress and context.is_main:
            print(f"herbid train: {describe_plan(run.plan)}", file=sys.stderr, flush=True)
        _open_run_dir(run)
        total = _steps_per_epoch(run.loaders) * max(0, run.config.epochs - run.state.epoch)
        with TrainProgress(total, run.config.epochs, enabled=progress and context.is_main) as bar:
            _run_epochs(run, bar, hooks)
        return _finish(run)
    finally:
        context.close()
