"""Check a split for the leaks the paper's "Avoiding bias" rules exist to prevent.

A split can go wrong after the fact (a manifest edited by hand, images added, a split
made by another tool, a different grouping mode). :func:`audit_dataset` re-derives, from
the manifest alone, whether any group, identical file or near-identical scan sits on both
sides, and whether every evaluated species was trained on. A clean audit is what makes
an accuracy number comparable to the paper's. :func:`dataset_stats` gives the headline
numbers of a dataset (images, species, collectors...) for reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from herbid.data.dataset_folder import SPLITS, DatasetError, load_manifest, read_json
from herbid.data.names import normalize_collector
from herbid.data.phash import NEAR_DUPLICATE_BITS, hamming, hash_words, near_duplicate_pairs
from herbid.data.splits import SPLIT_NAMES, TEST, TRAIN, VAL, group_keys, text_column

#: Examples of each kind of leak kept in the audit (enough to debug, small enough to read).
MAX_EXAMPLES = 10
DEFAULT_MODE = "collector"


def _split_counts(splits: pd.Series) -> dict[str, int]:
    counts = splits.value_counts()
    ordered = [s for s in SPLIT_NAMES if s in counts.index] + sorted(set(counts.index) - set(SPLIT_NAMES))
    return {str(s): int(counts[s]) for s in ordered}


def _group_leaks(keys: pd.Series, splits: pd.Series) -> dict[str, Any]:
    """Groups with images in train and test, and groups with images in val and elsewhere."""
    table = pd.crosstab(keys.rename("group"), splits.rename("split"))
    train = table[TRAIN] if TRAIN in table else pd.Series(0, index=table.index)
    test = table[TEST] if TEST in table else pd.Series(0, index=table.index)
    val = table[VAL] if VAL in table else pd.Series(0, index=table.index)
    both = (train > 0) & (test > 0)
    val_other = (val > 0) & ((train > 0) | (test > 0))

    def examples(mask: pd.Series) -> list[dict[str, Any]]:
        rows = table[mask].head(MAX_EXAMPLES)
        return [
            {"group": str(key), "images": {str(s): int(n) for s, n in row.items() if n}}
            for key, row in rows.iterrows()
        ]

    return {
        "groups": int(len(table)),
        "groups_in_both": int(both.sum()),
        "groups_in_val_and_other": int(val_other.sum()),
        "examples_both": examples(both),
        "examples_val": examples(val_other),
    }


def _identical_leaks(frame: pd.DataFrame, splits: pd.Series) -> tuple[int, list[dict[str, Any]]]:
    """Distinct ``sha256`` values whose images sit in more than one split."""
    table = pd.DataFrame(
        {"sha256": text_column(frame, "sha256"), "split": splits, "image_id": text_column(frame, "image_id")}
    ).dropna(subset=["sha256"])
    spread = table.groupby("sha256")["split"].nunique()
    leaking = spread[spread > 1].index
    examples = []
    for sha in list(leaking)[:MAX_EXAMPLES]:
        rows = table[table["sha256"] == sha]
        examples.append(
            {"sha256": sha, "image_ids": rows["image_id"].tolist(), "splits": rows["split"].tolist()}
        )
    return int(len(leaking)), examples


def _near_duplicate_leaks(
    frame: pd.DataFrame, splits: pd.Series, max_bits: int
) -> tuple[int, list[dict[str, Any]]]:
    """Image pairs in different splits whose perceptual hashes differ by ≤ ``max_bits`` bits
    (identical files count too: their distance is 0)."""
    hashes, valid = hash_words(text_column(frame, "phash").tolist())
    rows = np.flatnonzero(valid)
    labels = splits.to_numpy(dtype=object)[rows]
    pairs = near_duplicate_pairs(hashes[rows], max_bits, labels)
    ids = text_column(frame, "image_id").to_numpy(dtype=object)[rows]
    examples = []
    for i, j in pairs[:MAX_EXAMPLES]:
        distance = int(hamming(hashes[rows[i]], hashes[rows[j]]))
        examples.append(
            {"image_ids": [ids[i], ids[j]], "splits": [labels[i], labels[j]], "distance": distance}
        )
    return int(len(pairs)), examples


def _class_counts(species: pd.Series, splits: pd.Series) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for split in _split_counts(splits):
        counts = species[splits == split].value_counts().sort_index()
        out[split] = {str(sp): int(n) for sp, n in counts.items()}
    return out


def audit_frame(
    frame: pd.DataFrame, *, by: str = DEFAULT_MODE, near_duplicate_bits: int = NEAR_DUPLICATE_BITS
) -> dict[str, Any]:
    """The audit of an in-memory manifest (see :func:`audit_dataset` for the keys).

    Rows without a split are left out of every check and counted as ``unassigned``.
    """
    all_splits = text_column(frame, "split")
    assigned = all_splits.notna()
    if not assigned.any():
        raise DatasetError("the manifest has no split yet; run `herbid dataset split` first")
    sub = frame[assigned.to_numpy()].reset_index(drop=True)
    splits = all_splits[assigned].reset_index(drop=True)
    species = text_column(sub, "scientificName")

    groups = _group_leaks(group_keys(sub, by), splits)
    identical, identical_examples = _identical_leaks(sub, splits)
    near, near_examples = _near_duplicate_leaks(sub, splits, near_duplicate_bits)
    trained = set(species[splits == TRAIN].dropna())
    missing = sorted(set(species[splits != TRAIN].dropna()) - trained)
    return {
        "mode": by,
        "near_duplicate_bits": near_duplicate_bits,
        "images": int(len(frame)),
        "unassigned": int((~assigned).sum()),
        "splits": _split_counts(splits),
        "groups": groups["groups"],
        "groups_in_both": groups["groups_in_both"],
        "groups_in_val_and_other": groups["groups_in_val_and_other"],
        "identical_images_across": identical,
        "near_duplicates_across": near,
        "species_missing_from_train": missing,
        "leak_free": not (groups["groups_in_both"] or groups["groups_in_val_and_other"] or identical or near),
        "class_counts": _class_counts(species, splits),
        "examples": {
            "groups_in_both": groups["examples_both"],
            "groups_in_val_and_other": groups["examples_val"],
            "identical_images_across": identical_examples,
            "near_duplicates_across": near_examples,
        },
    }


def _recorded_mode(folder: str | Path) -> str:
    path = Path(folder) / SPLITS
    if not path.exists():
        return DEFAULT_MODE
    data = read_json(path)
    return data.get("mode") or (data.get("folds") or {}).get("mode") or DEFAULT_MODE


def audit_dataset(
    folder: str | Path, *, by: str | None = None, near_duplicate_bits: int = NEAR_DUPLICATE_BITS
) -> dict[str, Any]:
    """Audit a split dataset folder for train/test leakage. JSON-able.

    Groups are formed with ``by`` or, by default, the mode recorded in ``splits.json``
    (``collector`` if none): checking a specimen split with collector groups is allowed and
    shows what a stricter protocol would have moved. Keys: ``mode``,
    ``near_duplicate_bits``, ``images``, ``unassigned``, ``splits``, ``groups``,
    ``groups_in_both`` (train and test), ``groups_in_val_and_other``,
    ``identical_images_across`` (sha256 values in > 1 split), ``near_duplicates_across``
    (cross-split image pairs within ``near_duplicate_bits`` of phash),
    ``species_missing_from_train`` (species in test or val without train images),
    ``leak_free``, ``class_counts`` {split: {species: n}} and ``examples`` (≤ 10 per leak).
    """
    frame = load_manifest(folder)
    return audit_frame(frame, by=by or _recorded_mode(folder), near_duplicate_bits=near_duplicate_bits)


def _distinct(values: pd.Series) -> int:
    return int(values.dropna().nunique())


def frame_stats(frame: pd.DataFrame) -> dict[str, Any]:
    """Headline numbers of an in-memory manifest (see :func:`dataset_stats`)."""
    species = text_column(frame, "scientificName")
    per_species = species.dropna().value_counts()
    collectors = pd.Series([normalize_collector(r) for r in text_column(frame, "recordedBy")], dtype=object)
    stats: dict[str, Any] = {
        "images": int(len(frame)),
        "species": int(len(per_species)),
        "images_per_species": {
            "min": int(per_species.min()) if len(per_species) else 0,
            "median": float(per_species.median()) if len(per_species) else 0.0,
            "max": int(per_species.max()) if len(per_species) else 0,
        },
        "collectors": _distinct(collectors),
        "institutions": _distinct(text_column(frame, "institutionCode")),
        "genera": _distinct(text_column(frame, "genus")),
        "families": _distinct(text_column(frame, "family")),
    }
    splits = text_column(frame, "split")
    if splits.notna().any():
        stats["splits"] = _split_counts(splits.dropna())
        if splits.isna().any():
            stats["splits"]["unassigned"] = int(splits.isna().sum())
    if "fold" in frame.columns and frame["fold"].notna().any():
        folds = frame["fold"].dropna().astype(int).value_counts().sort_index()
        stats["folds"] = {str(f): int(n) for f, n in folds.items()}
    return stats


def dataset_stats(folder: str | Path) -> dict[str, Any]:
    """Headline numbers of a dataset folder, JSON-able: ``images``, ``species``,
    ``images_per_species`` {min, median, max}, ``collectors`` (distinct normalised primary
    collectors), ``institutions``, ``genera``, ``families``, and ``splits`` / ``folds``
    (images per split / fold) when the dataset has them."""
    return frame_stats(load_manifest(folder))
