"""Top-k accuracy and loss over a loader, exact under data parallelism.

Every image counts exactly once: under DDP each process evaluates its own shard of a
sampler that does *not* pad (``herbid.inference.sheets.ShardSampler``), and the processes
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

from herbid.inference.forward import forward_batches

Batch = tuple[torch.Tensor, torch.Tensor]


def topk_hit_rows(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """(rows, len(ks)) bool: is each row's target among its top ``k`` classes, for every k
    (k clamped to the class count), from one ``topk`` for the largest k."""
    maxk = max(1, min(max(ks), logits.shape[1]))
    hit = logits.topk(maxk, dim=1).indices.eq(targets.view(-1, 1))
    cumulative = hit.cumsum(dim=1) > 0  # a hit anywhere in the first j columns
    return torch.stack([cumulative[:, min(max(k, 1), maxk) - 1] for k in ks], dim=1)


def _hits(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """Correct counts per k as a tensor (no host sync); k is clamped to the class count."""
    return topk_hit_rows(logits, targets, ks).sum(dim=0)


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, int]:
    """How many rows have their target among the top ``k`` logits, per ``k``.

    With fewer classes than ``k``, top-k is top-(number of classes): always correct.
    """
    if logits.shape[0] == 0:
        return {k: 0 for k in ks}
    counts = _hits(logits, targets, ks).tolist()
    return {k: int(c) for k, c in zip(ks, counts)}


def evaluate_model(model: nn.Module, loader: Iterable[Batch], device: str | torch.device, *,
                   distributed: bool = False, amp: str = "none", tta: str = "none") -> dict[str, float | int]:
    """``{"top1", "top5", "n", "loss"}`` over every image of ``loader`` (or of all ranks' loaders).

    With ``distributed=True`` each rank passes a loader over its own unpadded shard and the
    sums are all-reduced, so the result equals a single-process evaluation of the whole set.
    ``loss`` is the mean cross-entropy (no label smoothing) of the logits averaged over the
    ``tta`` views. The accumulation stays on the device; the host syncs once at the end.
    """
    device = torch.device(device)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # top1, top5, loss, n
    for out in forward_batches(model, loader, device, tta=tta, amp=amp):
        logits, targets = out.logits, out.targets
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


def accuracy_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float | int]:
    """The same dict as :func:`evaluate_model`, from logits already in memory."""
    n = int(targets.numel())
    if n == 0:
        return {"top1": math.nan, "top5": math.nan, "n": 0, "loss": math.nan}
    counts = topk_correct(logits, targets, (1, 5))
    loss = F.cross_entropy(logits.float(), targets, reduction="none").to(torch.float64).sum().item()
    return {"top1": counts[1] / n, "top5": counts[5] / n, "n": n, "loss": loss / n}
