"""Bias-free, species-stratified train/test(/val) splits and K folds.

Carranza-Rojas et al. 2017 ("Avoiding bias") kept sheets of the same species collected by
the same collector out of training *and* testing at once (H255, H1K), kept all images of
one specimen together (CR), and all images of one observation together (PlantCLEF). A
random per-image split lets a network recognise the collector's pressing style, label or
the very same specimen instead of the species, and inflates accuracy. herbid makes
those rules executable:

* a *mode* (:data:`GROUP_MODES`) says which images form a group that must not straddle;
* in every mode, byte-identical images (same ``sha256``) and, within a species, images
  with the same perceptual hash are merged into one group too (a union-find), so a
  duplicate scan filed under two collectors cannot leak;
* whole groups are then assigned to test per species (stratified), aiming at the
  requested fraction of that species' images.

The grouping lives in :mod:`herbid.data.grouping` and the stratified dealing of groups
in :mod:`herbid.data.split_assignment`, whose pure functions :func:`assign_splits` and
:func:`assign_folds` work on a DataFrame in memory (the training code reuses them). This
module is the dataset-folder side: :func:`split_dataset` and :func:`make_folds` apply
them to a manifest and record what they did in ``splits.json``. Every name of those
modules stays importable from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import herbid
from herbid.data.columns import text_column
from herbid.data.dataset_folder import SPLITS, load_manifest, manifest_hash, read_json, save_manifest, write_json
from herbid.data.grouping import (
    GROUP_MODES,
    OBSERVATION_COLUMNS,
    Grouping,
    GroupKeyFn,
    GroupMode,
    build_grouping,
    collector_keys,
    group_keys,
    group_mode,
    image_keys,
    observation_keys,
    species_labels,
    specimen_keys,
    unknown_collector_mask,
)
from herbid.data.phash import NEAR_DUPLICATE_BITS
from herbid.data.split_assignment import (
    DIFFUSION_LIMIT,
    EXACT_SEARCH_MAX_GROUPS,
    SPLIT_NAMES,
    TEST,
    TRAIN,
    VAL,
    assign_folds,
    assign_splits,
    choose_groups,
    fold_components,
    split_components,
)

__all__ = [
    "DIFFUSION_LIMIT",
    "EXACT_SEARCH_MAX_GROUPS",
    "GROUP_MODES",
    "OBSERVATION_COLUMNS",
    "SPLIT_NAMES",
    "TEST",
    "TRAIN",
    "VAL",
    "FoldsSummary",
    "GroupKeyFn",
    "GroupMode",
    "Grouping",
    "SplitSummary",
    "assign_folds",
    "assign_splits",
    "build_grouping",
    "choose_groups",
    "collector_keys",
    "fold_components",
    "group_keys",
    "group_mode",
    "image_keys",
    "make_folds",
    "observation_keys",
    "specimen_keys",
    "split_components",
    "split_dataset",
    "text_column",
    "unknown_collector_mask",
]


# ----------------------------------------------------------------- summaries


def _ratio(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0


def _per_species_counts(species: np.ndarray, splits: np.ndarray) -> dict[str, dict[str, Any]]:
    table = pd.crosstab(pd.Series(species, name="species"), pd.Series(splits, name="split"))
    out: dict[str, dict[str, Any]] = {}
    for sp, row in table.iterrows():
        counts = {name: int(row.get(name, 0)) for name in SPLIT_NAMES}
        counts["test_fraction"] = _ratio(counts[TEST], sum(counts[n] for n in SPLIT_NAMES))
        out[str(sp)] = counts
    return out


@dataclass
class FoldsSummary:
    """What :func:`make_folds` did; stored under ``"folds"`` in ``splits.json``."""

    mode: str
    k: int
    seed: int
    near_duplicate_bits: int
    images: int
    groups: int
    fold_images: list[int]
    fold_groups: list[int]
    per_species: dict[str, list[int]]
    species_fewer_groups_than_k: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SplitSummary:
    """What :func:`split_dataset` did; written as ``splits.json``."""

    mode: str
    seed: int
    test_fraction: float
    val_fraction: float
    near_duplicate_bits: int
    images: int
    species: int
    groups: int
    groups_before_merge: int
    cross_species_groups: int
    unknown_collector: int
    counts: dict[str, int]
    achieved: dict[str, float]
    per_species: dict[str, dict[str, Any]]
    unsplittable_species: list[str]
    herbid_version: str = herbid.__version__
    manifest_hash: str = ""
    folds: dict[str, Any] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data["folds"] is None:
            del data["folds"]
        return data


def _folds_summary(grouping: Grouping, species: np.ndarray, folds: np.ndarray, *, k: int, seed: int,
                   near_duplicate_bits: int) -> FoldsSummary:
    row_folds = folds[grouping.component]
    per_species: dict[str, list[int]] = {}
    for sp in sorted(set(species.tolist())):
        per_species[sp] = np.bincount(row_folds[species == sp], minlength=k).astype(int).tolist()
    few = sorted(sp for sp, comps in grouping.by_species().items() if len(comps) < k)
    return FoldsSummary(
        mode=grouping.mode,
        k=k,
        seed=seed,
        near_duplicate_bits=near_duplicate_bits,
        images=len(row_folds),
        groups=grouping.n_components,
        fold_images=np.bincount(row_folds, minlength=k).astype(int).tolist(),
        fold_groups=np.bincount(folds, minlength=k).astype(int).tolist(),
        per_species=per_species,
        species_fewer_groups_than_k=few,
    )


def _read_splits_json(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / SPLITS
    return read_json(path) if path.exists() else {}


# ---------------------------------------------------------------- folder API


def split_dataset(
    folder: str | Path,
    *,
    by: str = "collector",
    test_fraction: float = 0.3,
    val_fraction: float = 0.0,
    seed: int = 0,
    folds: int | None = None,
    near_duplicate_bits: int = NEAR_DUPLICATE_BITS,
) -> SplitSummary:
    """Write the ``split`` column of a dataset's manifest and ``splits.json``.

    With ``folds=K`` the same groups are also dealt into K folds (``fold`` column) for
    cross-validation; the train/test split is still written so the default pipeline works.
    A previous ``folds`` record is kept when folds are not recomputed, because the fold
    column does not depend on the split.
    """
    frame = load_manifest(folder)
    grouping = build_grouping(frame, by, near_duplicate_bits=near_duplicate_bits)
    labels, unsplittable = split_components(
        grouping, test_fraction=test_fraction, val_fraction=val_fraction, seed=seed
    )
    row_labels = labels[grouping.component]
    frame["split"] = pd.Series(row_labels, index=frame.index, dtype=object)
    species = species_labels(frame)

    folds_info: dict[str, Any] | None = None
    if folds is not None:
        fold_of = fold_components(grouping, k=folds, seed=seed)
        frame["fold"] = fold_of[grouping.component].astype(np.int64)
        folds_info = _folds_summary(
            grouping, species, fold_of, k=folds, seed=seed, near_duplicate_bits=near_duplicate_bits
        ).to_dict()
    elif "fold" in frame.columns:
        folds_info = _read_splits_json(folder).get("folds")

    save_manifest(folder, frame)
    counts = {name: int((row_labels == name).sum()) for name in SPLIT_NAMES}
    summary = SplitSummary(
        mode=by,
        seed=seed,
        test_fraction=test_fraction,
        val_fraction=val_fraction,
        near_duplicate_bits=near_duplicate_bits,
        images=len(frame),
        species=len(set(species.tolist())),
        groups=grouping.n_components,
        groups_before_merge=grouping.groups_before_merge,
        cross_species_groups=grouping.cross_species,
        unknown_collector=grouping.unknown_collector,
        counts=counts,
        achieved={name: _ratio(n, len(frame)) for name, n in counts.items()},
        per_species=_per_species_counts(species, row_labels),
        unsplittable_species=unsplittable,
        manifest_hash=manifest_hash(folder),
        folds=folds_info,
    )
    write_json(Path(folder) / SPLITS, summary.to_dict())
    return summary


def make_folds(
    folder: str | Path, *, by: str = "collector", k: int = 5, seed: int = 0, near_duplicate_bits: int = NEAR_DUPLICATE_BITS
) -> FoldsSummary:
    """Write a group-aware, species-stratified ``fold`` column (0..k-1) and record it under
    ``"folds"`` in ``splits.json`` (other keys of an existing file are kept)."""
    frame = load_manifest(folder)
    grouping = build_grouping(frame, by, near_duplicate_bits=near_duplicate_bits)
    fold_of = fold_components(grouping, k=k, seed=seed)
    frame["fold"] = fold_of[grouping.component].astype(np.int64)
    save_manifest(folder, frame)
    summary = _folds_summary(
        grouping, species_labels(frame), fold_of, k=k, seed=seed, near_duplicate_bits=near_duplicate_bits
    )
    data = _read_splits_json(folder)
    data.update(
        herbid_version=herbid.__version__, manifest_hash=manifest_hash(folder), folds=summary.to_dict()
    )
    write_json(Path(folder) / SPLITS, data)
    return summary
