"""Name review: which sheets of a collection does the model think are misidentified?

Herbaria hold many sheets under outdated or wrong names; the paper's motivation is to
help taxonomists revise them. :func:`review_dataset` scores every sheet's *recorded*
name with the bundle's calibrated classifier and ranks the sheets by **doubt**::

    p         = (1 − w) · p_classifier + w · p_kNN          (w = 0.5 by default)
    doubt     = p(best other species) − p(recorded species)

The calibrated classifier and the k-NN vote over the indexed sheets (the sheet itself
excluded) are two independent witnesses: on the Harvard sheets, natural misclassifications
of the classifier often still had neighbours of the recorded species, while planted wrong
names had none, so averaging the two lifted the planted names above the natural errors.
``p_recorded``/``p_suggested`` are these averaged probabilities; ``knn_p_recorded`` is the
k-NN vote alone.

We use this margin rather than ``−log p(recorded)`` because a curator needs a concrete
alternative to check: the margin is high only when the model both rejects the recorded
name *and* prefers a specific other one, which is what a revision looks like. ``−log p``
ranks a sheet the model finds merely ambiguous (0.3 / 0.3 / 0.4 spread) as high as one it
confidently assigns elsewhere, and it is unbounded, so a few saturated softmax outputs
dominate the top. The margin lies in [−1, 1]: below 0 the model agrees with the record.

Each row comes with the evidence a curator needs to decide: the ``top_k`` suggested
species, and the nearest sheets *of the suggested species* in a specimen index
(catalogue number, institution, image path, similarity), so the doubted sheet can be
compared with named material side by side.

Sheets whose recorded species the bundle was not trained on get ``p_recorded = 0`` and
``doubt = NaN`` (sorted last) with a note: the classifier cannot judge a name it does not
know. ``knn_p_recorded`` — the k-NN vote for the recorded name among indexed sheets —
still can, when the index holds that species.

Out-of-distribution score: a sheet that "matches no known species well" (a blank sheet,
a label-only sheet, a fungus in a plant collection, a scan of something else) gets a
high ``ood_score``. Softmax confidence alone is a poor detector — a CNN can be 100 % sure
about random noise — so the score is led by the distance to the nearest indexed sheet,
judged against how far ordinary indexed sheets are from *their* nearest other sheet::

    d         = 1 − mean cosine similarity to the k = 3 nearest other indexed sheets
    z         = (log d − median(log d_ref)) / (1.4826 · MAD(log d_ref))
    novelty   = sigmoid(z − z_flag)                   0.5 at the flag threshold
    ood_score = 1 − (1 − novelty) · (1 − γ · (1 − max calibrated probability))

``d_ref`` are the same leave-one-out distances of (a sample of) the indexed sheets.
Three neighbours rather than one: a single look-alike (a grey scan next to a pale sheet)
is luck, three are a neighbourhood — on the test collection this doubled the gap
between a noise scan and the most unusual real sheet — while a species still needs only
three indexed sheets not to look foreign. ``nn_similarity`` reports the single nearest
sheet's similarity, the more readable number. Median and MAD rather than mean and standard deviation (or a high
quantile), because the reference is often the reviewed collection itself, outliers
included: one junk scan must not move the yardstick. Logarithms because these distances
are strongly right-skewed. ``ood_flag`` is ``z > z_flag`` (3 robust standard deviations
by default). Softmax uncertainty can lift a sheet's score by at most ``γ`` (0.25) of the
remaining gap: it separates "between two known species" from "close to one", but it
cannot make an ordinary sheet look as foreign as a far-away one.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from herbid.data.dataset_folder import json_ready
from herbid.data.splits import text_column
from herbid.identification.index import Encoded, SpecimenIndex, encode_rows, manifest_rows, open_index, sheet_metadata
from herbid.inference.bundle import Bundle, as_bundle
from herbid.inference.device import resolve_device

#: Columns of the review table, in order.
REVIEW_COLUMNS: tuple[str, ...] = (
    "image_id", "catalogNumber", "institutionCode", "recorded_name", "p_recorded", "suggested_name",
    "p_suggested", "doubt", "suggestions", "evidence", "knn_p_recorded", "nn_similarity", "ood_score",
    "ood_flag", "note", "split", "image_path", "source_path",
)


@dataclass(frozen=True)
class OodSettings:
    """How the out-of-distribution score is computed (see the module docstring)."""

    #: Robust z-score of the log distance from which a sheet is flagged.
    z_flag: float = 3.0
    #: How much softmax uncertainty may add to ``ood_score`` (share of the remaining gap).
    uncertainty_weight: float = 0.25
    #: Nearest indexed sheets whose mean similarity measures how far a sheet lies.
    neighbours: int = 3
    #: Indexed sheets sampled for the reference distance distribution.
    reference_sample: int = 2000
    #: Floor of the robust scale (log units), so a reference of near-identical distances
    #: does not turn tiny differences into huge z-scores.
    min_scale: float = 0.05


#: Weight of the k-NN vote against the classifier in the doubt score (0 = classifier only).
KNN_WEIGHT = 0.5


@dataclass
class NameScores:
    """Per sheet: the recorded name's probability, the best other species, the doubt."""

    p_recorded: np.ndarray
    suggested: list[str]
    p_suggested: np.ndarray
    doubt: np.ndarray
    suggestions: list[list[dict[str, Any]]]
    notes: list[str | None]


