"""Everything a run needs before its first step: the data splits, loaders, model and optimiser.

Kept apart from the loop so that the experiments (and the benchmark) can build exactly
the objects ``train()`` uses.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from herbid.data.dataset_folder import DatasetError, load_manifest
from herbid.data.splits import TEST, assign_splits
from herbid.errors import InvalidOption
from herbid.inference.forward import forward, tta_views
from herbid.inference.pixels import eval_transform, resolved_sizes
from herbid.inference.sheets import ManifestDataset, ShardSampler, select_rows, species_and_taxonomy
from herbid.models.base import HerbidModel, InitRecord, Preprocessing
from herbid.models.registry import create_model
from herbid.models.tta import view_count
from herbid.training.config import TrainConfig
from herbid.training.data import SeededBatchSampler, sample_weights, train_transform
from herbid.training.distributed import DistContext
from herbid.training.shard_data import training_dataset, training_order

log = logging.getLogger(__name__)

@dataclass
class Splits:
    """The rows of each side of the experiment, and the class list they share."""

    train: pd.DataFrame
    test: pd.DataFrame
    val: pd.DataFrame | None
    species: list[str]
    taxonomy: dict[str, dict[str, str | None]]


def prepare_splits(config: TrainConfig, frame: pd.DataFrame | None = None) -> Splits:
    """Train / test (/ val) rows for ``config``.

    Val, when ``val_fraction`` > 0, is carved from the training rows with the same
    group-aware, species-stratified splitter as the dataset's test split (no collector
    leaks between train and val either). Otherwise the manifest's own val rows, if any.
    The class list covers every row used, so that class indices agree across folds.
    """
    frame = load_manifest(config.dataset) if frame is None else frame
    train = select_rows(frame, split=config.train_split, fold=config.fold, train=True)
    test = select_rows(frame, split=config.test_split, fold=config.fold, train=False)
    val: pd.DataFrame | None = None
    if config.val_fraction > 0:
        labels = assign_splits(train, by=config.val_by, test_fraction=config.val_fraction, seed=config.seed)
        val, train = train[(labels == TEST).to_numpy()], train[(labels != TEST).to_numpy()]
    elif config.fold is None:
        own_val = select_rows(frame, split=config.val_split)
        val = own_val if len(own_val) else None
    if len(train) == 0:
        raise DatasetError(f"{config.dataset}: no training rows (split {config.train_split!r} / fold {config.fold}); "
                           "run `herbid dataset split` first")
    trained_species = train["scientificName"].nunique()
    if trained_species < 2:
        # One class trains "perfectly" (top-1 1.0) and identifies nothing: refuse, don't report it.
        raise DatasetError(f"{config.dataset}: the training rows hold {trained_species} species; a classifier needs "
                           "at least 2 (check --min-per-species and the source's names)")
    used = pd.concat([part for part in (train, test, val) if part is not None])
    species, taxonomy = species_and_taxonomy(used)
    return Splits(train, test, val, species, taxonomy)


def build_model(config: TrainConfig, num_classes: int) -> tuple[HerbidModel, InitRecord]:
    """The model, initialised as ``config.init`` says, seeded so the random init repeats.

    A path is a transfer (the paper's protocol): all weights but the classifier come from
    the file, bundle or run; the classifier is new, sized for this dataset's species.
    """
    torch.manual_seed(config.seed)
    return create_model(config.arch, num_classes, init=config.init, skip_classifier=True)


#: Floor on the probe's feature std (fraction of the median) when fine-tuning follows
#: (a probe that is the final model needs none): folded into the layer,
#: a near-constant feature would otherwise get a weight in the hundreds, harmless on the
#: eval-mode features the probe saw but explosive under train-mode BatchNorm statistics.
HEAD_INIT_STD_FLOOR = 0.5


def recalibrate_batchnorm(model: nn.Module, loader: DataLoader, device: torch.device,
                          memory_format: torch.memory_format = torch.contiguous_format) -> int:
    """Re-estimate every BatchNorm layer's running mean and variance on ``loader``'s images
    (AdaBN, Li et al. 2016); nothing else changes. Returns the number of layers updated.

    ImageNet statistics at 224 px differ from those of herbarium sheets at 448 px, so the
    features a network computes in train mode (batch statistics) differ from its eval-mode
    features; a head fitted on the latter starts fine-tuning with a large, misleading loss.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return 0
    was_training = model.training
    momenta = [layer.momentum for layer in layers]
    model.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over all batches
        layer.train()
    with torch.no_grad():
        for images, _ in loader:
            model(images.to(device, memory_format=memory_format))
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
    model.train(was_training)
    return len(layers)


def init_head_from_probe(model: HerbidModel, config: TrainConfig, splits: Splits, preprocessing: Preprocessing,
                         device: torch.device) -> dict[str, Any]:
    """Set the classifier to a logistic regression fitted on the frozen features of the
    training images (eval transform, no augmentation): LP-FT's first step.

    With ``head_init="bn-linear-probe"`` the BatchNorm statistics are first re-estimated on
    the same images, so the probe sees the features that training will compute.
    The probe standardises features; the standardisation is folded into the linear layer,
    so the model is unchanged in form. Returns a small record for the run's provenance.
    """
    from herbid.evaluation.baselines import DEFAULT_L2, fit_logistic_regression

    head = model.get_classifier()
    if not isinstance(head, nn.Linear):
        raise InvalidOption(f"head_init={config.head_init} needs a linear classifier; {config.arch} has "
                         f"{type(head).__name__}")
    dataset = training_dataset(config, splits.train, splits.species, eval_transform(preprocessing))
    loader = DataLoader(dataset, batch_size=config.batch_size * 2, shuffle=False, num_workers=0)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    recalibrated = 0
    if config.head_init == "bn-linear-probe":
        recalibrated = recalibrate_batchnorm(model, loader, device, memory_format)
    # one row per test-time view of each sheet: the probe sees what evaluation averages over
    views = view_count(config.tta)
    features = _view_major_features(model, loader, config.tta, device)
    targets = np.tile(np.asarray(dataset.targets), views)
    weights = sample_weights(config.sample_weight, splits.train)
    probe = fit_logistic_regression(features, targets, len(splits.species), l2=DEFAULT_L2,
                                    std_floor=HEAD_INIT_STD_FLOOR if config.epochs > 0 else 0.0,
                                    sample_weight=None if weights is None else np.tile(weights, views))
    weight = probe.weight / probe.std
    bias = probe.bias - weight @ probe.mean
    with torch.no_grad():
        head.weight.copy_(weight.to(head.weight))
        head.bias.copy_(bias.to(head.bias))
    return {"head_init": config.head_init, "images": len(dataset), "l2": DEFAULT_L2,
            "batchnorm_recalibrated": recalibrated}


def _view_major_features(model: HerbidModel, loader: DataLoader, tta: str, device: torch.device) -> np.ndarray:
    """Pooled features of every sheet in every test-time view of ``tta``, view-major (all
    sheets' first view, then all sheets' second, …). Each batch is decoded once and run
    once per view."""
    views = view_count(tta)

    def each_view() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, targets, *_ in loader:
            for view in tta_views(images, tta):
                yield view, targets

    pooled = forward(model, each_view(), device, pooled=True).pooled.numpy()
    # the rows arrive batch by batch, each batch once per view: sort them by (view, sheet)
    n, size = len(loader.dataset), loader.batch_size
    keys = np.concatenate([view * n + np.arange(start, min(start + size, n))
                           for start in range(0, n, size) for view in range(views)])
    return pooled[np.argsort(keys)]


def effective_preprocessing(model: HerbidModel, config: TrainConfig) -> Preprocessing:
    """The model's preprocessing with the sizes this run actually trains at."""
    base = model.preprocessing
    size, resize = resolved_sizes(base, config.input_size, config.resize_size)
    return Preprocessing(input_size=size, resize_size=resize, mean=tuple(base.mean), std=tuple(base.std),
                         tta=config.tta, aspect=config.aspect)


def param_groups(model: nn.Module, weight_decay: float, *, lr: float | None = None,
                 head: nn.Module | None = None, head_lr: float | None = None) -> list[dict[str, Any]]:
    """Weight decay on weights only, none on biases, BatchNorm and PReLU slopes; frozen
    parameters left out. With ``head`` and ``head_lr``, the classifier's parameters form
    their own groups at ``head_lr`` (a new head learns faster than pretrained features).

    Caffe's GoogLeNet definitions set ``decay_mult: 0`` for biases, and decaying PReLU
    slopes pushes them toward ReLU (He et al. 2015 train them without decay).
    """
    head_ids = {id(p) for p in head.parameters()} if head is not None and head_lr is not None else set()
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for parameter in model.parameters():
        if parameter.requires_grad:
            groups.setdefault((id(parameter) in head_ids, parameter.dim() <= 1), []).append(parameter)
    out = []
    # decayed before undecayed, backbone before head: the group order of older checkpoints
    for (is_head, undecayed), params in sorted(groups.items()):
        decays = not undecayed
        group: dict[str, Any] = {"params": params, "weight_decay": weight_decay if decays else 0.0}
        if is_head:
            group["lr"] = head_lr
        elif lr is not None:
            group["lr"] = lr
        out.append(group)
    return out


def make_optimizer(model: HerbidModel, config: TrainConfig) -> torch.optim.Optimizer:
    head_lr = config.lr * config.head_lr_scale if config.head_lr_scale != 1.0 else None
    groups = param_groups(model, config.weight_decay, lr=config.lr, head=model.get_classifier(), head_lr=head_lr)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)


