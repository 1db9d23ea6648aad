"""Export a bundle to ONNX for serving without PyTorch, and check it against PyTorch.

The ONNX model takes ``image``: float32 (batch, 3, height, width) (``Preprocessing.input_shape``), already
preprocessed exactly as herbid does it (see ``herbid.preprocessing`` in the metadata and
:meth:`herbid.identification.Identifier.sheet_tensor`), with a dynamic batch axis. It has
**two outputs**:

* ``logits`` (batch, n_species): the raw model (averaged over the bundle's test-time
  augmentation views, e.g. the sheet and its mirror image, as ``herbid identify`` does),
  for anyone who wants to calibrate anew;
* ``probabilities`` (batch, n_species): ``softmax(logits / T)`` with the bundle's
  temperature ``T`` baked in, so a consumer gets the same calibrated probabilities as
  ``herbid identify`` without re-implementing the calibration (and cannot forget it).

Everything needed to read the outputs travels inside the file as ``metadata_props``
(JSON strings): ``herbid.species`` (the class order), ``herbid.taxonomy``,
``herbid.preprocessing``, ``herbid.temperature``, ``herbid.model_id``, ``herbid.arch``,
``herbid.version`` and ``herbid.exporter``.

Exporter: torch's ``torch.export``-based (dynamo) exporter is tried first; it is the
default since torch 2.9 and the only one with a future, but it starts at opset 18. If it
fails for a model, the legacy TorchScript exporter is used. Both were verified on
``small_cnn``, ``efficientnet_lite0`` (timm) and ``googlenet_bn``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import herbid
from herbid.data.dataset_folder import atomic_path
from herbid.errors import InvalidOption, UserError
from herbid.inference.bundle import Bundle, as_bundle
from herbid.inference.forward import SheetClassifier
from herbid.models.base import sheet_shape

log = logging.getLogger(__name__)

#: The dynamo exporter implements opset ≥ 18 (a lower one triggers a lossy conversion).
DEFAULT_OPSET = 18
INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "probabilities")
EXPORTERS = ("auto", "dynamo", "torchscript")
#: Probabilities closer than this are ties: ONNX Runtime may order them either way.
TIE_TOLERANCE = 1e-5


class ExportError(UserError, RuntimeError):
    """The model could not be exported with any exporter."""


class CalibratedModel(nn.Module):
    """``x → (logits, softmax(logits / T))``: the bundle's model with its calibration."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("temperature", torch.tensor(float(temperature), dtype=torch.float32))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(image)
        return logits, torch.softmax(logits / self.temperature, dim=1)


def onnx_metadata(bundle: Bundle, exporter: str) -> dict[str, str]:
    """The ``metadata_props`` written into the file (all values strings, JSON where structured)."""
    return {
        "herbid.species": json.dumps(list(bundle.species), ensure_ascii=False),
        "herbid.taxonomy": json.dumps(bundle.taxonomy, ensure_ascii=False),
        "herbid.preprocessing": json.dumps(bundle.preprocessing.to_dict()),
        "herbid.temperature": json.dumps(float(bundle.temperature)),
        "herbid.model_id": bundle.model_id,
        "herbid.arch": bundle.arch,
        "herbid.version": herbid.__version__,
        "herbid.exporter": exporter,
        "herbid.outputs": json.dumps({"logits": "raw class scores",
                                      "probabilities": "softmax(logits / temperature), calibrated"}),
    }


