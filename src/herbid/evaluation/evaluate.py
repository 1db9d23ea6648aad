"""``herbid evaluate``: a bundle's accuracy on one split (or fold) of a dataset folder.

Besides the paper's species top-1/top-5 this reports genus and family top-1, because a
wrong species of the right genus is a useful answer for a curator. They are computed
from the species probabilities (softmax of the logits at the bundle's calibration
temperature) summed per genus or family, and the largest sum is compared with the row's
true genus or family: a family predicted with 0.3 + 0.3 beats a single species at 0.4.

Test rows whose species the bundle was never trained on are *not* dropped: they count as
wrong at every rank of the species metrics and are included in ``n`` (so a model cannot
look better by being tested on fewer species), and their number is reported as
``unknown_species``. Their genus or family can still be right.

When the manifest names each sheet's institution, the result also carries the
herbarium-shortcut metrics of :mod:`herbid.evaluation.shortcut` (``seen_pairs``,
``unseen_pairs``, ``shortcut_share``).

``knn_fusion=w`` measures k-NN + classifier fusion: the class probabilities become
``(1 − w) · softmax(logits / T) + w · kNN votes``, the votes of the 5 training sheets most
similar in the model's own pooled features (the training rows of the same split or fold).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from herbid.data.dataset_folder import load_manifest
from herbid.data.splits import text_column
from herbid.errors import InvalidOption
from herbid.evaluation.metrics import topk_correct, topk_hit_rows
from herbid.evaluation.shortcut import institution_metrics
from herbid.inference.bundle import Bundle, as_bundle
from herbid.inference.device import resolve_device
from herbid.inference.forward import forward
from herbid.inference.pixels import eval_transform
from herbid.inference.sheets import ManifestDataset, select_rows
from herbid.inference.taxonomy import RANKS, RankIndex


def evaluate_bundle(bundle: str | Path | Bundle, dataset_dir: str | Path, *, split: str = "test",
                    fold: int | None = None, batch_size: int = 64, device: str = "auto",
                    workers: int = 0, amp: str = "none", tta: str | None = None,
                    knn_fusion: float = 0.0, per_image: bool = False) -> dict[str, Any]:
    """Top-1/top-5 (species), genus/family top-1 and per-species accuracy on one split.

    ``fold=k`` evaluates on the rows of fold ``k`` instead of a split. The bundle's own
    preprocessing is used (centre crop, as at test time during training). Top-k with
    fewer than k species is top-(number of species). ``genus_top1``/``family_top1`` are
    ``None`` unless every species of the bundle and every test row has that rank.
    ``tta`` overrides the bundle's test-time augmentation (to measure what it adds);
    ``knn_fusion`` in (0, 1] mixes in k-NN votes (see the module docstring).
    ``per_image=True`` adds ``per_image``: each test row's ``image_id``, true name and
    calibrated ``probabilities`` over the bundle's species (its class order), the numbers
    ``identify``, the web app and ``review`` give for the same sheet.
    """
    if not 0.0 <= knn_fusion <= 1.0:
        raise InvalidOption(f"knn_fusion must be in [0, 1], got {knn_fusion}")
    torch_device = resolve_device(device)
    bundle = as_bundle(bundle, torch_device)
    manifest = load_manifest(dataset_dir)
    frame = select_rows(manifest, split=split, fold=fold, train=False)
    if frame.empty:
        where = f"fold {fold}" if fold is not None else f"split {split!r}"
        raise InvalidOption(f"{dataset_dir}: no rows in {where} to evaluate on")
    names = text_column(frame, "scientificName").tolist()
    known = set(bundle.species)
    unknown = sorted({n for n in names if n not in known})
    # Unknown species get class numbers past the model's outputs: never among its top k.
    classes = list(bundle.species) + unknown
    dataset = ManifestDataset(dataset_dir, frame, classes, eval_transform(bundle.preprocessing))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    tta = bundle.preprocessing.tta if tta is None else tta
    # With fusion the same pass also keeps the pooled features of the sheets as they are
    # (the first view), instead of reading and running them twice.
    out = forward(bundle.model, loader, torch_device, tta=tta, amp=amp, pooled=knn_fusion > 0)
    logits, targets = out.logits, out.targets
    scaled = logits / bundle.temperature
    reference = select_rows(manifest, split="train") if fold is None else select_rows(manifest, fold=fold, train=True)
    if knn_fusion > 0:
        votes = knn_votes(bundle, dataset_dir, reference, out.pooled.numpy(), len(classes), torch_device, batch_size)
        fused = (1 - knn_fusion) * F.pad(scaled.softmax(dim=1), (0, len(unknown))) + knn_fusion * votes
        scaled = logits = torch.log(fused.clamp_min(1e-12))[:, :len(bundle.species)]
    result = {
        "bundle": str(bundle.path) if bundle.path else None,
        "dataset": str(dataset_dir),
        "split": None if fold is not None else split,
        "fold": fold,
        "tta": tta,
        **species_metrics(logits, targets),
        "knn_fusion": knn_fusion,
        **{f"{rank}_top1": rank_top1(scaled, frame, bundle, rank) for rank in RANKS},
        "unknown_species": int(sum(n not in known for n in names)),
        "unknown_species_names": unknown,
        "per_species": per_species(names, logits, targets),
    }
    result.update(institution_metrics(reference, frame, scaled, targets, bundle.species) or {})
    if per_image:
        probabilities = scaled.softmax(dim=1).tolist()
        result["per_image"] = [{"image_id": image_id, "scientificName": name, "probabilities": row}
                               for image_id, name, row in zip(text_column(frame, "image_id"), names, probabilities)]
    return result


def knn_votes(bundle: Bundle, dataset_dir: str | Path, reference: pd.DataFrame, test_x: np.ndarray,
              n_classes: int, device: torch.device, batch_size: int = 64) -> torch.Tensor:
    """k-NN class votes ``(n_test, n_classes)`` from the bundle's pooled features of the
    ``reference`` rows (species the bundle knows) and ``test_x``, the test images' ones."""
    from herbid.evaluation.baselines import knn_classify

    names = text_column(reference, "scientificName")
    reference = reference[names.isin(bundle.species).to_numpy()]
    if reference.empty:
        raise InvalidOption("k-NN fusion needs training rows of the bundle's species in the dataset")
    reference_set = ManifestDataset(dataset_dir, reference, list(bundle.species), eval_transform(bundle.preprocessing))
    reference_x = forward(bundle.model, DataLoader(reference_set, batch_size=batch_size), device, pooled=True).pooled.numpy()
    votes = knn_classify(reference_x, np.asarray(reference_set.targets), test_x, n_classes, k=5)
    return torch.as_tensor(votes, dtype=torch.float32)


