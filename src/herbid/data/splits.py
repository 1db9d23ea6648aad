"""Bias-free, species-stratified train/test(/val) splits and K folds.

Carranza-Rojas et al. 2017 ("Avoiding bias") kept sheets of the same species collected by
the same collector out of training *and* testing at once (H255, H1K), kept all images of
one specimen together (CR), and all images of one observation together (PlantCLEF). A
random per-image split lets a network recognise the collector's pressing style, label or
the very same specimen instead of the species, and inflates accuracy. This module makes
those rules executable:

* a *mode* (:data:`GROUP_MODES`) says which images form a group that must not straddle;
* in every mode, byte-identical images (same ``sha256``) and, within a species, images
  with the same perceptual hash are merged into one group too (a union-find), so a
  duplicate scan filed under two collectors cannot leak;
* whole groups are then assigned to test per species (stratified), aiming at the
  requested fraction of that species' images.

The pure functions :func:`assign_splits` and :func:`assign_folds` work on a DataFrame in
memory (the training code reuses them); :func:`split_dataset` and :func:`make_folds`
wrap them for a dataset folder and record what they did in ``splits.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import herbid
from herbid.data.folder import (
    SPLITS,
    load_manifest,
    manifest_hash,
    read_json,
    save_manifest,
    write_json,
)
from herbid.data.names import normalize_collector
from herbid.data.phash import NEAR_DUPLICATE_BITS, hash_words, near_duplicate_pairs
from herbid.errors import InvalidOption

TRAIN, TEST, VAL = "train", "test", "val"
SPLIT_NAMES: tuple[str, ...] = (TRAIN, TEST, VAL)

#: Species with at most this many groups get an exhaustive subset search (2**12 subsets);
#: above it a seeded greedy fill is already within one small group of the target.
EXACT_SEARCH_MAX_GROUPS = 12
#: How far the running over/undershoot of earlier species may move one species' target,
#: as a fraction of that target (see :func:`_stratified_pick`).
DIFFUSION_LIMIT = 0.5
#: Extra columns that identify an observation (PlantCLEF's ``ObservationId``, Darwin Core
#: ``eventID``), in order of preference.
OBSERVATION_COLUMNS: tuple[str, ...] = ("observationID", "ObservationId", "eventID")

GroupKeyFn = Callable[[pd.DataFrame], pd.Series]


# --------------------------------------------------------------------------- group keys


def _clean(value: Any) -> str | None:
    if value is None:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    text = str(value).strip()
    return text or None


def text_column(frame: pd.DataFrame, column: str) -> pd.Series:
    """A column as Python strings with blanks and NaN as ``None`` (all ``None`` if absent).

    Parquet round-trips and pandas' string dtype turn missing values into NaN; grouping
    code wants one spelling of "missing".
    """
    if column not in frame.columns:
        return pd.Series([None] * len(frame), index=frame.index, dtype=object)
    return pd.Series([_clean(v) for v in frame[column].tolist()], index=frame.index, dtype=object)


def _specimen_key(occurrence: str | None, institution: str | None, catalog: str | None,
                  source: str | None, image_id: str) -> str:
    if occurrence:
        return f"occurrence:{occurrence}"
    if catalog:
        # A catalogue number is only unique within its institution (or, lacking one, source).
        return f"catalog:{institution or source or ''}|{catalog}"
    return f"image:{image_id}"


def _image_ids(frame: pd.DataFrame) -> list[str]:
    ids = text_column(frame, "image_id").tolist()
    return [i if i is not None else f"row{n}" for n, i in enumerate(ids)]


def specimen_keys(frame: pd.DataFrame) -> pd.Series:
    """One key per physical specimen: ``occurrenceID``, else institution + catalogue number,
    else the image itself (an image we cannot tie to a specimen is its own specimen)."""
    keys = [
        _specimen_key(o, i, c, s, m)
        for o, i, c, s, m in zip(
            text_column(frame, "occurrenceID"),
            text_column(frame, "institutionCode"),
            text_column(frame, "catalogNumber"),
            text_column(frame, "source"),
            _image_ids(frame),
        )
    ]
    return pd.Series(keys, index=frame.index, dtype=object)


def collector_keys(frame: pd.DataFrame) -> pd.Series:
    """The paper's H255/H1K rule: species + normalised primary collector.

    The species is part of the key because the paper forbids the same *species* from the
    same collector on both sides; one collector's sheets of other species may go anywhere.
    Sheets whose collector is unknown cannot be tied to anyone, so each specimen is its own
    group (see :func:`unknown_collector_mask`).
    """
    species = text_column(frame, "scientificName")
    collectors = [normalize_collector(raw) for raw in text_column(frame, "recordedBy")]
    specimens = specimen_keys(frame)
    keys = [
        f"collector:{sp}|{coll}" if coll else spec
        for sp, coll, spec in zip(species, collectors, specimens)
    ]
    return pd.Series(keys, index=frame.index, dtype=object)


def observation_keys(frame: pd.DataFrame) -> pd.Series:
    """The paper's PlantCLEF rule: all images of one observation together.

    Uses the first of :data:`OBSERVATION_COLUMNS` that has a value on the row; herbarium
    manifests rarely carry one, so rows without it fall back to the specimen key (for a
    herbarium sheet the specimen *is* the observation).
    """
    specimens = specimen_keys(frame).tolist()
    columns = [text_column(frame, c).tolist() for c in OBSERVATION_COLUMNS if c in frame.columns]
    keys = []
    for row, spec in enumerate(specimens):
        found = next((col[row] for col in columns if col[row] is not None), None)
        keys.append(f"observation:{found}" if found else spec)
    return pd.Series(keys, index=frame.index, dtype=object)


def image_keys(frame: pd.DataFrame) -> pd.Series:
    """Every image its own group (a plain stratified split, plus duplicate merging)."""
    return pd.Series([f"image:{i}" for i in _image_ids(frame)], index=frame.index, dtype=object)


@dataclass(frozen=True)
class GroupMode:
    """How a split mode groups images.

    ``key`` is the grouping the paper describes (and the one the audit checks);
    ``together`` are finer keys that must not straddle either (one specimen's images stay
    together even when its collector field is inconsistent between them).
    """

    key: GroupKeyFn
    together: tuple[GroupKeyFn, ...] = ()
    description: str = ""


#: Registry of split modes. Add a mode by adding an entry, not a branch.
GROUP_MODES: dict[str, GroupMode] = {
    "collector": GroupMode(collector_keys, (specimen_keys,), "species + primary collector (H255/H1K)"),
    "specimen": GroupMode(specimen_keys, (), "one physical specimen (CR)"),
    "observation": GroupMode(observation_keys, (specimen_keys,), "one observation (PlantCLEF)"),
    "none": GroupMode(image_keys, (), "each image alone"),
}


def group_mode(by: str) -> GroupMode:
    """The registered mode called ``by``; a clear error naming the choices otherwise."""
    try:
        return GROUP_MODES[by]
    except KeyError:
        raise InvalidOption(f"unknown split mode {by!r}; choose one of {sorted(GROUP_MODES)}") from None


def group_keys(frame: pd.DataFrame, by: str) -> pd.Series:
    """The mode's group key per row (before duplicate merging)."""
    return group_mode(by).key(frame)


