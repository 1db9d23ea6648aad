"""Top-k accuracy and loss over a loader, exact under data parallelism.

Every image counts exactly once: under DDP each process evaluates its own shard of a
sampler that does *not* pad (``herbid.training.data.ShardSampler``), and the processes
add up the *sums* (correct counts, summed loss, number of images) before dividing.
Averaging per-process accuracies would weight shards of different sizes equally, and
``DistributedSampler``'s padding would count repeated images twice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from herbid.training.precision import autocast

Batch = tuple[torch.Tensor, torch.Tensor]


def _hits(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """Correct counts per k as a tensor (no host sync); k is clamped to the class count."""
    maxk = max(1, min(max(ks), logits.shape[1]))
    top = logits.topk(maxk, dim=1).indices
    hit = top.eq(targets.view(-1, 1))
    cumulative = hit.cumsum(dim=1).clamp_(max=1)  # hit anywhere in the first j columns
    return torch.stack([cumulative[:, min(k, maxk) - 1].sum() for k in ks])


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, int]:
    """How many rows have their target among the top ``k`` logits, per ``k``.

    With fewer classes than ``k``, top-k is top-(number of classes): always correct.
    """
    if logits.shape[0] == 0:
        return {k: 0 for k in ks}
    counts = _hits(logits, targets, ks).tolist()
    return {k: int(c) for k, c in zip(ks, counts)}


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside a (Distributed)DataParallel wrapper: evaluation needs no gradient
    sync or buffer broadcast, and each rank evaluates its own shard."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def _wants_channels_last(model: nn.Module) -> bool:
    """Inputs follow the layout of the first conv weight whose layout is unambiguous
    (1×1 kernels are contiguous in both layouts)."""
    for parameter in model.parameters():
        if parameter.dim() == 4:
            last = parameter.is_contiguous(memory_format=torch.channels_last)
            if last != parameter.is_contiguous():
                return last
    return False


def _to_device(images: torch.Tensor, targets: torch.Tensor, device: torch.device,
               channels_last: bool) -> Batch:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    images = images.to(device, non_blocking=True, memory_format=memory_format)
    return images, targets.to(device, non_blocking=True)


def _batches(model: nn.Module, loader: Iterable[Batch], device: torch.device, amp: str) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """(float32 logits, targets) per batch, in eval mode without autograd."""
    net = _unwrap(model)
    was_training = net.training
    net.eval()
    channels_last = _wants_channels_last(net)
    try:
        with torch.inference_mode():
            for images, targets in loader:
                images, targets = _to_device(images, targets, device, channels_last)
                with autocast(amp, device):
                    logits = net(images)
                yield logits.float(), targets
    finally:
        net.train(was_training)


def evaluate_model(model: nn.Module, loader: Iterable[Batch], device: str | torch.device, *,
                   distributed: bool = False, amp: str = "none") -> dict[str, float | int]:
    """``{"top1", "top5", "n", "loss"}`` over every image of ``loader`` (or of all ranks' loaders).

    With ``distributed=True`` each rank passes a loader over its own unpadded shard and the
    sums are all-reduced, so the result equals a single-process evaluation of the whole set.
    ``loss`` is the mean cross-entropy (no label smoothing). The accumulation stays on the
    device; the host syncs once at the end.
    """
    device = torch.device(device)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # top1, top5, loss, n
    for logits, targets in _batches(model, loader, device, amp):
        hits = _hits(logits, targets, (1, 5)).to(torch.float64)
        loss = F.cross_entropy(logits, targets, reduction="none").to(torch.float64).sum()
        sums += torch.stack([hits[0], hits[1], loss, torch.tensor(float(len(targets)), dtype=torch.float64, device=device)])
    if distributed and dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    top1, top5, loss, n = sums.tolist()
    n = int(round(n))
    if n == 0:
        return {"top1": math.nan, "top5": math.nan, "n": 0, "loss": math.nan}
    return {"top1": top1 / n, "top5": top5 / n, "n": n, "loss": loss / n}


def predict_logits(model: nn.Module, loader: Iterable[Batch], device: str | torch.device,
                   amp: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    """All float32 logits and targets of ``loader``, in loader order, on the CPU (one process)."""
    device = torch.device(device)
    logits, targets = [], []
    for batch_logits, batch_targets in _batches(model, loader, device, amp):
        logits.append(batch_logits.cpu())
        targets.append(batch_targets.cpu())
    if not logits:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(logits), torch.cat(targets)


def accuracy_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float | int]:
    """The same dict as :func:`evaluate_model`, from logits already in memory."""
    n = int(targets.numel())
    if n == 0:
        return {"top1": math.nan, "top5": math.nan, "n": 0, "loss": math.nan}
    counts = topk_correct(logits, targets, (1, 5))
    loss = F.cross_entropy(logits.float(), targets, reduction="none").to(torch.float64).sum().item()
    return {"top1": counts[1] / n, "top5": counts[5] / n, "n": n, "loss": loss / n}