def species_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
    """top1, top5 and n over all rows; ``loss`` over the rows of known species only."""
    n = int(targets.numel())
    known = targets < logits.shape[1]
    loss = (F.cross_entropy(logits[known], targets[known]).item() if bool(known.any()) else math.nan)
    correct = topk_correct(logits, targets, (1, 5))
    return {"top1": correct[1] / n, "top5": correct[5] / n, "n": n, "loss": loss}


def _true_ranks(frame: pd.DataFrame, bundle: Bundle, rank: str) -> list[str | None]:
    """Each row's own genus/family, else the bundle's for that species."""
    own = text_column(frame, rank).tolist()
    names = text_column(frame, "scientificName").tolist()
    return [value or (bundle.taxonomy.get(name) or {}).get(rank) for value, name in zip(own, names)]


def rank_top1(logits: torch.Tensor, frame: pd.DataFrame, bundle: Bundle, rank: str) -> float | None:
    """Top-1 at ``rank`` from species probabilities summed per taxon; None if unknown."""
    truth = _true_ranks(frame, bundle, rank)
    if any((bundle.taxonomy.get(s) or {}).get(rank) is None for s in bundle.species) or None in truth:
        return None
    index = RankIndex.build(bundle.species, bundle.taxonomy, rank)
    predicted = index.sums(logits.softmax(dim=1)).argmax(dim=1).tolist()
    return float(np.mean([index.taxa[p] == t for p, t in zip(predicted, truth)]))


def per_species(names: list[str], logits: torch.Tensor, targets: torch.Tensor) -> dict[str, dict[str, Any]]:
    """``{species: {"n", "top1", "top5", "known"}}`` — where the errors are."""
    rows_hit = topk_hit_rows(logits, targets, (1, 5)).numpy()
    hits = {1: rows_hit[:, 0], 5: rows_hit[:, 1]}
    names_array = np.asarray(names, dtype=object)
    known = (targets < logits.shape[1]).numpy()
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(set(names)):
        rows = names_array == name
        count = int(rows.sum())
        out[name] = {"n": count, "top1": int(hits[1][rows].sum()) / count,
                     "top5": int(hits[5][rows].sum()) / count, "known": bool(known[rows].all())}
    return out
