"""The paper's model: GoogLeNet (Inception v1) with Batch Normalisation and PReLU.

Carranza-Rojas et al. 2017, Table 1 and Fig. 1: the original GoogLeNet layout
(Szegedy et al. 2015) with

* BatchNorm after every max pool outside the inception modules and after the final
  average pool (Table 1);
* BatchNorm inside each inception module "right after each pooling layer" (the 3×3
  max-pool branch) and after every convolution (Fig. 1, BN-Inception style);
* PReLU (one learnable slope per channel, Caffe's default) instead of every ReLU;
* LRN after the first two pool+BN pairs, because Table 1 lists it (configurable: BN
  makes it nearly redundant, and it is nearly the identity on BN-scaled activations).

Choices the paper leaves open are documented in ``docs/MODELS.md``; in short: the
third branch is a true 5×5 convolution (Table 1's parameter counts only add up with
5×5, not torchvision's 3×3), every max pool is 3×3/2 with ceil rounding (Caffe), no
auxiliary classifiers, dropout 0.4 before the linear layer.

ImageNet initialisation maps torchvision's GoogLeNet (``IMAGENET1K_V1``) onto this
model: convolutions and their BatchNorm one-to-one, its 3×3 "5×5" kernels zero-padded
to 5×5 (exactly the same function), PReLU slopes at 0 (= ReLU) and the paper's extra
BatchNorm layers neutral (the identity in eval mode).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from herbid.errors import InvalidOption
from herbid.models.base import HerbidModel, InitRecord, Preprocessing
from herbid.models.registry import WeightsUnavailable, register_model
from herbid.models.weights import read_state_dict

#: BatchNorm epsilon of every BN here: torchvision's GoogLeNet (ported from TF-slim) uses
#: 1e-3, and its BN layers map one-to-one onto ours only with the same epsilon.
BN_EPS = 1e-3

TORCHVISION_URL = "https://download.pytorch.org/models/googlenet-1378be20.pth"
WEIGHTS_ENV = "HERBID_GOOGLENET_WEIGHTS"

#: torchvision's GoogLeNet weights were trained on inputs in [-1, 1] (its
#: ``transform_input`` turns ImageNet-normalised inputs back into ``(x - 0.5) / 0.5``),
#: so this model asks for exactly that scaling directly. With BN everywhere the choice
#: hardly matters for random init, and one scaling for every init keeps bundles simple.
GOOGLENET_PREPROCESSING = Preprocessing(input_size=224, resize_size=256, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


class InceptionConfig(NamedTuple):
    """Channel widths of one inception module (Szegedy et al. 2015, Table 1)."""

    in_channels: int
    ch1x1: int
    ch3x3red: int
    ch3x3: int
    ch5x5red: int
    ch5x5: int
    pool_proj: int

    @property
    def out_channels(self) -> int:
        return self.ch1x1 + self.ch3x3 + self.ch5x5 + self.pool_proj


INCEPTIONS: dict[str, InceptionConfig] = {
    "inception3a": InceptionConfig(192, 64, 96, 128, 16, 32, 32),
    "inception3b": InceptionConfig(256, 128, 128, 192, 32, 96, 64),
    "inception4a": InceptionConfig(480, 192, 96, 208, 16, 48, 64),
    "inception4b": InceptionConfig(512, 160, 112, 224, 24, 64, 64),
    "inception4c": InceptionConfig(512, 128, 128, 256, 24, 64, 64),
    "inception4d": InceptionConfig(512, 112, 144, 288, 32, 64, 64),
    "inception4e": InceptionConfig(528, 256, 160, 320, 32, 128, 128),
    "inception5a": InceptionConfig(832, 256, 160, 320, 32, 128, 128),
    "inception5b": InceptionConfig(832, 384, 192, 384, 48, 128, 128),
}

#: The feature stages in order, one per row group of Table 1 (``conv2`` is Table 1's
#: depth-2 "Convolution 3×3/1" row: the 1×1 reduction and the 3×3 convolution).
STAGES = ("conv1", "pool1", "conv2", "pool2", "inception3a", "inception3b", "pool3", "inception4a",
          "inception4b", "inception4c", "inception4d", "inception4e", "pool4", "inception5a", "inception5b")


class Table1Row(NamedTuple):
    """One row group of the paper's Table 1: output shape (C, H, W) and parameters in K."""

    shape: tuple[int, int, int]
    params_k: float | None


