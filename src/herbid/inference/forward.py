"""The one forward pass: sheets in, logits (averaged over test-time views) and features out.

Every consumer of a model calls :func:`forward` (or :func:`forward_batches` for results
kept on the device): training's test metrics, ``evaluate``, the frozen-feature
baselines, the LP-FT head, the similar-specimen index, ``identify``, ``review``, the web
app, and the ONNX export through :class:`SheetClassifier`. So a sheet gets the same
probabilities from every door: the bundle's test-time augmentation is applied
everywhere or nowhere, never in one place and not in another.

Test-time augmentation: a pressed plant has no canonical orientation, so a mirrored
sheet is an equally valid view; the logits are the mean over the views of the bundle's
``tta`` mode (:data:`herbid.models.tta.TTA_VIEWS`). The pooled features (the search
embedding, the baselines' features) are those of the first view, the sheet as it is,
taken from the same backbone pass as its logits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from herbid.errors import InvalidOption
from herbid.inference.device import autocast
from herbid.models.tta import TTA_VIEWS


def tta_views(images: torch.Tensor, tta: str) -> list[torch.Tensor]:
    """The views of a (B, C, H, W) batch for ``tta`` (the first is the batch itself)."""
    try:
        return TTA_VIEWS[tta](images)
    except KeyError:
        raise InvalidOption(f"unknown tta {tta!r}; choose one of {sorted(TTA_VIEWS)}") from None


def forward_batch(model: nn.Module, images: torch.Tensor, tta: str = "none", *,
                  pooled: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logits, pooled features or None)`` of one batch already on the model's device.

    The logits are the mean over the ``tta`` views; the pooled pre-logit features are the
    first view's, from the same backbone pass. Runs in whatever grad/eval mode the caller set.
    """
    views = tta_views(images, tta)
    if pooled:
        feature_map = model.forward_features(views[0])
        features = model.forward_head(feature_map, pre_logits=True)
        logits = [model.forward_head(feature_map)]
    else:
        features, logits = None, [model(views[0])]
    logits += [model(view) for view in views[1:]]
    return (logits[0] if len(logits) == 1 else torch.stack(logits).mean(dim=0)), features


class SheetClassifier(nn.Module):
    """``model`` with its test-time augmentation as one module (what the ONNX export
    traces, and what training's test metrics evaluate)."""

    def __init__(self, model: nn.Module, tta: str = "none") -> None:
        super().__init__()
        tta_views(torch.zeros(1, 1, 1, 1), tta)  # validate now, not at the first batch
        self.model, self.tta = model, tta

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return forward_batch(self.model, images, self.tta)[0]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a (Distributed)DataParallel wrapper: inference needs no gradient
    sync or buffer broadcast, and each rank evaluates its own shard."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def wants_channels_last(model: nn.Module) -> bool:
    """Inputs follow the layout of the first conv weight whose layout is unambiguous
    (1×1 kernels are contiguous in both layouts)."""
    for parameter in model.parameters():
        if parameter.dim() == 4:
            last = parameter.is_contiguous(memory_format=torch.channels_last)
            if last != parameter.is_contiguous():
                return last
    return False


@dataclass
class BatchOutput:
    """One batch's results, on the device: float32 logits, targets, optional pooled features."""

    logits: torch.Tensor
    targets: torch.Tensor
    pooled: torch.Tensor | None = None


def _split(batch: torch.Tensor | Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, torch.Tensor):
        return batch, None
    images, targets, *_ = batch  # (images, targets) or (images, targets, weights)
    return images, torch.as_tensor(targets)


def forward_batches(model: nn.Module, batches: Iterable[torch.Tensor | Iterable[torch.Tensor]],
                    device: str | torch.device, *, tta: str = "none", amp: str = "none",
                    pooled: bool = False) -> Iterator[BatchOutput]:
    """:class:`BatchOutput` per batch, in eval mode without autograd (the model's mode is
    restored afterwards). A batch is a tensor or an ``(images, targets, ...)`` sequence as a
    ``DataLoader`` gives it; a batch without targets gets ``-1`` for each image."""
    device = torch.device(device)
    net = unwrap(model)
    was_training = net.training
    net.eval()
    memory_format = torch.channels_last if wants_channels_last(net) else torch.contiguous_format
    try:
        with torch.inference_mode():
            for batch in batches:
                images, targets = _split(batch)
                images = images.to(device, non_blocking=True, memory_format=memory_format)
                targets = (torch.full((len(images),), -1, dtype=torch.long) if targets is None else targets)
                with autocast(amp, device):
                    logits, features = forward_batch(net, images, tta, pooled=pooled)
                yield BatchOutput(logits.float(), targets.to(device, non_blocking=True),
                                  None if features is None else features.float())
    finally:
        net.train(was_training)


@dataclass
class ForwardOutput:
    """Every image's results, on the CPU, in input order."""

    logits: torch.Tensor  # (N, C) float32, uncalibrated, mean over the TTA views
    targets: torch.Tensor  # (N,) class indices (-1 where the input had none)
    pooled: torch.Tensor | None = None  # (N, D) float32 pre-logit features of the first view

    @property
    def embeddings(self) -> np.ndarray:
        """The pooled features L2-normalised (inner product = cosine similarity), float32."""
        if self.pooled is None:
            raise ValueError("forward(..., pooled=True) keeps the features embeddings are made of")
        return F.normalize(self.pooled, dim=1).numpy()


def forward(model: nn.Module, batches: Iterable[torch.Tensor | Iterable[torch.Tensor]],
            device: str | torch.device, *, tta: str = "none", amp: str = "none", pooled: bool = False,
            advance: Callable[[int], None] | None = None) -> ForwardOutput:
    """Run every batch through ``model`` (see :func:`forward_batches`) and gather the results
    on the CPU; ``advance(n)`` is called after each batch of ``n`` images (progress bars)."""
    logits, targets, features = [], [], []
    for out in forward_batches(model, batches, device, tta=tta, amp=amp, pooled=pooled):
        logits.append(out.logits.cpu())
        targets.append(out.targets.cpu())
        if out.pooled is not None:
            features.append(out.pooled.cpu())
        if advance is not None:
            advance(len(out.logits))
    if not logits:
        return ForwardOutput(torch.zeros(0, 0), torch.zeros(0, dtype=torch.long),
                             torch.zeros(0, 0) if pooled else None)
    return ForwardOutput(torch.cat(logits), torch.cat(targets), torch.cat(features) if pooled else None)
