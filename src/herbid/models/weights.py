"""Loading weights files into herbid models: the ``--init PATH`` of every command.

A weights file may be a plain state_dict (``.pth``/``.pt``/``.bin``, or ``.safetensors``),
a training checkpoint holding one under ``"model"`` or ``"state_dict"``, or a herbid
bundle / run folder. Every tensor whose name and shape match is loaded and the rest is
recorded, not silently dropped: a result must say what its model started from.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

import torch
from torch import nn

from herbid.errors import InvalidOption
from herbid.models.base import InitRecord
from herbid.models.bundle_files import WEIGHTS, resolve_bundle_path

#: Where training checkpoints keep the model's state_dict (herbid's own is ``"model"``).
CHECKPOINT_KEYS = ("model", "state_dict", "model_state_dict")
#: Prefixes other tools put before every key (DataParallel, wrappers such as ours).
COMMON_PREFIXES = ("module.", "model.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, checkpoint or bundle/run folder (never executes pickled code)."""
    path = Path(path)
    if path.is_dir():
        path = resolve_bundle_path(path) / WEIGHTS
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    return unwrap_state_dict(obj, source=str(path))


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as exc:
        raise ImportError(f"{path}: reading .safetensors needs the safetensors package "
                          "(pip install safetensors)") from exc
    return load_file(str(path), device="cpu")


def unwrap_state_dict(obj: Any, *, source: str = "") -> dict[str, torch.Tensor]:
    """The state_dict inside a checkpoint dict (or ``obj`` itself), tensors only."""
    if not isinstance(obj, Mapping):
        raise InvalidOption(f"{source}: expected a state_dict or a checkpoint dict, got {type(obj).__name__}")
    for key in CHECKPOINT_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            obj = inner
            break
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise InvalidOption(f"{source}: no tensors found (not a state_dict or checkpoint)")
    return state


def align_prefix(state: Mapping[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Add or strip a common key prefix when that makes more keys match the model's.

    A timm state_dict (``conv_stem.weight``) loads into herbid's timm wrapper
    (``model.conv_stem.weight``) and a DataParallel one (``module.…``) into a plain model.
    """
    best = dict(state)
    best_hits = len(model_keys & best.keys())
    for prefix in COMMON_PREFIXES:
        stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        added = {prefix + k: v for k, v in state.items()}
        for candidate in (stripped, added):
            hits = len(model_keys & candidate.keys())
            if hits > best_hits:
                best, best_hits = candidate, hits
    return best


def classifier_keys(model: nn.Module) -> set[str]:
    """The state_dict names of ``model.get_classifier()``'s tensors."""
    classifier = model.get_classifier()  # type: ignore[operator]
    for name, module in model.named_modules():
        if module is classifier:
            prefix = f"{name}." if name else ""
            return {prefix + key for key in classifier.state_dict()}
    return set()


def load_matching(model: nn.Module, state: Mapping[str, torch.Tensor], *, skip: AbstractSet[str] = frozenset(),
                  kind: str = "file", source: str = "") -> InitRecord:
    """Load every tensor of ``state`` whose name and shape match ``model``'s; record the rest.

    ``missing_keys``: the model's tensors left as they were; ``unexpected_keys``: the
    file's tensors not used. Shape mismatches and skipped keys appear in both and are
    spelled out in ``note``. Raises ValueError when nothing at all matches — almost
    certainly a file for another architecture.
    """
    own = model.state_dict()
    state = align_prefix(state, set(own))
    matched: dict[str, torch.Tensor] = {}
    mismatched: list[str] = []
    for key, tensor in state.items():
        if key in skip or key not in own:
            continue
        if tensor.shape != own[key].shape:
            mismatched.append(f"{key} {tuple(tensor.shape)} vs {tuple(own[key].shape)}")
            continue
        matched[key] = tensor
    if not matched:
        raise InvalidOption(f"{source or 'weights'}: no tensor matches this model by name and shape "
                         f"(weights for another architecture?)")
    with torch.no_grad():
        model.load_state_dict(matched, strict=False)
    notes = [f"loaded {len(matched)}/{len(own)} tensors"]
    if skip & state.keys():
        notes.append(f"skipped (new classifier): {', '.join(sorted(skip & state.keys()))}")
    if mismatched:
        notes.append(f"shape mismatch (left as built): {'; '.join(mismatched)}")
    return InitRecord(kind=kind, source=source, missing_keys=[k for k in own if k not in matched],
                      unexpected_keys=[k for k in state if k not in matched], note="; ".join(notes))


def load_weights_file(model: nn.Module, path: str | Path, *, skip_classifier: bool = False) -> InitRecord:
    """Initialise ``model`` from a weights file, checkpoint or bundle/run folder.

    ``skip_classifier=True`` is the paper's transfer protocol: keep every layer but the
    classifier, which stays as built (random) even when the file's has the same shape.
    A model may define ``load_foreign_state(state, source=, skip_classifier=)`` to map a
    file in another implementation's layout (``googlenet_bn`` takes torchvision's
    GoogLeNet); it returns None for files it does not recognise.
    """
    state = read_state_dict(path)
    foreign = getattr(model, "load_foreign_state", None)
    if foreign is not None:  # a model that knows another implementation's layout maps it itself
        record = foreign(state, source=str(path), skip_classifier=skip_classifier)
        if record is not None:
            return record
    skip = classifier_keys(model) if skip_classifier else frozenset()
    return load_matching(model, state, skip=skip, kind="file", source=str(path))


def map_in_order(state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], *,
                 skip: AbstractSet[str] = frozenset(), source: str = "") -> dict[str, torch.Tensor]:
    """Rename ``state``'s tensors to ``target``'s names by position, checking every shape.

    For ports of one network whose names differ but whose tensors come in the same
    order (e.g. efficientnet_pytorch vs timm): any count or shape difference is an error,
    so a wrong pairing cannot load silently. Target keys in ``skip`` (a new classifier)
    still count for the pairing but are left out of the result, shapes unchecked.
    """
    if len(state) != len(target):
        raise InvalidOption(f"{source}: {len(state)} tensors, the model has {len(target)}")
    mapped: dict[str, torch.Tensor] = {}
    for (src_key, tensor), (dst_key, ref) in zip(state.items(), target.items()):
        if dst_key in skip:
            continue
        if tensor.shape != ref.shape:
            raise InvalidOption(f"{source}: {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(ref.shape)}")
        mapped[dst_key] = tensor
    return mapped