def _require(module: str) -> Any:
    """Import an optional ONNX package, or say how to install it (one line, not a traceback)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(f"{module} is not installed; pip install 'herbid[onnx]'") from None


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The herbid metadata of an exported file, JSON values decoded (``species`` is a list)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    out: dict[str, Any] = {}
    for prop in model.metadata_props:
        if prop.key.startswith("herbid."):
            key = prop.key.removeprefix("herbid.")
            try:
                out[key] = json.loads(prop.value)
            except json.JSONDecodeError:
                out[key] = prop.value
    return out


def _example(bundle: Bundle) -> torch.Tensor:
    return torch.zeros(2, 3, *bundle.preprocessing.input_shape)


def _export_dynamo(module: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(module, (example,), str(path), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                      dynamic_shapes=({0: batch},), opset_version=opset, dynamo=True, external_data=False,
                      verbose=False)


def _export_torchscript(module: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    axes = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    torch.onnx.export(module, (example,), str(path), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                      dynamic_axes=axes, opset_version=opset, dynamo=False)


_EXPORT = {"dynamo": _export_dynamo, "torchscript": _export_torchscript}


def _run_exporter(name: str, module: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    """One exporter, its chatter (stdout progress lines, deprecation warnings) kept quiet."""
    chatter = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(chatter), torch.inference_mode(False):
        warnings.simplefilter("ignore")
        _EXPORT[name](module, example, path, opset)
    if chatter.getvalue().strip():
        log.debug("%s exporter: %s", name, chatter.getvalue())


def export_onnx(bundle: Bundle | str | Path, out_path: str | Path, *, opset: int = DEFAULT_OPSET,
                exporter: str = "auto") -> Path:
    """Write ``bundle`` as an ONNX model with calibrated outputs and metadata; see the module docstring.

    ``exporter``: ``"dynamo"``, ``"torchscript"`` or ``"auto"`` (dynamo, then TorchScript).
    The file is checked with ``onnx.checker`` and replaced atomically.
    """
    onnx = _require("onnx")

    if exporter not in EXPORTERS:
        raise InvalidOption(f"exporter {exporter!r}: expected one of {', '.join(EXPORTERS)}")
    bundle = as_bundle(bundle, "cpu")
    model = SheetClassifier(copy.deepcopy(bundle.model).cpu().float().eval(), bundle.preprocessing.tta)
    module = CalibratedModel(model, bundle.temperature).eval()
    out_path = Path(out_path)
    errors: list[str] = []
    with atomic_path(out_path) as tmp:
        for name in (("dynamo", "torchscript") if exporter == "auto" else (exporter,)):
            try:
                _run_exporter(name, module, _example(bundle), tmp, opset)
                break
            except Exception as exc:  # each exporter fails in its own ways; try the next
                errors.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                log.info("ONNX export with %s failed (%s)", name, errors[-1])
        else:
            raise ExportError(f"{bundle.arch}: ONNX export failed; " + " | ".join(errors))
        model = onnx.load(str(tmp))
        for key, value in onnx_metadata(bundle, name).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        pre = bundle.preprocessing
        (height, width), resized = pre.input_shape, sheet_shape(pre.resize_size, pre.aspect)
        model.doc_string = (f"herbid {herbid.__version__} {bundle.arch} species classifier; input: RGB sheet "
                            f"squeezed to {resized[0]}×{resized[1]} (width × height), centre crop "
                            f"{width}×{height}, (x/255 - mean)/std (see herbid.preprocessing); "
                            f"test-time augmentation {bundle.preprocessing.tta!r} inside")
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp))
    return out_path


# -------------------------------------------------------------------------- check


def _inputs(identifier: Any, images: Sequence[str | Path | bytes]) -> tuple[torch.Tensor, list[str]]:
    """Preprocessed tensors for ``images`` (paths or bytes); seeded noise when there are none."""
    if not images:
        generator = torch.Generator().manual_seed(0)
        return (torch.randn(3, 3, *identifier.bundle.preprocessing.input_shape, generator=generator),
                [f"random:{i}" for i in range(3)])
    tensors, names = [], []
    for i, image in enumerate(images):
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        tensors.append(identifier.sheet_tensor(data))
        names.append(f"bytes:{i}" if isinstance(image, bytes) else str(image))
    return torch.stack(tensors), names


def _top5_agree(reference: np.ndarray, ranked: np.ndarray, k: int) -> bool:
    """Does ``ranked`` list the same top-k as ``reference`` up to numerical ties?

    Rank r agrees when the class ONNX puts there has (in PyTorch) the probability PyTorch's
    own r-th class has: two classes 1e-7 apart may swap places, a different class may not.
    """
    expected = np.sort(reference)[::-1][:k]
    return bool(np.all(np.abs(reference[ranked[:k]] - expected) <= TIE_TOLERANCE))


def check_onnx(bundle: Bundle | str | Path, onnx_path: str | Path, images: Sequence[str | Path | bytes] = ()
               ) -> dict[str, Any]:
    """Compare ONNX Runtime and PyTorch on the same preprocessed inputs (CPU, one batch).

    Returns ``top5_agree`` (same top-5 up to numerical ties, the pass criterion),
    ``top5_identical`` (same indices in the same order), the largest absolute differences
    of logits and probabilities, and the top-5 names per image from both.
    """
    ort = _require("onnxruntime")

    from herbid.identification.predict import Identifier

    identifier = Identifier(as_bundle(bundle, "cpu"), device="cpu")
    batch, names = _inputs(identifier, images)
    torch_logits = identifier.logits(batch).numpy()
    torch_probs = identifier.probabilities(batch).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_logits, onnx_probs = session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch.numpy()})
    k = min(5, torch_probs.shape[1])
    species = identifier.species
    per_image = []
    for i, name in enumerate(names):
        torch_top = np.argsort(-torch_probs[i], kind="stable")[:k]
        onnx_top = np.argsort(-onnx_probs[i], kind="stable")[:k]
        per_image.append({"image": name, "torch_top5": [species[j] for j in torch_top],
                          "onnx_top5": [species[j] for j in onnx_top],
                          "identical": bool(np.array_equal(torch_top, onnx_top)),
                          "agree": _top5_agree(torch_probs[i], onnx_top, k)})
    return {
        "onnx": str(onnx_path),
        "images": len(names),
        "top5_agree": all(p["agree"] for p in per_image),
        "top5_identical": all(p["identical"] for p in per_image),
        "max_abs_diff_logits": float(np.abs(onnx_logits - torch_logits).max()),
        "max_abs_diff_probabilities": float(np.abs(onnx_probs - torch_probs).max()),
        "per_image": per_image,
    }