@dataclass
class OodScores:
    """Per sheet: similarity to the nearest other indexed sheet, the score, the flag."""

    nn_similarity: np.ndarray
    score: np.ndarray
    flag: np.ndarray


def calibrated_probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax at the bundle's calibration temperature (what the model's 0.8 *means*)."""
    return torch.softmax(torch.from_numpy(logits) / float(temperature), dim=1).numpy()


def score_names(probs: np.ndarray, recorded: Sequence[str | None], bundle: Bundle, top_k: int = 3) -> NameScores:
    """Doubt about each recorded name: p(best other species) − p(recorded)."""
    column = {name: i for i, name in enumerate(bundle.species)}
    codes = np.array([column.get(name, -1) if name else -1 for name in recorded], dtype=np.int64)
    known = codes >= 0
    rows = np.arange(len(probs))
    p_recorded = np.where(known, probs[rows, np.clip(codes, 0, None)], 0.0)
    others = probs.copy()
    others[rows[known], codes[known]] = -np.inf
    best = others.argmax(axis=1)
    p_suggested = probs[rows, best]
    doubt = np.where(known, p_suggested - p_recorded, np.nan)
    return NameScores(
        p_recorded=p_recorded, suggested=[bundle.species[i] for i in best], p_suggested=p_suggested, doubt=doubt,
        suggestions=[_suggestions(row, bundle, top_k) for row in probs],
        notes=[_note(name, bundle) if not ok else None for name, ok in zip(recorded, known)],
    )


def _suggestions(probs: np.ndarray, bundle: Bundle, top_k: int) -> list[dict[str, Any]]:
    order = np.argsort(-probs, kind="stable")[:top_k]
    return [{"species": bundle.species[i], "probability": float(probs[i]),
             **{rank: (bundle.taxonomy.get(bundle.species[i]) or {}).get(rank) for rank in ("genus", "family")}}
            for i in order]


def _note(name: str | None, bundle: Bundle) -> str:
    if not name:
        return "no recorded name: see the suggestions"
    return (f"recorded species is not among the model's {len(bundle.species)} species: the classifier cannot "
            "judge this name (see knn_p_recorded)")


def species_evidence(index: SpecimenIndex, embeddings: np.ndarray, species: Sequence[str],
                     exclude: Sequence[Collection[str]], count: int) -> list[list[dict[str, Any]]]:
    """Per sheet, the ``count`` indexed sheets of ``species[i]`` nearest to it (self excluded).

    Sheets are grouped by species so that each species' rows are scored in one product.
    """
    out: list[list[dict[str, Any]]] = [[] for _ in species]
    if count <= 0:
        return out
    names = np.asarray(species, dtype=object)
    for name in sorted(set(species)):
        members = np.flatnonzero(names == name)
        scores, rows = index.search_species(embeddings[members], name, count,
                                            exclude=[exclude[i] for i in members])
        for i, row_scores, row_rows in zip(members, scores, rows):
            out[i] = [_evidence_record(record) for record in index.rows(row_rows, row_scores)]
    return out


def _evidence_record(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("similarity", "image_id", "catalogNumber", "institutionCode", "scientificName", "recordedBy",
            "image_path", "large_image_path", "source_path")
    return {key: record.get(key) for key in keys}


def ood_scores(index: SpecimenIndex, embeddings: np.ndarray, probs: np.ndarray,
               exclude: Sequence[Collection[str]], settings: OodSettings = OodSettings()) -> OodScores:
    """kNN novelty against the index's own neighbour distances, plus softmax uncertainty."""
    nearest = index.nearest_similarity(embeddings, exclude=exclude)
    neighbourhood = index.nearest_similarity(embeddings, settings.neighbours, exclude=exclude)
    reference = index.reference_similarities(settings.neighbours, settings.reference_sample)
    z = novelty_z(neighbourhood, reference, settings.min_scale)
    novelty = 1.0 / (1.0 + np.exp(-(z - settings.z_flag)))
    uncertainty = 1.0 - probs.max(axis=1)
    score = 1.0 - (1.0 - novelty) * (1.0 - settings.uncertainty_weight * uncertainty)
    return OodScores(nn_similarity=nearest, score=score, flag=z > settings.z_flag)


def novelty_z(similarity: np.ndarray, reference: np.ndarray, min_scale: float = 0.05) -> np.ndarray:
    """Robust z-score of each log nearest-neighbour distance against the reference ones.

    No reference (an index of one sheet) gives 0: nothing to compare with. No neighbour
    at all (empty index) counts as maximally far (distance 2, the cosine maximum).
    """
    if len(reference) == 0:
        return np.zeros(len(similarity))
    log_ref = np.log(np.clip(1.0 - reference, 1e-6, None))
    centre = float(np.median(log_ref))
    scale = max(1.4826 * float(np.median(np.abs(log_ref - centre))), min_scale)
    distance = np.where(np.isfinite(similarity), 1.0 - similarity, 2.0)
    return (np.log(np.clip(distance, 1e-6, None)) - centre) / scale


