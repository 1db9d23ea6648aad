"""Honest baselines: frozen backbone features + a linear probe or k-NN.

Before crediting a fine-tuning recipe with an accuracy, it should beat what the frozen
ImageNet backbone already gives for free. Two standard yardsticks:

* ``linear-probe``: multinomial logistic regression (L2, full-batch LBFGS) on
  standardised pooled features;
* ``knn``: cosine-similarity k-nearest neighbours with similarity-weighted votes.

Features are extracted once, in eval mode, with the eval transform: a centre
``input_size`` crop of the ``resize_size`` image. By default that is the model's own
preprocessing (resize 256 → crop 224 for the ImageNet models); ``input_size=resize_size=256``
means the whole stored 256 px sheet, uncropped (a crop can cut off diagnostic parts of
a sheet, which are spread over the whole page).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from herbid.data.dataset_folder import load_manifest
from herbid.errors import InvalidOption
from herbid.evaluation.metrics import topk_correct
from herbid.inference.device import resolve_device
from herbid.inference.forward import forward
from herbid.inference.pixels import eval_transform
from herbid.inference.sheets import ManifestDataset, select_rows, species_and_taxonomy
from herbid.models.base import HerbidModel
from herbid.models.registry import create_model

#: A fixed, mild L2 strength (on the mean cross-entropy of standardised features). With
#: ~10 images per class and ~1000-dimensional features the data are separable, so some
#: L2 is needed for a finite solution; 1e-3 keeps the probe close to max-margin without
#: a per-dataset search (too few images per species for a trustworthy inner CV).
DEFAULT_L2 = 1e-3


#: The seed of a random frozen backbone (training's default seed: the same weights).
FROZEN_SEED = 0

# ---------------------------------------------------------------------- features


def frozen_backbone(arch: str, init: str = "imagenet") -> HerbidModel:
    """``arch`` initialised from ``init`` (random, imagenet, or a weights file / bundle / run
    folder) exactly as training with seed 0 would start from it; the classifier is never used."""
    torch.manual_seed(FROZEN_SEED)
    return create_model(arch, 1, init=init, skip_classifier=True)[0]


def extract_features(arch: str, dataset_dir: str | Path, frame: pd.DataFrame, *, init: str = "imagenet",
                     input_size: int | None = None, resize_size: int | None = None, aspect: float = 1.0,
                     batch_size: int = 32, device: str = "auto",
                     species: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pooled pre-logit features (float32, ``(n, d)``) and class indices of ``frame``'s rows.

    Eval transform only (centre crop, no flips), so the features are a deterministic
    function of the image. Default sizes are the model's (resize 256 → crop 224);
    ``input_size=resize_size=256`` uses the full 256 px sheet; ``aspect`` (height / width)
    other than 1 keeps the sheet's shape (see ``TrainConfig.aspect``). ``species`` fixes the class
    order (default: the sorted species of ``frame``).
    """
    model = frozen_backbone(arch, init)
    target = resolve_device(device)
    model.to(target)
    transform = eval_transform(replace(model.preprocessing, aspect=aspect), input_size, resize_size)
    classes = species if species is not None else species_and_taxonomy(frame)[0]
    dataset = ManifestDataset(dataset_dir, frame, classes, transform)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    return forward(model, loader, target, pooled=True).pooled.numpy(), np.asarray(dataset.targets, dtype=np.int64)


# ------------------------------------------------------------ logistic regression


