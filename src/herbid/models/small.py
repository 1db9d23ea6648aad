"""A small CNN for tests and CI: trains on synthetic sheets in seconds on a CPU."""

from __future__ import annotations

import torch
from torch import nn

from herbid.models.base import HerbidModel, Preprocessing
from herbid.models.registry import register_model


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.PReLU(cout), nn.MaxPool2d(2))


class SmallCNN(HerbidModel):
    """Four conv-BN-PReLU blocks and a linear head (~100k parameters)."""

    def __init__(self, num_classes: int, width: int = 32) -> None:
        super().__init__()
        self.preprocessing = Preprocessing(input_size=112, resize_size=128, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        self.features = nn.Sequential(_block(3, width // 2), _block(width // 2, width), _block(width, width * 2),
                                      _block(width * 2, width * 2))
        self.num_features = width * 2
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = self.pool(features).flatten(1)
        return pooled if pre_logits else self.classifier(pooled)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes)


@register_model("small_cnn", description="a small CNN for tests and quick CPU runs (no ImageNet weights)")
def small_cnn(num_classes: int) -> SmallCNN:
    return SmallCNN(num_classes)