def _reference_index(index: str | Path | SpecimenIndex | None, bundle: Bundle, dataset_dir: str | Path,
                     frame: pd.DataFrame, encoded: Encoded) -> SpecimenIndex:
    """The given index (checked against the bundle), else one over the reviewed sheets
    themselves: their embeddings are at hand, and a collection is its own best reference."""
    if index is not None:
        opened = open_index(index)
        opened.check_compatible(bundle)
        return opened
    return SpecimenIndex(encoded.embeddings, sheet_metadata(dataset_dir, frame))


def review_dataset(bundle: str | Path | Bundle, dataset_dir: str | Path, *,
                   index: str | Path | SpecimenIndex | None = None, split: str | None = None, top_k: int = 3,
                   evidence: int = 3, device: str = "auto", batch_size: int = 64, knn_k: int = 10,
                   knn_weight: float = KNN_WEIGHT, ood: OodSettings = OodSettings(),
                   progress: bool = False) -> pd.DataFrame:
    """Every sheet of ``dataset_dir`` (or one split), most doubted recorded name first.

    Columns: :data:`REVIEW_COLUMNS`. ``index`` supplies the evidence sheets and the
    reference for ``ood_score``; without one the reviewed sheets are their own reference.
    Sheets are never their own evidence or nearest neighbour (matched by image id).
    """
    torch_device = resolve_device(device)
    loaded = as_bundle(bundle, torch_device)
    frame = manifest_rows(dataset_dir, split)
    encoded = encode_rows(loaded, dataset_dir, frame, batch_size=batch_size, device=torch_device,
                          progress=progress, description="review: scoring sheets")
    probs = calibrated_probabilities(encoded.logits, loaded.temperature)
    reference = _reference_index(index, loaded, dataset_dir, frame, encoded)
    recorded = text_column(frame, "scientificName").tolist()
    own = [{str(image_id)} for image_id in frame["image_id"].tolist()]
    knn_names, knn_probs = reference.knn_probabilities(encoded.embeddings, knn_k, exclude=own)
    evidence_probs = (1 - knn_weight) * probs + knn_weight * _align(knn_names, knn_probs, loaded.species)
    names = score_names(evidence_probs, recorded, loaded, top_k)
    knn_p = _recorded_column(knn_names, knn_probs, recorded)
    table = pd.DataFrame({
        "image_id": frame["image_id"].astype(str).tolist(),
        "catalogNumber": text_column(frame, "catalogNumber").tolist(),
        "institutionCode": text_column(frame, "institutionCode").tolist(),
        "recorded_name": recorded,
        "p_recorded": names.p_recorded,
        "suggested_name": names.suggested,
        "p_suggested": names.p_suggested,
        "doubt": names.doubt,
        "suggestions": names.suggestions,
        "evidence": species_evidence(reference, encoded.embeddings, names.suggested, own, evidence),
        "knn_p_recorded": knn_p,
        **_ood_columns(ood_scores(reference, encoded.embeddings, probs, own, ood)),
        "note": names.notes,
        "split": text_column(frame, "split").tolist(),
        **{column: sheet_metadata(dataset_dir, frame)[column].tolist() for column in ("image_path", "source_path")},
    })
    return sort_review(table)


def _ood_columns(scores: OodScores) -> dict[str, np.ndarray]:
    return {"nn_similarity": scores.nn_similarity, "ood_score": scores.score, "ood_flag": scores.flag}


def _align(names: Sequence[str], probs: np.ndarray, species: Sequence[str]) -> np.ndarray:
    """k-NN votes re-indexed to the bundle's species (species only the index has drop out)."""
    column = {name: i for i, name in enumerate(names)}
    aligned = np.zeros((len(probs), len(species)), dtype=np.float64)
    for j, name in enumerate(species):
        if name in column:
            aligned[:, j] = probs[:, column[name]]
    return aligned


def _recorded_column(names: Sequence[str], probs: np.ndarray, recorded: Sequence[str | None]) -> np.ndarray:
    """The k-NN vote (over the index, self excluded) for each sheet's recorded name."""
    column = {name: i for i, name in enumerate(names)}
    return np.array([probs[i, column[name]] if name in column else 0.0 for i, name in enumerate(recorded)])


def sort_review(table: pd.DataFrame) -> pd.DataFrame:
    """Most doubted first; names the model cannot judge (NaN doubt) last; ties by image id."""
    ordered = table.sort_values(["doubt", "image_id"], ascending=[False, True], na_position="last", kind="stable")
    return ordered.reset_index(drop=True)[list(REVIEW_COLUMNS)]


def review_records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """The review as JSON-ready dicts (NaN → None, numpy → Python)."""
    records = []
    for row in table.to_dict(orient="records"):
        records.append({key: json_ready(value) for key, value in row.items()})
    return records
