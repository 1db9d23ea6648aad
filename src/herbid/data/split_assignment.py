"""Dealing leakage-safe components into train/test(/val) and K folds, stratified per species.

Whole components (:class:`~herbid.data.grouping.Grouping`) are assigned, never single
images: to test per species, aiming at the requested fraction of that species' images
(:func:`split_components`), or to the fold holding fewest of the species' images
(:func:`fold_components`). :func:`assign_splits` and :func:`assign_folds` do both steps
for a DataFrame in memory (the training code reuses them).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from herbid.data.grouping import Grouping, build_grouping
from herbid.data.phash import NEAR_DUPLICATE_BITS
from herbid.errors import InvalidOption

TRAIN, TEST, VAL = "train", "test", "val"
SPLIT_NAMES: tuple[str, ...] = (TRAIN, TEST, VAL)

#: Species with at most this many groups get an exhaustive subset search (2**12 subsets);
#: above it a seeded greedy fill is already within one small group of the target.
EXACT_SEARCH_MAX_GROUPS = 12
#: How far the running over/undershoot of earlier species may move one species' target,
#: as a fraction of that target (see :func:`_stratified_pick`).
DIFFUSION_LIMIT = 0.5


# ---------------------------------------------------------------- choosing groups


def _check_fractions(test_fraction: float, val_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise InvalidOption(f"test_fraction must be between 0 and 1, got {test_fraction}")
    if val_fraction < 0.0 or test_fraction + val_fraction >= 1.0:
        raise InvalidOption(f"val_fraction must be >= 0 and leave room for train, got {val_fraction}")


def _exact_choice(sizes: np.ndarray, target: float, rng: np.random.Generator, min_chosen: int) -> np.ndarray:
    """The subset closest to ``target`` (ties broken at random), leaving one group out."""
    k = len(sizes)
    masks = ((np.arange(2**k)[:, None] >> np.arange(k)[None, :]) & 1).astype(bool)
    chosen_count = masks.sum(axis=1)
    allowed = (chosen_count >= min_chosen) & (chosen_count <= k - 1)
    cost = np.abs(masks.astype(np.int64) @ sizes.astype(np.int64) - target)
    cost[~allowed] = np.inf
    best = np.flatnonzero(cost <= cost.min() + 1e-9)
    return masks[best[rng.integers(len(best))]]


def _greedy_choice(sizes: np.ndarray, target: float, rng: np.random.Generator, min_chosen: int) -> np.ndarray:
    """Seeded greedy fill: take groups in random order while they fit under ``target``,
    then the one group that best closes the remaining gap. Always leaves one group out."""
    k = len(sizes)
    chosen = np.zeros(k, dtype=bool)
    total = 0
    for i in rng.permutation(k):
        if chosen.sum() < k - 1 and total + sizes[i] <= target:
            chosen[i] = True
            total += int(sizes[i])
    rest = np.flatnonzero(~chosen)
    if len(rest) > 1:
        gaps = np.abs(total + sizes[rest] - target)
        best = rest[np.argmin(gaps)]
        if gaps.min() < abs(total - target) or chosen.sum() < min_chosen:
            chosen[best] = True
    return chosen


def choose_groups(
    sizes: np.ndarray, target: float, rng: np.random.Generator, *, min_chosen: int = 0
) -> np.ndarray:
    """Pick whole groups whose image total is as close as possible to ``target``.

    At least ``min_chosen`` groups are picked and at least one is always left over (so a
    species keeps training images). Exhaustive for few groups, greedy beyond.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if len(sizes) < 2:
        return np.zeros(len(sizes), dtype=bool)
    if len(sizes) <= EXACT_SEARCH_MAX_GROUPS:
        return _exact_choice(sizes, target, rng, min_chosen)
    return _greedy_choice(sizes, target, rng, min_chosen)


def _species_order(names: list[str], rng: np.random.Generator) -> list[str]:
    ordered = sorted(names)
    return [ordered[i] for i in rng.permutation(len(ordered))]