def unknown_collector_mask(frame: pd.DataFrame) -> pd.Series:
    """Rows whose ``recordedBy`` gives no collector (empty, ``s.n.``, ``unknown``...)."""
    values = [normalize_collector(raw) is None for raw in text_column(frame, "recordedBy")]
    return pd.Series(values, index=frame.index, dtype=bool)


# ----------------------------------------------------------------------- union-find


class _UnionFind:
    """Disjoint sets over row numbers (path halving, union to the smaller root)."""

    def __init__(self, size: int) -> None:
        self.parent = list(range(size))

    def find(self, item: int) -> int:
        parent = self.parent
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def union_equal(self, keys: pd.Series | list[Any]) -> None:
        """Join rows whose key is equal; ``None`` keys join nothing."""
        codes, _ = pd.factorize(pd.Series(list(keys), dtype=object))
        order = np.argsort(codes, kind="stable")
        ordered = codes[order]
        same = (ordered[1:] == ordered[:-1]) & (ordered[1:] >= 0)
        for k in np.nonzero(same)[0]:
            self.union(int(order[k]), int(order[k + 1]))

    def roots(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)


# ------------------------------------------------------------------------- grouping


@dataclass(frozen=True)
class Grouping:
    """Leakage-safe units ("components"): sets of rows that must share a split.

    Components are numbered by their smallest ``image_id``, so the numbering (and thus a
    seeded assignment) does not depend on the order of rows in the manifest. Each
    component is stratified under its *primary* species (the one most of its images carry;
    only duplicates labelled with two names make a component span species).
    """

    mode: str
    component: np.ndarray
    sizes: np.ndarray
    primary_species: np.ndarray
    groups_before_merge: int
    unknown_collector: int
    cross_species: int

    @property
    def n_components(self) -> int:
        return len(self.sizes)

    def by_species(self) -> dict[str, np.ndarray]:
        """Component ids per primary species, ascending."""
        out: dict[str, np.ndarray] = {}
        for species in sorted(set(self.primary_species.tolist())):
            out[species] = np.nonzero(self.primary_species == species)[0]
        return out


