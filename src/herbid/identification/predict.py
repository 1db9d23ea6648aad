"""Identify one sheet (or a batch) with a model bundle: calibrated species probabilities,
the most probable genus and family, and a suggestion at the rank the model is sure of.

Why the details matter:

* **Same pixels as training.** A new sheet goes through the dataset build's own steps
  (decode → ≤1024 px copy → 256×256 copy → JPEG round trip, see
  :mod:`herbid.data.imaging`) and is then read exactly as :func:`herbid.inference.pixels.load_image`
  reads a stored copy (JPEG ``draft`` included, which decodes at ½ scale for sizes ≤ 128).
  So an uploaded original and its stored copy give bit-identical input tensors, and a
  bundle's test accuracy applies to what users upload.
* **Calibrated probabilities.** ``softmax(logits / T)`` with the bundle's temperature
  ``T`` (fitted on validation data during training): "0.8" means right about 80 % of the
  time, which is what the uncertainty thresholds below rely on.
* **Higher ranks by summed probability.** A genus whose species share 0.35 + 0.35 is a
  better answer than any one of them; genus and family probabilities are sums of their
  species' probabilities (the same rule :mod:`herbid.evaluation.evaluate` scores).

Suggestion rule (``suggested_rank``), with the defaults 0.5 / 0.7 / 0.7:

1. ``"species"`` when the top species has probability ≥ ``uncertain_below``;
2. otherwise ``"genus"`` when the top genus has ≥ ``genus_above``;
3. otherwise ``"family"`` when the top family has ≥ ``family_above``;
4. otherwise ``"none"``: no rank is trustworthy; ``suggested_name`` is ``None`` and the
   Darwin Core record names the top species qualified ``"cf."`` (see
   :meth:`Identification.to_dwc_identification`).

An :class:`Identifier` is safe to share between threads for inference (the model is in
eval mode and nothing is mutated per call), so a web app can keep one per bundle.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

import herbid
from herbid.data.imaging import DEFAULT_MAX_PIXELS
from herbid.data.safe_files import read_regular_file
from herbid.errors import InvalidOption
from herbid.inference.bundle import Bundle, as_bundle
from herbid.inference.device import resolve_device
from herbid.inference.forward import forward
from herbid.inference.pixels import eval_transform, upload_image
from herbid.inference.taxonomy import RANKS, RankIndex

#: Darwin Core ``identificationVerificationStatus`` of every machine identification.
VERIFICATION_STATUS = "unverified"


# ------------------------------------------------------------------------ results


@dataclass
class Identification:
    """What the model says about one sheet.

    ``top``: the ``k`` most probable species, each ``{"scientificName", "probability",
    "genus", "family"}``; ``genus``/``family``: ``{"name", "probability"}`` of the most
    probable taxon at that rank (``None`` when the bundle's taxonomy lacks the rank).
    """

    top: list[dict[str, Any]]
    genus: dict[str, Any] | None
    family: dict[str, Any] | None
    uncertain: bool
    suggested_rank: str
    suggested_name: str | None
    model_id: str = ""
    temperature: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``herbid identify --json`` prints per sheet, plus ``path``)."""
        return {
            "top": [dict(entry) for entry in self.top],
            "genus": dict(self.genus) if self.genus else None,
            "family": dict(self.family) if self.family else None,
            "uncertain": self.uncertain,
            "suggested_rank": self.suggested_rank,
            "suggested_name": self.suggested_name,
            "model_id": self.model_id,
            "temperature": self.temperature,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Identification":
        """Rebuild from :meth:`to_dict` output (e.g. a JSONL record written by a batch run)."""
        return cls(top=list(data["top"]), genus=data.get("genus"), family=data.get("family"),
                   uncertain=bool(data["uncertain"]), suggested_rank=data["suggested_rank"],
                   suggested_name=data.get("suggested_name"), model_id=data.get("model_id", ""),
                   temperature=float(data.get("temperature", 1.0)))

    def remarks(self) -> str:
        """``"top-5: A 0.812; B 0.071; …; probabilities calibrated by temperature scaling T=1.23"``."""
        ranked = "; ".join(f"{entry['scientificName']} {entry['probability']:.3f}" for entry in self.top)
        calibration = f"probabilities calibrated by temperature scaling T={self.temperature:.3g}"
        return f"top-{len(self.top)}: {ranked}; {calibration}"

    def to_dwc_identification(self, model_id: str | None = None, version: str | None = None,
                              date: _dt.date | str | None = None, *, source: str | None = None) -> dict[str, str]:
        """This identification as Darwin Core Identification terms (one CSV row / JSON object).

        ``scientificName``/``taxonRank`` are the suggestion. When no rank is trustworthy
        (``suggested_rank == "none"``) the top species is named with
        ``identificationQualifier = "cf."`` ("compare with"), so the record is never empty
        but is clearly marked as a weak guess; every other record has no qualifier, because
        a confident genus- or family-level identification is not an uncertain one.
        ``associatedMedia`` is ``source`` (the sheet's path or URL) for joining back.
        """
        version = version or herbid.__version__
        model_id = self.model_id if model_id is None else model_id
        if date is None:
            date = _dt.date.today()
        if self.suggested_rank == "none":
            name, rank, qualifier = self.top[0]["scientificName"], "species", "cf."
        else:
            name, rank, qualifier = self.suggested_name or "", self.suggested_rank, ""
        return {
            "associatedMedia": source or "",
            "scientificName": name,
            "taxonRank": rank,
            "identificationQualifier": qualifier,
            "identifiedBy": f"herbid {version} ({model_id})",
            "dateIdentified": date if isinstance(date, str) else date.isoformat(),
            "identificationRemarks": self.remarks(),
            "identificationVerificationStatus": VERIFICATION_STATUS,
        }


@dataclass(frozen=True)
class Thresholds:
    """When a species answer counts as uncertain and when a higher rank is suggested."""

    uncertain_below: float = 0.5
    genus_above: float = 0.7
    family_above: float = 0.7


def suggest(top_species: tuple[str, float], genus: dict[str, Any] | None, family: dict[str, Any] | None,
            thresholds: Thresholds) -> tuple[bool, str, str | None]:
    """``(uncertain, suggested_rank, suggested_name)`` by the rule in the module docstring."""
    name, probability = top_species
    if probability >= thresholds.uncertain_below:
        return False, "species", name
    if genus is not None and genus["probability"] >= thresholds.genus_above:
        return True, "genus", genus["name"]
    if family is not None and family["probability"] >= thresholds.family_above:
        return True, "family", family["name"]
    return True, "none", None


# ---------------------------------------------------------------------- identifier


class Identifier:
    """A loaded bundle ready to identify sheets: preprocessing, calibration, taxonomy.

    ``bundle`` is a :class:`~herbid.inference.bundle.Bundle` or the path of a bundle or
    training run folder. ``batch_size`` caps how many images one forward pass sees.
    """

    def __init__(self, bundle: Bundle | str | Path, *, device: str = "auto", batch_size: int = 32,
                 uncertain_below: float = 0.5, genus_above: float = 0.7, family_above: float = 0.7,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        if batch_size < 1:
            raise InvalidOption("batch_size must be >= 1")
        self.device = resolve_device(device)
        self.bundle = as_bundle(bundle, self.device)
        self.batch_size = batch_size
        self.thresholds = Thresholds(uncertain_below, genus_above, family_above)
        self.max_pixels = max_pixels
        self.transform = eval_transform(self.bundle.preprocessing)
        self.resize_size = self.transform.resize_size
        self.ranks = {rank: RankIndex.build(self.bundle.species, self.bundle.taxonomy, rank) for rank in RANKS}

    # -- metadata ---------------------------------------------------------------------

    @property
    def species(self) -> list[str]:
        return self.bundle.species

    @property
    def model_id(self) -> str:
        return self.bundle.model_id

    @property
    def temperature(self) -> float:
        return float(self.bundle.temperature)

    def info(self) -> dict[str, Any]:
        """What a UI shows about the model: id, species, preprocessing, thresholds."""
        return {
            "model_id": self.model_id,
            "arch": self.bundle.arch,
            "species": list(self.species),
            "taxonomy": self.bundle.taxonomy,
            "preprocessing": self.bundle.preprocessing.to_dict(),
            "temperature": self.temperature,
            "thresholds": asdict(self.thresholds),
            "herbid_version": herbid.__version__,
        }

    # -- pixels -----------------------------------------------------------------------

    def sheet_image(self, data: bytes, *, max_decoded_pixels: int | None = None) -> Image.Image:
        """The resized sheet the model sees (before the centre crop).

        Raises :class:`herbid.data.imaging.ImageRejected` with a one-line reason for bytes
        that are not a usable image. Only the copy that is needed is JPEG-encoded.
        """
        return upload_image(data, self.transform, self.max_pixels, max_decoded_pixels=max_decoded_pixels)

    def sheet_tensor(self, data: bytes, *, max_decoded_pixels: int | None = None) -> torch.Tensor:
        """The normalised (3, height, width) tensor for the image in ``data``."""
        return self.transform(self.sheet_image(data, max_decoded_pixels=max_decoded_pixels))

    # -- inference --------------------------------------------------------------------

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw logits (float32, on the CPU, averaged over the bundle's TTA views) in chunks of
        ``batch_size``."""
        if batch.dim() == 3:
            batch = batch.unsqueeze(0)
        if len(batch) == 0:
            return torch.empty(0, len(self.species))
        return forward(self.bundle.model, batch.split(self.batch_size), self.device,
                       tta=self.bundle.preprocessing.tta).logits

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Calibrated species probabilities ``softmax(logits / T)``, shape (B, n_species)."""
        return (self.logits(batch) / self.temperature).softmax(dim=1)

    def identify_tensors(self, batch: torch.Tensor, top_k: int = 5) -> list[Identification]:
        """One :class:`Identification` per image of a (B, 3, H, W) batch of ``sheet_tensor``s."""
        return self.from_probabilities(self.probabilities(batch), top_k)

    def identify_bytes(self, data: bytes, top_k: int = 5) -> Identification:
        """Identify one sheet from its file's bytes (any format Pillow reads).

        Raises :class:`herbid.data.imaging.ImageRejected` for a file that is not a usable image.
        """
        return self.identify_tensors(self.sheet_tensor(data).unsqueeze(0), top_k)[0]

    def identify_path(self, path: str | Path, top_k: int = 5) -> Identification:
        """Identify one sheet file; a pipe, a device or an oversized file is refused unread."""
        return self.identify_bytes(read_regular_file(path), top_k)

    # -- from probabilities to answers ------------------------------------------------

    def from_probabilities(self, probabilities: torch.Tensor, top_k: int = 5) -> list[Identification]:
        """Identifications for a (B, n_species) probability matrix (no model involved).

        Separate from inference so that the suggestion logic can be tested and reused on
        probabilities from elsewhere (e.g. an ONNX runtime).
        """
        if probabilities.dim() == 1:
            probabilities = probabilities.unsqueeze(0)
        probabilities = probabilities.float().cpu()
        k = max(1, min(int(top_k), probabilities.shape[1]))
        values, indices = probabilities.topk(k, dim=1)
        best = {rank: self._best_taxa(index, probabilities) for rank, index in self.ranks.items()}
        results = []
        for row in range(probabilities.shape[0]):
            top = [self._species_entry(int(i), float(p)) for p, i in zip(values[row].tolist(), indices[row].tolist())]
            genus, family = best["genus"][row], best["family"][row]
            uncertain, rank, name = suggest((top[0]["scientificName"], top[0]["probability"]), genus, family,
                                            self.thresholds)
            results.append(Identification(top=top, genus=genus, family=family, uncertain=uncertain,
                                          suggested_rank=rank, suggested_name=name, model_id=self.model_id,
                                          temperature=self.temperature))
        return results

    def _species_entry(self, index: int, probability: float) -> dict[str, Any]:
        name = self.species[index]
        taxa = self.bundle.taxonomy.get(name) or {}
        return {"scientificName": name, "probability": probability,
                "genus": taxa.get("genus"), "family": taxa.get("family")}

    @staticmethod
    def _best_taxa(index: RankIndex | None, probabilities: torch.Tensor) -> list[dict[str, Any] | None]:
        if index is None:
            return [None] * probabilities.shape[0]
        sums = index.sums(probabilities)
        values, columns = sums.max(dim=1)
        return [{"name": index.taxa[c], "probability": float(v)} for v, c in zip(values.tolist(), columns.tolist())]