#: The paper's Table 1, for tests and docs. ``params_k`` counts convolution (and linear)
#: weights only, in units of 1024 — the reading under which the table's numbers come out
#: exactly (see docs/MODELS.md); conv1's printed 2.7K cannot be a 7×7×3×64 convolution
#: (9408 weights, 9.2K) and is an erratum inherited from the original GoogLeNet paper.
PAPER_TABLE1: dict[str, Table1Row] = {
    "conv1": Table1Row((64, 112, 112), 2.7),
    "pool1": Table1Row((64, 56, 56), None),
    "conv2": Table1Row((192, 56, 56), 112),
    "pool2": Table1Row((192, 28, 28), None),
    "inception3a": Table1Row((256, 28, 28), 159),
    "inception3b": Table1Row((480, 28, 28), 380),
    "pool3": Table1Row((480, 14, 14), None),
    "inception4a": Table1Row((512, 14, 14), 364),
    "inception4b": Table1Row((512, 14, 14), 437),
    "inception4c": Table1Row((512, 14, 14), 463),
    "inception4d": Table1Row((528, 14, 14), 580),
    "inception4e": Table1Row((832, 14, 14), 840),
    "pool4": Table1Row((832, 7, 7), None),
    "inception5a": Table1Row((832, 7, 7), 1072),
    "inception5b": Table1Row((1024, 7, 7), 1388),
    "avgpool": Table1Row((1024, 1, 1), None),
    # printed as 1×1×10000 but 1000K parameters = 1024 × 1000: ImageNet's 1000 classes
    "linear": Table1Row((1000, 1, 1), 1000),
}


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class ConvBNPReLU(nn.Module):
    """Convolution (no bias: BN follows) → BatchNorm → PReLU, the unit of Fig. 1."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                              bias=False)
        self.bn = _bn(out_channels)
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class PoolBN(nn.Sequential):
    """Table 1's "Max pool 3×3/2 → Batch norm (→ LRN)" group between stages.

    ``ceil_mode`` as in Caffe, which rounds pooled sizes up: 56 → 28 needs it.
    """

    def __init__(self, channels: int, *, lrn: bool = False, kernel_size: int = 3) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            pool=nn.MaxPool2d(kernel_size, stride=2, ceil_mode=True), bn=_bn(channels))
        if lrn:
            # Caffe's GoogLeNet LRN: local_size 5, alpha 1e-4, beta 0.75 (alpha / n, like PyTorch)
            layers["lrn"] = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        super().__init__(layers)


class Inception(nn.Module):
    """Fig. 1's modified inception module: four branches of conv-BN-PReLU units, BN after the pool."""

    def __init__(self, cfg: InceptionConfig) -> None:
        super().__init__()
        self.branch1 = ConvBNPReLU(cfg.in_channels, cfg.ch1x1, 1)
        self.branch2 = nn.Sequential(ConvBNPReLU(cfg.in_channels, cfg.ch3x3red, 1),
                                     ConvBNPReLU(cfg.ch3x3red, cfg.ch3x3, 3))
        self.branch3 = nn.Sequential(ConvBNPReLU(cfg.in_channels, cfg.ch5x5red, 1),
                                     ConvBNPReLU(cfg.ch5x5red, cfg.ch5x5, 5))
        self.branch4 = nn.Sequential(OrderedDict(
            pool=nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
            bn=_bn(cfg.in_channels),  # "BN added inside each inception module right after each pooling layer"
            proj=ConvBNPReLU(cfg.in_channels, cfg.pool_proj, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], dim=1)


class GoogLeNetBN(HerbidModel):
    """GoogLeNet with BatchNorm and PReLU, as in the paper's Table 1 and Fig. 1.

    ``lrn`` keeps Table 1's two LRN layers; ``pool4_kernel`` is Table 1's 3 (torchvision,
    ported from TF-slim, uses 2 there: build with 2 to reproduce it exactly);
    ``dropout`` is the original GoogLeNet's 0.4 before the linear layer.
    """

    def __init__(self, num_classes: int = 1000, *, dropout: float = 0.4, lrn: bool = True,
                 pool4_kernel: int = 3) -> None:
        super().__init__()
        self.preprocessing = GOOGLENET_PREPROCESSING
        self.conv1 = ConvBNPReLU(3, 64, 7, stride=2)
        self.pool1 = PoolBN(64, lrn=lrn)
        self.conv2 = nn.Sequential(OrderedDict(reduce=ConvBNPReLU(64, 64, 1), conv=ConvBNPReLU(64, 192, 3)))
        self.pool2 = PoolBN(192, lrn=lrn)
        self.inception3a = Inception(INCEPTIONS["inception3a"])
        self.inception3b = Inception(INCEPTIONS["inception3b"])
        self.pool3 = PoolBN(480)
        for name in ("inception4a", "inception4b", "inception4c", "inception4d", "inception4e"):
            setattr(self, name, Inception(INCEPTIONS[name]))
        self.pool4 = PoolBN(832, kernel_size=pool4_kernel)
        self.inception5a = Inception(INCEPTIONS["inception5a"])
        self.inception5b = Inception(INCEPTIONS["inception5b"])
        self.num_features = INCEPTIONS["inception5b"].out_channels
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_bn = nn.BatchNorm1d(self.num_features, eps=BN_EPS)  # Table 1: BN after the avg pool
        self.dropout = nn.Dropout(dropout)
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """He init for convolutions (they feed PReLUs); BN and PReLU keep PyTorch's defaults."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def stages(self) -> list[tuple[str, nn.Module]]:
        """The feature stages in order, named as Table 1's rows (see ``STAGES``)."""
        return [(name, getattr(self, name)) for name in STAGES]

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every Table 1 stage's output, for checking shapes against the paper."""
        outputs: dict[str, torch.Tensor] = {}
        for name, stage in self.stages():
            x = stage(x)
            outputs[name] = x
        pooled = self.forward_head(x, pre_logits=True)
        outputs["avgpool"] = pooled[:, :, None, None]
        outputs["linear"] = self.classifier(self.dropout(pooled))[:, :, None, None]
        return outputs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for _, stage in self.stages():
            x = stage(x)
        return x

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = self._head_norm(self.global_pool(features).flatten(1))
        return pooled if pre_logits else self.classifier(self.dropout(pooled))

    def _head_norm(self, pooled: torch.Tensor) -> torch.Tensor:
        """BN after the average pool; a training batch of one uses the running statistics.

        A 1×1 map leaves BN one value per channel in a batch of one, which PyTorch refuses
        to normalise; a last, single-image training batch would otherwise crash a run.
        """
        if self.training and pooled.shape[0] == 1:
            bn = self.head_bn
            return F.batch_norm(pooled, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        return self.head_bn(pooled)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes)

    def load_foreign_state(self, state: dict[str, torch.Tensor], *, source: str,
                           skip_classifier: bool = False) -> InitRecord | None:
        """Load a torchvision GoogLeNet state_dict given as ``--init PATH``; None for other layouts.

        Name matching alone would load it wrongly (torchvision's ``conv3``, 3×3 kernels,
        no neutral extra layers), so :func:`herbid.models.weights.load_weights_file` asks
        the model first.
        """
        if "conv3.conv.weight" not in state or "conv2.reduce.conv.weight" in state:
            return None
        if skip_classifier:
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        return load_torchvision_state(self, state, source=source, kind="file")


# --- ImageNet weights from torchvision's GoogLeNet ---------------------------------------


def torchvision_key(key: str) -> str | None:
    """Our name for a torchvision GoogLeNet state_dict key, or None when it has no counterpart.

    torchvision's ``conv2``/``conv3`` are our ``conv2.reduce``/``conv2.conv``; its pool
    branch ``branch4.1`` is our ``branch4.proj``; ``fc`` is ``classifier``; the auxiliary
    classifiers (``aux1``, ``aux2``) are not part of this model.
    """
    if key.startswith(("aux1.", "aux2.")):
        return None
    head, _, rest = key.partition(".")
    if head == "conv2":
        return f"conv2.reduce.{rest}"
    if head == "conv3":
        return f"conv2.conv.{rest}"
    if head == "fc":
        return f"classifier.{rest}"
    if head.startswith("inception") and rest.startswith("branch4.1."):
        return f"{head}.branch4.proj.{rest[len('branch4.1.'):]}"
    return key


def pad_kernel(weight: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad a k×k kernel to size×size, centred.

    With padding ``size // 2`` the padded convolution computes exactly what the k×k one
    did with padding ``k // 2``: how torchvision's 3×3 "5×5 branch" becomes our 5×5.
    """
    pad = (size - weight.shape[-1]) // 2
    return F.pad(weight, (pad, pad, pad, pad))


def neutralise_extra_layers(model: GoogLeNetBN, loaded: set[str]) -> list[str]:
    """Make every layer torchvision lacks start as the identity; return the keys it set.

    PReLU slopes 0 make PReLU = ReLU. Extra BatchNorms get weight 1, bias 0, running mean
    0 and running variance ``1 - eps``, so that in eval mode ``x / sqrt(var + eps)`` is
    exactly ``x`` (a variance of 1 would scale by 1/sqrt(1 + 1e-3) ≈ 0.9995 per layer).
    In training mode they normalise with batch statistics, as BN does.
    """
    touched: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.PReLU):
            nn.init.zeros_(module.weight)
            touched.append(f"{name}.weight")
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and f"{name}.weight" not in loaded:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
            module.running_mean.zero_()
            module.running_var.fill_(1.0 - module.eps)
            module.num_batches_tracked.zero_()
            touched.extend(f"{name}.{p}" for p in ("weight", "bias", "running_mean", "running_var"))
    return touched


def load_torchvision_state(model: GoogLeNetBN, state: dict[str, torch.Tensor], *, source: str,
                           kind: str = "imagenet") -> InitRecord:
    """Map a torchvision GoogLeNet state_dict onto ``model`` (see the module docstring).

    The classifier is loaded only when its shape matches (1000 classes); otherwise it
    stays random, as in the paper's transfer protocol. ``missing_keys`` lists every
    tensor of ours the file did not provide (PReLU slopes and extra BNs, set neutral).
    """
    own = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, tensor in state.items():
        target = torchvision_key(key)
        if target is None or target not in own:
            unexpected.append(key)
            continue
        if tensor.dim() == 4 and tensor.shape[-1] < own[target].shape[-1]:
            tensor = pad_kernel(tensor, own[target].shape[-1])
        if tensor.shape != own[target].shape:
            unexpected.append(key)
            continue
        mapped[target] = tensor
    if not any(k.startswith("inception5b.") for k in mapped):
        raise InvalidOption(f"{source}: not a torchvision GoogLeNet state_dict (no inception5b tensors)")
    with torch.no_grad():
        model.load_state_dict(mapped, strict=False)
        neutralise_extra_layers(model, set(mapped))
    missing = [k for k in own if k not in mapped]
    note = ("torchvision GoogLeNet mapped: branch3 3x3 kernels zero-padded to 5x5; PReLU slopes 0 (= ReLU); "
            "BN layers torchvision lacks set to the identity")
    if "classifier.weight" not in mapped:
        note += "; classifier left random (not in the file, or class count differs)"
    return InitRecord(kind=kind, source=source, missing_keys=missing, unexpected_keys=unexpected, note=note)


def find_torchvision_weights() -> Path | None:
    """A local copy of the torchvision GoogLeNet weights: the env var, then torch hub's cache."""
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise WeightsUnavailable(f"{WEIGHTS_ENV}={env} is not a file")
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(TORCHVISION_URL).name
    return cached if cached.is_file() else None


def _download_torchvision_state() -> dict[str, torch.Tensor]:
    """torchvision's own download (into torch hub's cache), failing as WeightsUnavailable."""
    from torchvision.models import GoogLeNet_Weights

    try:
        return GoogLeNet_Weights.IMAGENET1K_V1.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # URLError, OSError, hash errors...: all mean "not here"
        raise WeightsUnavailable(
            f"could not download the GoogLeNet ImageNet weights ({exc.__class__.__name__}: {exc}). "
            f"Fetch {TORCHVISION_URL} elsewhere, then set {WEIGHTS_ENV}=/path/to/googlenet-1378be20.pth, "
            f"put it in {Path(torch.hub.get_dir()) / 'checkpoints'}, or pass --init PATH") from exc


def load_imagenet(model: HerbidModel) -> InitRecord:
    """ImageNet weights from a local torchvision GoogLeNet file, or torchvision's download."""
    if not isinstance(model, GoogLeNetBN):
        raise TypeError(f"expected a GoogLeNetBN, got {type(model).__name__}")
    path = find_torchvision_weights()
    if path is not None:
        return load_torchvision_state(model, read_state_dict(path), source=str(path))
    state = _download_torchvision_state()
    return load_torchvision_state(model, state, source=TORCHVISION_URL)


@register_model("googlenet_bn", load_imagenet=load_imagenet,
                description="the paper's GoogLeNet + BatchNorm + PReLU (Table 1); "
                            "ImageNet from torchvision's GoogLeNet")
def googlenet_bn(num_classes: int) -> GoogLeNetBN:
    return GoogLeNetBN(num_classes)