@dataclass
class LinearProbe:
    """A fitted multinomial logistic regression with its feature standardiser."""

    weight: torch.Tensor  # (n_classes, d)
    bias: torch.Tensor  # (n_classes,)
    mean: torch.Tensor  # (d,)
    std: torch.Tensor  # (d,)

    def logits(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        z = (torch.as_tensor(x, dtype=torch.float64) - self.mean) / self.std
        return z @ self.weight.T + self.bias

    def predict_proba(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        return torch.softmax(self.logits(x), dim=1).numpy()


def _standardiser(x: torch.Tensor, std_floor: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Train mean and std; constant features get std 1 so they stay 0, not NaN.

    ``std_floor`` > 0 raises every std to at least that fraction of the median std, so a
    feature that hardly varies on the training images cannot get a huge weight.
    """
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    if std_floor > 0:
        std = std.clamp(min=std_floor * float(std.median()))
    return mean, torch.where(std > 1e-12, std, torch.ones_like(std))


def fit_logistic_regression(train_x: np.ndarray, train_y: np.ndarray, n_classes: int, *, l2: float = DEFAULT_L2,
                            max_iter: int = 200, std_floor: float = 0.0,
                            sample_weight: np.ndarray | None = None) -> LinearProbe:
    """Multinomial logistic regression, mean cross-entropy + ``l2/2·‖W‖²`` (bias unpenalised);
    with ``sample_weight``, the weighted mean cross-entropy.

    Full-batch LBFGS with a strong-Wolfe line search, in float64: the problem is convex
    and small (a few hundred rows), so a second-order method converges in tens of
    iterations without a learning rate to tune. Features are standardised with the
    train mean/std so one ``l2`` suits any backbone's feature scale (``std_floor``: see
    :func:`_standardiser`).
    """
    x = torch.as_tensor(train_x, dtype=torch.float64)
    y = torch.as_tensor(train_y, dtype=torch.long)
    mean, std = _standardiser(x, std_floor)
    z = (x - mean) / std
    row_weight = None if sample_weight is None else torch.as_tensor(sample_weight, dtype=torch.float64)
    weight = torch.zeros(n_classes, z.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = z @ weight.T + bias
        if row_weight is None:
            data_loss = F.cross_entropy(logits, y)
        else:
            data_loss = (F.cross_entropy(logits, y, reduction="none") * row_weight).sum() / row_weight.sum()
        loss = data_loss + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return LinearProbe(weight.detach(), bias.detach(), mean, std)


# --------------------------------------------------------------------------- k-NN


def knn_classify(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, n_classes: int, *,
                 k: int = 5) -> np.ndarray:
    """Class scores ``(n_test, n_classes)`` from the ``k`` most cosine-similar train rows.

    Each neighbour votes for its class with its similarity (clamped at 0, plus a tiny
    floor so that even orthogonal neighbours count); rows sum to 1. Classes without a
    neighbour get a score proportional to a vanishing fraction of their best similarity,
    so top-5 beyond the k votes is still ranked by closeness rather than by class index.
    """
    train = F.normalize(torch.as_tensor(train_x, dtype=torch.float64), dim=1)
    test = F.normalize(torch.as_tensor(test_x, dtype=torch.float64), dim=1)
    labels = torch.as_tensor(train_y, dtype=torch.long)
    similarity = test @ train.T  # (n_test, n_train)
    top = similarity.topk(min(k, train.shape[0]), dim=1)
    votes = torch.zeros(test.shape[0], n_classes, dtype=torch.float64)
    votes.scatter_add_(1, labels[top.indices], top.values.clamp(min=0) + 1e-6)
    votes += 1e-9 * _best_similarity_per_class(similarity, labels, n_classes).clamp(min=0)
    return (votes / votes.sum(dim=1, keepdim=True)).numpy()


def _best_similarity_per_class(similarity: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    best = torch.full((similarity.shape[0], n_classes), -1.0, dtype=similarity.dtype)
    index = labels.unsqueeze(0).expand_as(similarity)
    return best.scatter_reduce(1, index, similarity, reduce="amax", include_self=True)


# ------------------------------------------------------------------------ methods


def _linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, n_classes: int,
                  **kw: Any) -> np.ndarray:
    return fit_logistic_regression(train_x, train_y, n_classes, **kw).predict_proba(test_x)


#: Baseline name → ``(train_x, train_y, test_x, n_classes, **kw) -> test probabilities``.
METHODS: dict[str, Callable[..., np.ndarray]] = {
    "linear-probe": _linear_probe,
    "knn": knn_classify,
}


@dataclass
class FeatureSplit:
    """Frozen features of one train/test split, extracted once and reusable by every method."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    species: list[str]
    arch: str


def split_features(dataset_dir: str | Path, *, arch: str = "efficientnet_lite0", train_split: str = "train",
                   test_split: str = "test", fold: int | None = None, **feature_kw: Any) -> FeatureSplit:
    """Features of the train and test rows (``fold=k``: every other fold vs fold k).

    The class list is every species in the manifest, so a test species missing from
    train is an honest miss rather than an error.
    """
    frame = load_manifest(dataset_dir)
    species = species_and_taxonomy(frame)[0]
    train_rows = select_rows(frame, split=train_split, fold=fold, train=True)
    test_rows = select_rows(frame, split=test_split, fold=fold, train=False)
    train_x, train_y = extract_features(arch, dataset_dir, train_rows, species=species, **feature_kw)
    test_x, test_y = extract_features(arch, dataset_dir, test_rows, species=species, **feature_kw)
    return FeatureSplit(train_x, train_y, test_x, test_y, species, arch)


def score_method(method: str, features: FeatureSplit, **method_kw: Any) -> dict[str, Any]:
    """``{"top1", "top5", "n", "method", "arch", "feature_dim"}`` of one method on ``features``."""
    try:
        classify = METHODS[method]
    except KeyError:
        raise InvalidOption(f"unknown baseline {method!r}; choose one of {sorted(METHODS)}") from None
    n = len(features.test_y)
    result: dict[str, Any] = {"method": method, "arch": features.arch, "n": n,
                              "feature_dim": int(features.train_x.shape[1])}
    if n == 0:
        return {**result, "top1": math.nan, "top5": math.nan}
    probs = classify(features.train_x, features.train_y, features.test_x, len(features.species), **method_kw)
    counts = topk_correct(torch.as_tensor(probs), torch.as_tensor(features.test_y), (1, 5))
    return {**result, "top1": counts[1] / n, "top5": counts[5] / n}


def baseline_on_datasets(method: str, train_dir: str | Path, test_dir: str | Path, *,
                         arch: str = "efficientnet_lite0", fold: int | None = None, **kw: Any) -> dict[str, Any]:
    """Like :func:`run_baseline`, with the training rows from ``train_dir`` and the test rows
    from ``test_dir`` (the same folder for the usual ``X.Y.Y`` experiment). The class list
    is the union of both datasets' species."""
    if Path(train_dir).resolve() == Path(test_dir).resolve():
        return run_baseline(method, train_dir, arch=arch, fold=fold, **kw)
    if method not in METHODS:
        raise InvalidOption(f"unknown baseline {method!r}; choose one of {sorted(METHODS)}")
    feature_kw = {key: kw.pop(key) for key in FEATURE_KEYS if key in kw}
    train_frame, test_frame = load_manifest(train_dir), load_manifest(test_dir)
    species = sorted(set(species_and_taxonomy(train_frame)[0]) | set(species_and_taxonomy(test_frame)[0]))
    train_x, train_y = extract_features(arch, train_dir, select_rows(train_frame, split="train", train=True),
                                        species=species, **feature_kw)
    test_x, test_y = extract_features(arch, test_dir, select_rows(test_frame, split="test", fold=fold, train=False),
                                      species=species, **feature_kw)
    return score_method(method, FeatureSplit(train_x, train_y, test_x, test_y, species, arch), **kw)


FEATURE_KEYS = ("init", "input_size", "resize_size", "aspect", "batch_size", "device")


def run_baseline(method: str, dataset_dir: str | Path, *, arch: str = "efficientnet_lite0",
                 train_split: str = "train", test_split: str = "test", fold: int | None = None,
                 **kw: Any) -> dict[str, Any]:
    """Extract frozen features and score one baseline method on the test rows.

    ``kw`` may hold feature options (``init``, ``input_size``, ``resize_size``, ``aspect``,
    ``batch_size``, ``device``) and method options (``l2``, ``max_iter`` for the probe,
    ``k`` for k-NN). To score several methods on the same features, use
    :func:`split_features` once and :func:`score_method` per method.
    """
    if method not in METHODS:
        raise InvalidOption(f"unknown baseline {method!r}; choose one of {sorted(METHODS)}")
    feature_kw = {key: kw.pop(key) for key in FEATURE_KEYS if key in kw}
    features = split_features(dataset_dir, arch=arch, train_split=train_split, test_split=test_split,
                              fold=fold, **feature_kw)
    return score_method(method, features, **kw)
