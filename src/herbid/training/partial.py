"""Partial fine-tuning: train only the last layers, keep the ImageNet BatchNorm statistics,
and pull the trained weights toward where they started (L2-SP).

With ~5 sheets per species, fine-tuning every layer of an ImageNet backbone overfits the
few training sheets (docs/RESULTS.md: the full fine-tune only ties the frozen linear probe).
Three standard brakes, each a config key:

* ``trainable_from`` — the name prefix of the first trainable parameter (in
  ``named_parameters`` order, e.g. ``model.blocks.5`` for EfficientNet-Lite); every
  parameter before it is frozen. Autograd then never records the frozen stem, so a step
  costs a forward pass plus the backward of the tail only.
* ``frozen_batchnorm`` — BatchNorm layers stay in eval mode during training, so batches of
  16 sheets never overwrite statistics estimated on a million ImageNet images.
* ``l2_sp`` — Li et al. 2018, "Explicit inductive bias for transfer learning": the penalty
  ``l2_sp/2 · ‖θ − θ₀‖²`` over the trainable backbone weights (not the new classifier),
  so the features move only where the training sheets demand it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from herbid.errors import InvalidOption


def freeze_before(model: nn.Module, first_trainable: str) -> int:
    """Freeze every parameter listed before the first one named ``first_trainable…``.

    Returns how many parameter tensors stay trainable. An empty prefix freezes nothing; a
    prefix that names no parameter is an error listing the model's top-level blocks.
    """
    if not first_trainable:
        return sum(1 for _ in model.parameters())
    names = [name for name, _ in model.named_parameters()]
    start = next((i for i, name in enumerate(names) if name.startswith(first_trainable)), None)
    if start is None:
        blocks = sorted({".".join(name.split(".")[:3]) for name in names})
        raise InvalidOption(f"trainable_from={first_trainable!r} names no parameter of the model; "
                            f"its blocks include: {', '.join(blocks[:12])}")
    for index, parameter in enumerate(model.parameters()):
        parameter.requires_grad_(index >= start)
    return len(names) - start


def train_mode(model: nn.Module, *, frozen_batchnorm: bool) -> None:
    """``model.train()``, with every BatchNorm kept in eval mode when ``frozen_batchnorm``."""
    model.train()
    if frozen_batchnorm:
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                module.eval()


class StartingPointPenalty(nn.Module):
    """L2-SP: ``strength/2 · Σ ‖θ − θ₀‖²`` over the trainable parameters other than the
    classifier, with θ₀ copied when the penalty is made (the initial weights)."""

    def __init__(self, model: nn.Module, classifier: nn.Module, strength: float) -> None:
        super().__init__()
        self.strength = strength
        head = {id(p) for p in classifier.parameters()}
        self.params = [p for p in model.parameters() if p.requires_grad and id(p) not in head]
        self.anchors = [p.detach().clone() for p in self.params] if strength > 0 else []

    def forward(self) -> torch.Tensor | float:
        if self.strength <= 0:
            return 0.0
        total = sum((p - a).pow(2).sum() for p, a in zip(self.params, self.anchors, strict=True))
        return 0.5 * self.strength * total