@dataclass
class Loaders:
    train: DataLoader
    train_sampler: SeededBatchSampler
    test: DataLoader
    val: DataLoader | None


def loader_workers(requested: int, device: torch.device) -> int:
    """DataLoader workers to use: ``requested``, except that on the CPU the workers and
    torch's compute threads must not outnumber the cores.

    Oversubscribed, every OpenMP parallel region of a forward pass waits at its barrier
    for a thread that a decoding worker has pushed off its core: on a 2-core machine,
    2 workers beside 2 compute threads made evaluation 3× slower (36 vs 107 images/s)
    and training ~10 % slower. Decoding a 256 px JPEG takes ~2 ms, little next to a CPU
    forward/backward pass, so loading in the main process is the better trade there.
    """
    if device.type != "cpu" or requested == 0:
        return requested
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # torchrun: processes on this node
    spare = (os.cpu_count() or 1) // max(1, processes) - torch.get_num_threads()
    workers = max(0, min(requested, spare))
    if workers != requested:
        log.info("using %d DataLoader workers instead of %d: %d cores, %d torch threads", workers, requested,
                 os.cpu_count() or 1, torch.get_num_threads())
    return workers


def _loader_kwargs(workers: int, device: torch.device) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=4)
    return kwargs


def eval_loader(dataset: ManifestDataset, batch_size: int, context: DistContext, *, workers: int = 0,
                pin_memory: bool = False) -> DataLoader:
    """A loader over this process's unpadded shard (every image once across processes)."""
    sampler = ShardSampler(len(dataset), context.rank, context.world_size)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin_memory)