def _species(frame: pd.DataFrame) -> np.ndarray:
    species = text_column(frame, "scientificName")
    if species.isna().any():
        raise InvalidOption(f"{int(species.isna().sum())} rows have no scientificName; cannot stratify")
    return species.to_numpy(dtype=object)


def _merge_near_duplicates(uf: _UnionFind, species: np.ndarray, frame: pd.DataFrame, max_bits: int) -> None:
    """Join images of one species whose perceptual hashes are equal (or ≤ ``max_bits`` apart)."""
    hashes, valid = hash_words(text_column(frame, "phash").tolist())
    if max_bits <= 0:
        keys = [f"{sp}|{tuple(h)}" if ok else None for sp, h, ok in zip(species, hashes.tolist(), valid)]
        uf.union_equal(keys)
        return
    for sp in sorted(set(species[valid].tolist())):
        rows = np.nonzero(valid & (species == sp))[0]
        for i, j in near_duplicate_pairs(hashes[rows], max_bits):
            uf.union(int(rows[i]), int(rows[j]))


def build_grouping(frame: pd.DataFrame, by: str = "collector", *, near_duplicate_bits: int = NEAR_DUPLICATE_BITS) -> Grouping:
    """Group rows by the mode's keys, then merge duplicates, and number the components.

    ``near_duplicate_bits`` > 0 also merges images of one species whose perceptual hashes
    differ by at most that many bits (the default merges identical hashes only).
    """
    mode = group_mode(by)
    species = _species(frame)
    uf = _UnionFind(len(frame))
    primary_keys = mode.key(frame)
    uf.union_equal(primary_keys)
    for extra in mode.together:
        uf.union_equal(extra(frame))
    uf.union_equal(text_column(frame, "sha256"))
    _merge_near_duplicates(uf, species, frame, near_duplicate_bits)

    roots = uf.roots()
    table = pd.DataFrame({"root": roots, "image_id": _image_ids(frame), "species": species})
    first_id = table.groupby("root")["image_id"].min().sort_values(kind="stable")
    number = pd.Series(np.arange(len(first_id)), index=first_id.index)
    component = number.loc[roots].to_numpy()
    table["component"] = component

    per = table.groupby(["component", "species"]).size().reset_index(name="n")
    per = per.sort_values(["component", "n", "species"], ascending=[True, False, True], kind="stable")
    primary = per.drop_duplicates("component").set_index("component")["species"].sort_index()
    sizes = np.bincount(component, minlength=len(first_id))
    return Grouping(
        mode=by,
        component=component,
        sizes=sizes,
        primary_species=primary.to_numpy(dtype=object),
        groups_before_merge=int(primary_keys.nunique()),
        unknown_collector=int(unknown_collector_mask(frame).sum()),
        cross_species=int((per.groupby("component").size() > 1).sum()),
    )


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
    species = _species(frame)

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
        grouping, _species(frame), fold_of, k=k, seed=seed, near_duplicate_bits=near_duplicate_bits
    )
    data = _read_splits_json(folder)
    data.update(
        herbid_version=herbid.__version__, manifest_hash=manifest_hash(folder), folds=summary.to_dict()
    )
    write_json(Path(folder) / SPLITS, data)
    return summary
