"""The one contract every herbid model follows (after timm's).

* ``forward_features(x)`` → the backbone's last feature map (B, C, H, W);
* ``forward_head(features, pre_logits=False)`` → pooled features (``pre_logits=True``,
  shape (B, num_features)) or class logits;
* ``forward(x)`` = ``forward_head(forward_features(x))``;
* ``reset_classifier(num_classes)`` → a new, randomly initialised linear classifier with
  every other layer kept (the paper's transfer protocol);
* ``embed(x)`` → L2-normalised pooled features for similar-specimen search;
* ``preprocessing`` → how inputs must be scaled (mean/std of the weights' training).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def sheet_shape(size: int, aspect: float = 1.0) -> tuple[int, int]:
    """(width, height) of a ``size`` px wide image or crop with height / width ``aspect``."""
    return size, max(1, round(size * aspect))


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its pixels: RGB in [0, 1], then ``(x - mean) / std``."""

    input_size: int = 224
    resize_size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    #: Test-time augmentation every user of the bundle applies (see herbid.models.tta):
    #: "none", or "flip" (mean logits of the image and its mirror).
    tta: str = "none"
    #: Height / width of the resized image and of the crop (sizes above are widths);
    #: 1.0 = the paper's square squeeze.
    aspect: float = 1.0

    @property
    def input_shape(self) -> tuple[int, int]:
        """(height, width) of the model input."""
        width, height = sheet_shape(self.input_size, self.aspect)
        return height, width

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        return cls(input_size=int(data["input_size"]), resize_size=int(data["resize_size"]),
                   mean=tuple(data["mean"]), std=tuple(data["std"]), tta=str(data.get("tta", "none")),
                   aspect=float(data.get("aspect", 1.0)))


@dataclass
class InitRecord:
    """What a model's weights were initialised from, recorded next to every result."""

    kind: str  # "random", "imagenet" or "file"
    source: str = ""  # where the weights came from (package, URL, path)
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class HerbidModel(nn.Module):
    """Base class: subclasses build ``self.classifier`` and implement ``forward_features``."""

    num_features: int
    num_classes: int
    preprocessing: Preprocessing = Preprocessing()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def reset_classifier(self, num_classes: int) -> None:
        raise NotImplementedError

    def get_classifier(self) -> nn.Module:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.forward_head(self.forward_features(x), pre_logits=True), dim=1)