def make_loaders(config: TrainConfig, splits: Splits, preprocessing: Preprocessing, context: DistContext,
                 device: torch.device) -> Loaders:
    """The training loader (seeded order and augmentation, split across processes; from
    ``config.shards`` when set) and the evaluation loaders (sharded without padding)."""
    size, resize = preprocessing.input_size, preprocessing.resize_size
    weights = sample_weights(config.sample_weight, splits.train)
    train_set = training_dataset(config, splits.train, splits.species,
                                 train_transform(preprocessing, size, resize, config.hflip, config.vflip,
                                                 config.rot90, config.jitter, config.min_crop_area), weights=weights)
    order = training_order(config, train_set, context)
    batches = SeededBatchSampler(order, config.batch_size, config.seed, config.max_steps_per_epoch)
    workers = loader_workers(config.workers, device)
    kwargs = _loader_kwargs(workers, device)
    # A private generator: the loader's worker base seed must not consume the global RNG,
    # whose per-epoch stream belongs to the model (dropout).
    train = DataLoader(train_set, batch_sampler=batches, generator=torch.Generator().manual_seed(config.seed), **kwargs)
    evaluation = eval_transform(preprocessing, size, resize)
    eval_batch = config.batch_size * 2
    eval_workers = min(workers, 2)

    def loader(frame: pd.DataFrame) -> DataLoader:
        dataset = ManifestDataset(config.dataset, frame, splits.species, evaluation)
        return eval_loader(dataset, eval_batch, context, workers=eval_workers, pin_memory=device.type == "cuda")

    val = loader(splits.val) if splits.val is not None and len(splits.val) else None
    return Loaders(train, batches, loader(splits.test), val)
