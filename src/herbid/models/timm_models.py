"""Any timm model as a herbid model (``--arch timm:NAME``).

timm already has herbid's contract (``forward_features``, ``forward_head(pre_logits=)``,
``reset_classifier``, ``get_classifier``, ``num_features``), so the wrapper delegates.
Models are always built with ``pretrained=False``: ImageNet weights are fetched only by
``load_imagenet``, on request, and failing to fetch them (offline) is a
:class:`WeightsUnavailable` that says how to supply a local file instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import timm
import torch
from torch import nn

from herbid.errors import InvalidOption
from herbid.models.base import IMAGENET_MEAN, IMAGENET_STD, HerbidModel, InitRecord, Preprocessing
from herbid.models.registry import TIMM_PREFIX, ModelEntry, WeightsUnavailable


def preprocessing_from_cfg(cfg: Mapping[str, Any] | Any) -> Preprocessing:
    """herbid preprocessing from a timm ``pretrained_cfg`` (dict or PretrainedCfg).

    The resize size follows timm's centre-crop convention: ``input_size / crop_pct``.
    """
    if not isinstance(cfg, Mapping):
        cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else vars(cfg)
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
    return Preprocessing(input_size=size, resize_size=int(round(size / crop_pct)),
                         mean=mean, std=std)  # type: ignore[arg-type]


class TimmModel(HerbidModel):
    """A timm model (built without weights) behind the herbid contract.

    ``num_features`` is the width of the pooled (pre-logits) features, timm's
    ``head_hidden_size`` where a model has a hidden head layer. ``forward_features``
    returns what timm's does: a (B, C, H, W) map for CNNs, tokens for transformers.
    """

    def __init__(self, timm_name: str, num_classes: int, *, preprocessing: Preprocessing | None = None,
                 **timm_kwargs: Any) -> None:
        super().__init__()
        self.timm_name = timm_name
        self.model = timm.create_model(timm_name, pretrained=False, num_classes=num_classes, **timm_kwargs)
        self.num_classes = num_classes
        self.num_features = int(getattr(self.model, "head_hidden_size", None) or self.model.num_features)
        self.preprocessing = preprocessing or preprocessing_from_cfg(self.model.pretrained_cfg)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.model.forward_head(features, pre_logits=pre_logits)

    def get_classifier(self) -> nn.Module:
        return self.model.get_classifier()

    def reset_classifier(self, num_classes: int) -> None:
        self.model.reset_classifier(num_classes)
        self.num_classes = num_classes


def pretrained_source(model: TimmModel) -> str:
    """Where timm would fetch ``model``'s weights from (Hugging Face hub id or URL)."""
    cfg = model.model.pretrained_cfg
    cfg = cfg if isinstance(cfg, Mapping) else cfg.to_dict()
    hub = cfg.get("hf_hub_id")
    return f"hf-hub:{hub}" if hub else str(cfg.get("url") or f"timm:{model.timm_name}")


def load_timm_imagenet(name: str, model: HerbidModel) -> InitRecord:
    """timm's pretrained weights for ``name``, loaded into ``model`` (network needed once).

    The classifier is loaded only when its shape matches; otherwise it stays random.
    """
    from herbid.models.weights import load_matching

    if not isinstance(model, TimmModel):
        raise TypeError(f"expected a TimmModel, got {type(model).__name__}")
    try:
        source = timm.create_model(name, pretrained=True)
    except Exception as exc:  # hub/HTTP/OS errors all mean "weights not available here"
        raise WeightsUnavailable(
            f"could not download timm weights for {name} (offline?); pass --init PATH to a local weights "
            f"file (state_dict .pth/.safetensors) [{exc.__class__.__name__}: {exc}]") from exc
    return load_matching(model, source.state_dict(), kind="imagenet", source=pretrained_source(model))


def timm_entry(name: str) -> ModelEntry:
    """The registry entry for ``timm:<name>`` (any model timm knows, with an optional tag)."""
    if not timm.is_model(name):
        raise InvalidOption(f"unknown timm model {name!r}; see timm.list_models() for the names ({TIMM_PREFIX}NAME)")
    return ModelEntry(name=f"{TIMM_PREFIX}{name}", build=partial(TimmModel, name),
                      load_imagenet=partial(load_timm_imagenet, name),
                      description=f"timm model {name}; ImageNet weights when online")
