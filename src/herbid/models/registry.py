"""Model registry: names → builders, instead of if-chains (after timm's ``_registry``).

``create_model(name, num_classes, init=...)`` is the one way to get a model. Builders
never download: ImageNet weights come from an installed package, a local file, or (for
timm models, when online) timm's hub, and an unavailable source is a clear error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from herbid.errors import InvalidOption, UserError
from herbid.models.base import HerbidModel, InitRecord

TIMM_PREFIX = "timm:"


class WeightsUnavailable(UserError, RuntimeError):
    """ImageNet (or other) weights that cannot be had here; the message says how to get them."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    build: Callable[[int], HerbidModel]
    #: Loads ImageNet weights into a built model, or raises WeightsUnavailable.
    load_imagenet: Callable[[HerbidModel], InitRecord] | None = None
    description: str = ""


MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, *, load_imagenet: Callable[[HerbidModel], InitRecord] | None = None,
                   description: str = "") -> Callable[[Callable[[int], HerbidModel]], Callable[[int], HerbidModel]]:
    """Decorator for a builder ``(num_classes) -> HerbidModel``."""

    def register(build: Callable[[int], HerbidModel]) -> Callable[[int], HerbidModel]:
        MODELS[name] = ModelEntry(name, build, load_imagenet, description or (build.__doc__ or "").strip())
        return build

    return register


def list_models() -> list[str]:
    _load_builtin_models()
    return sorted(MODELS) + [f"{TIMM_PREFIX}<any timm model>"]


def get_entry(name: str) -> ModelEntry:
    _load_builtin_models()
    if name.startswith(TIMM_PREFIX):
        from herbid.models.timm_models import timm_entry

        return timm_entry(name[len(TIMM_PREFIX):])
    try:
        return MODELS[name]
    except KeyError:
        raise InvalidOption(f"unknown model {name!r}; known: {', '.join(list_models())}") from None


def create_model(name: str, num_classes: int, *, init: str = "random",
                 skip_classifier: bool = False) -> tuple[HerbidModel, InitRecord]:
    """Build ``name`` with a ``num_classes`` classifier and initialise it.

    ``init`` is ``random``, ``imagenet``, or the path of a weights file (a state_dict,
    a herbid checkpoint, a bundle or a run folder): every matching tensor is loaded, and
    the keys that did not map are recorded. ``skip_classifier=True`` is the paper's
    transfer protocol (training and the frozen-feature baselines): every layer but the
    classifier comes from the file; the classifier stays new, sized for ``num_classes``.
    """
    entry = get_entry(name)
    model = entry.build(num_classes)
    if init == "random":
        return model, InitRecord(kind="random")
    if init == "imagenet":
        if entry.load_imagenet is None:
            raise WeightsUnavailable(f"{name} has no ImageNet weights; use --init random or a weights file")
        return model, entry.load_imagenet(model)
    path = Path(init)
    if not path.exists():
        raise InvalidOption(f"init must be random, imagenet or an existing weights file, bundle or run; "
                            f"{init!r} is none of them")
    from herbid.models.weights import load_weights_file

    return model, load_weights_file(model, path, skip_classifier=skip_classifier)


BUILTIN_MODEL_MODULES = ("small", "googlenet_bn", "efficientnet_lite")


def _load_builtin_models() -> None:
    # importing the modules runs their @register_model decorators
    import importlib

    for module in BUILTIN_MODEL_MODULES:
        importlib.import_module(f"herbid.models.{module}")
