"""Test-time augmentation modes: the views of a sheet a bundle classifies.

A pressed plant has no canonical orientation (left/right depends on how it was laid on
the paper), so a mirrored sheet is an equally valid view. TTA is part of a bundle's
preprocessing; :func:`herbid.inference.forward.forward` averages the logits over the
views, so ``evaluate``, ``identify``, the web app, ``review``, the ONNX export and the
training loop's test metrics all classify the same way. Modes are a registry: add one
without touching callers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: TTA mode → the views of a (B, C, H, W) batch (the first is the batch itself).
TTA_VIEWS: dict[str, Callable[[torch.Tensor], list[torch.Tensor]]] = {
    "none": lambda x: [x],
    "flip": lambda x: [x, x.flip(3)],
    "flip2": lambda x: [x, x.flip(3), x.flip(2), x.flip(2).flip(3)],
}


def view_count(mode: str) -> int:
    """How many forward passes ``mode`` makes per image."""
    return len(TTA_VIEWS[mode](torch.zeros(1, 1, 1, 1)))
