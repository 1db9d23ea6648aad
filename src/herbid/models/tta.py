"""Test-time augmentation: classify a sheet and its mirror images, average the logits.

A pressed plant has no canonical orientation (left/right depends on how it was laid on
the paper), so a mirrored sheet is an equally valid view. TTA is part of a bundle's
preprocessing, so ``evaluate``, ``identify`` and the training loop's test metrics all
classify the same way. Modes are a registry: add one without touching callers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from herbid.errors import InvalidOption

#: TTA mode → the views of a (B, C, H, W) batch (the first is the batch itself).
TTA_VIEWS: dict[str, Callable[[torch.Tensor], list[torch.Tensor]]] = {
    "none": lambda x: [x],
    "flip": lambda x: [x, x.flip(3)],
    "flip2": lambda x: [x, x.flip(3), x.flip(2), x.flip(2).flip(3)],
}


class TTAModel(nn.Module):
    """``model`` whose logits are the mean over the views of ``mode``."""

    def __init__(self, model: nn.Module, mode: str) -> None:
        super().__init__()
        if mode not in TTA_VIEWS:
            raise InvalidOption(f"unknown tta {mode!r}; choose one of {sorted(TTA_VIEWS)}")
        self.model, self.mode = model, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        views = TTA_VIEWS[self.mode](x)
        return torch.stack([self.model(v) for v in views]).mean(dim=0)


def view_count(mode: str) -> int:
    """How many forward passes ``mode`` makes per image."""
    return len(TTA_VIEWS[mode](torch.zeros(1, 1, 1, 1)))


def with_tta(model: nn.Module, mode: str) -> nn.Module:
    """``model`` itself for ``"none"``, else a :class:`TTAModel` around it."""
    return model if mode == "none" else TTAModel(model, mode)