def _stratified_pick(
    candidates: dict[str, np.ndarray],
    totals: dict[str, int],
    sizes: np.ndarray,
    fraction: float,
    order: list[str],
    rng: np.random.Generator,
    *,
    min_chosen: int,
) -> list[int]:
    """Per species, the components to move out of train so about ``fraction`` of it moves.

    Whole groups rarely hit a species' target exactly, and with many small species the
    rounding would bias the overall ratio (4 equal groups give 25 % for both 70/30 and
    80/20). So the running surplus or deficit of earlier species nudges the next species'
    target (error diffusion), bounded to ±:data:`DIFFUSION_LIMIT` of that target so that
    no species is sacrificed to the overall number. Species are visited in seeded order.
    """
    picked: list[int] = []
    carry = 0.0
    for species in order:
        comps = candidates.get(species)
        if comps is None or len(comps) < 2:
            continue
        base = fraction * totals[species]
        target = float(np.clip(base + carry, (1 - DIFFUSION_LIMIT) * base, (1 + DIFFUSION_LIMIT) * base))
        chosen = choose_groups(sizes[comps], target, rng, min_chosen=min_chosen)
        picked.extend(int(c) for c in comps[chosen])
        carry += base - float(sizes[comps[chosen]].sum())
    return picked


def split_components(
    grouping: Grouping, *, test_fraction: float, val_fraction: float, seed: int
) -> tuple[np.ndarray, list[str]]:
    """A split name per component, and the species that could not be split.

    Every species with ≥ 2 groups gets at least one test group (so every such species is
    evaluated) and keeps at least one train group. Val is carved from train the same way,
    aiming at ``val_fraction`` of the species' images, but may be empty for a species.
    """
    _check_fractions(test_fraction, val_fraction)
    rng = np.random.default_rng(seed)
    labels = np.full(grouping.n_components, TRAIN, dtype=object)
    by_species = grouping.by_species()
    totals = {sp: int(grouping.sizes[c].sum()) for sp, c in by_species.items()}
    unsplittable = sorted(sp for sp, comps in by_species.items() if len(comps) < 2)
    order = _species_order(list(by_species), rng)

    test = _stratified_pick(by_species, totals, grouping.sizes, test_fraction, order, rng, min_chosen=1)
    labels[test] = TEST
    if val_fraction > 0:
        remaining = {sp: c[labels[c] == TRAIN] for sp, c in by_species.items()}
        val = _stratified_pick(remaining, totals, grouping.sizes, val_fraction, order, rng, min_chosen=0)
        labels[val] = VAL
    return labels, unsplittable


def fold_components(grouping: Grouping, *, k: int, seed: int) -> np.ndarray:
    """A fold number per component: per species, largest groups first (seeded order among
    equals) into the fold holding fewest of that species' images, ties to the globally
    lightest fold, then round-robin, so folds balance both per species and overall."""
    if k < 2:
        raise InvalidOption(f"folds must be at least 2, got {k}")
    rng = np.random.default_rng(seed)
    sizes = grouping.sizes
    folds = np.full(grouping.n_components, -1, dtype=np.int64)
    global_load = np.zeros(k, dtype=np.int64)
    turn = 0
    by_species = grouping.by_species()
    for species in _species_order(list(by_species), rng):
        comps = by_species[species]
        comps = comps[rng.permutation(len(comps))]
        comps = comps[np.argsort(-sizes[comps], kind="stable")]
        load = np.zeros(k, dtype=np.int64)
        for comp in comps:
            rotation = (np.arange(k) - turn) % k
            fold = int(np.lexsort((rotation, global_load, load))[0])
            folds[comp] = fold
            load[fold] += sizes[comp]
            global_load[fold] += sizes[comp]
            turn += 1
    return folds


# ------------------------------------------------------------- in-memory API


def assign_splits(
    frame: pd.DataFrame,
    *,
    by: str = "collector",
    test_fraction: float = 0.3,
    val_fraction: float = 0.0,
    seed: int = 0,
    near_duplicate_bits: int = NEAR_DUPLICATE_BITS,
) -> pd.Series:
    """``"train"``/``"test"``/``"val"`` per row of ``frame`` (same index), group-aware and
    stratified by ``scientificName``. Deterministic for a given ``seed``."""
    grouping = build_grouping(frame, by, near_duplicate_bits=near_duplicate_bits)
    labels, _ = split_components(grouping, test_fraction=test_fraction, val_fraction=val_fraction, seed=seed)
    return pd.Series(labels[grouping.component], index=frame.index, name="split", dtype=object)


def assign_folds(
    frame: pd.DataFrame, *, by: str = "collector", k: int = 5, seed: int = 0, near_duplicate_bits: int = NEAR_DUPLICATE_BITS
) -> pd.Series:
    """Fold number ``0..k-1`` per row of ``frame``: each group in exactly one fold."""
    grouping = build_grouping(frame, by, near_duplicate_bits=near_duplicate_bits)
    folds = fold_components(grouping, k=k, seed=seed)
    return pd.Series(folds[grouping.component], index=frame.index, name="fold", dtype="int64")
