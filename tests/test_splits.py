"""Bias-free splits, folds and the leakage audit, on small synthetic manifests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import herbid
from herbid.data import splits as splits_module
from herbid.data.audit import audit_dataset, audit_frame, dataset_stats
from herbid.data.dataset_folder import SPLITS, load_manifest, manifest_hash, save_manifest
from herbid.data.names import normalize_collector
from herbid.data.phash import near_duplicate_pairs
from herbid.data.splits import GROUP_MODES, assign_folds, assign_splits, build_grouping, make_folds, split_dataset

SPECIES = [f"Genus{i // 2} species{i}" for i in range(6)]
# Each species has four collectors, spelled in ways normalize_collector must unify.
COLLECTORS = [["A. Smith", "Jones, B.", "C. D. Brown & E. Green", "F. Müller"]] * 6
SOLO = "Solo single"
DUP_SHA = "d" * 64  # the same file filed under Smith and Jones in species 0
SAME_PHASH_SPECIES = SPECIES[1]  # Smith's and Jones's first sheets have one phash
CLOSE_PHASH_SPECIES = SPECIES[2]  # Smith's and Jones's first sheets are 3 bits apart


def _random_hashes(count: int, seed: int = 7) -> list[int]:
    """256-bit hashes (as herbid stores) at least 64 bits apart, so only planted ones collide."""
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    while len(chosen) < count:
        value = int.from_bytes(rng.bytes(32), "big")
        if all(bin(value ^ other).count("1") >= 64 for other in chosen):
            chosen.append(value)
    return chosen


def synthetic_manifest() -> pd.DataFrame:
    """6 species × 4 collectors × 3 sheets, 2 unknown-collector sheets per species, one
    species with a single collector, one duplicated file and two near-duplicate scans."""
    rows: list[dict[str, object]] = []

    def add(species: str, collector: str | None, family: str) -> dict[str, object]:
        n = len(rows)
        row = {
            "image_id": f"img{n:04d}",
            "occurrenceID": f"occ{n}",
            "catalogNumber": f"C{n}",
            "institutionCode": ["MO", "NY", "CR"][n % 3],
            "scientificName": species,
            "genus": species.split()[0],
            "family": family,
            "recordedBy": collector,
            "source": "synthetic",
            "sha256": f"{n:064x}",
        }
        rows.append(row)
        return row

    for s, species in enumerate(SPECIES):
        family = "Fam0" if s < 4 else "Fam1"
        for collector in COLLECTORS[s]:
            for _ in range(3):
                add(species, collector, family)
        add(species, None, family)
        add(species, "s.n.", family)
    for _ in range(3):
        add(SOLO, "Z. Solo", "Fam1")

    hashes = _random_hashes(len(rows))
    for row, value in zip(rows, hashes):
        row["phash"] = f"{value:064x}"
    first = {  # (species, collector) -> first row of that group
        (r["scientificName"], r["recordedBy"]): r for r in reversed(rows)
    }
    first[(SPECIES[0], "Jones, B.")]["sha256"] = first[(SPECIES[0], "A. Smith")]["sha256"] = DUP_SHA
    first[(SPECIES[0], "Jones, B.")]["phash"] = first[(SPECIES[0], "A. Smith")]["phash"]
    first[(SAME_PHASH_SPECIES, "Jones, B.")]["phash"] = first[(SAME_PHASH_SPECIES, "A. Smith")]["phash"]
    base = int(first[(CLOSE_PHASH_SPECIES, "A. Smith")]["phash"], 16)
    first[(CLOSE_PHASH_SPECIES, "Jones, B.")]["phash"] = f"{base ^ 0b10101:064x}"
    frame = pd.DataFrame(rows)
    frame["split"] = None
    return frame


def _bits(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    folder = tmp_path / "ds"
    save_manifest(folder, synthetic_manifest())
    return folder


def _collector_groups(frame: pd.DataFrame) -> pd.Series:
    known = frame["recordedBy"].map(normalize_collector)
    return frame["scientificName"] + "|" + known.fillna("?" + frame["image_id"])


def _straddling(frame: pd.DataFrame, keys: pd.Series, column: str = "split") -> list[str]:
    spread = frame.groupby(keys)[column].nunique()
    return sorted(spread[spread > 1].index)


def test_fixture_has_the_planted_cases() -> None:
    frame = synthetic_manifest()
    assert len(frame) == 6 * 14 + 3
    assert (frame["sha256"] == DUP_SHA).sum() == 2
    assert frame.groupby("scientificName")["phash"].nunique()[SAME_PHASH_SPECIES] == 13
    close = frame[frame["scientificName"] == CLOSE_PHASH_SPECIES]["phash"].tolist()
    distances = [_bits(a, b) for i, a in enumerate(close) for b in close[i + 1 :]]
    assert sorted(distances)[0] == 3 and sorted(distances)[1] >= 16


def test_collector_split_keeps_groups_and_duplicates_together(dataset: Path) -> None:
    summary = split_dataset(dataset, by="collector", test_fraction=0.3, seed=0)
    frame = load_manifest(dataset)
    assert set(frame["split"]) == {"train", "test"}
    assert _straddling(frame, _collector_groups(frame)) == []
    assert frame.loc[frame["sha256"] == DUP_SHA, "split"].nunique() == 1
    assert _straddling(frame, frame["scientificName"] + "|" + frame["phash"]) == []
    # duplicate merging joins Smith+Jones in species 0 (same bytes), 1 (same phash) and
    # 2 (phash 3 bits apart, within the default near-duplicate distance): 6*6 + 1 groups, minus 3
    assert summary.groups_before_merge == 6 * 6 + 1
    assert summary.groups == 6 * 6 + 1 - 3
    assert summary.unknown_collector == 12
    assert summary.unsplittable_species == [SOLO]
    assert (frame.loc[frame["scientificName"] == SOLO, "split"] == "train").all()
    for species in SPECIES:  # every splittable species is both trained on and evaluated
        assert set(frame.loc[frame["scientificName"] == species, "split"]) == {"train", "test"}


@pytest.mark.parametrize("fraction", [0.3, 0.2])
def test_achieved_ratio_close_to_paper_ratios(dataset: Path, fraction: float) -> None:
    summary = split_dataset(dataset, test_fraction=fraction, seed=3)
    frame = load_manifest(dataset)
    achieved = (frame["split"] == "test").mean()
    assert abs(achieved - fraction) <= 0.05
    assert summary.achieved["test"] == pytest.approx(achieved, abs=1e-6)
    assert summary.counts == {"train": int((frame["split"] == "train").sum()),
                              "test": int((frame["split"] == "test").sum()), "val": 0}


def _many_species_frame(seed: int = 1) -> pd.DataFrame:
    """40 species with 2–30 collector groups of 1–12 sheets (exercises the greedy path)."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(40):
        for g in range(int(rng.integers(2, 31))):
            for _ in range(int(rng.integers(1, 13))):
                n = len(rows)
                surname = "abcdefghij"[g // 10] + "abcdefghij"[g % 10] + "son"  # no digits in names
                rows.append({"image_id": f"i{n:05d}", "occurrenceID": f"o{n}", "scientificName": f"G sp{s}",
                             "recordedBy": f"X. {surname}", "sha256": f"{n:064x}", "phash": None})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("fraction", [0.3, 0.2])
def test_paper_ratios_reachable_on_varied_groups(fraction: float) -> None:
    frame = _many_species_frame()
    most_groups = frame.groupby("scientificName")["recordedBy"].nunique().max()
    assert most_groups > splits_module.EXACT_SEARCH_MAX_GROUPS
    split = assign_splits(frame, test_fraction=fraction, seed=0)
    assert abs((split == "test").mean() - fraction) <= 0.01
    per_species = (split == "test").groupby(frame["scientificName"]).mean()
    assert per_species.between(0.0, 1.0, inclusive="neither").all()
    assert _straddling(frame.assign(split=split), frame["scientificName"] + frame["recordedBy"]) == []


def test_same_seed_same_assignment_other_seed_differs(tmp_path: Path) -> None:
    frame = synthetic_manifest()
    first = assign_splits(frame, seed=11)
    again = assign_splits(frame.copy(), seed=11)
    other = assign_splits(frame, seed=12)
    assert first.tolist() == again.tolist()
    assert first.tolist() != other.tolist()
    for name in ("a", "b"):
        save_manifest(tmp_path / name, frame)
        split_dataset(tmp_path / name, seed=11)
    assert (load_manifest(tmp_path / "a")["split"].tolist()
            == load_manifest(tmp_path / "b")["split"].tolist() == first.tolist())
    assert (tmp_path / "a" / SPLITS).read_text() == (tmp_path / "b" / SPLITS).read_text()


def test_assignment_does_not_depend_on_row_order() -> None:
    frame = synthetic_manifest()
    shuffled = frame.sample(frac=1.0, random_state=5)
    a = assign_splits(frame, seed=4).set_axis(frame["image_id"]).sort_index()
    b = assign_splits(shuffled, seed=4).set_axis(shuffled["image_id"]).sort_index()
    assert a.tolist() == b.tolist()


def test_assign_splits_is_pure_and_keeps_index() -> None:
    frame = synthetic_manifest()
    frame.index = frame.index + 1000
    before = frame.copy()
    split = assign_splits(frame, test_fraction=0.3, seed=0)
    assert split.index.equals(frame.index)
    assert split.name == "split"
    pd.testing.assert_frame_equal(frame, before)


def test_specimen_mode_keeps_images_of_one_specimen_together() -> None:
    rows = []
    for s in range(3):
        for spec in range(8):
            for view in range(3):  # three images of one sheet
                n = len(rows)
                rows.append({"image_id": f"i{n:03d}", "occurrenceID": f"occ-{s}-{spec}" if spec < 6 else None,
                             "institutionCode": "CR", "catalogNumber": f"cat-{s}-{spec}" if spec == 6 else None,
                             "scientificName": f"G sp{s}", "recordedBy": "Same Collector",
                             "sha256": f"{n:064x}", "phash": None})
    frame = pd.DataFrame(rows)
    split = assign_splits(frame, by="specimen", test_fraction=0.3, seed=2)
    specimen = frame["occurrenceID"].fillna(frame["catalogNumber"])
    both = frame.assign(split=split, specimen=specimen)
    assert _straddling(both[specimen.notna()], specimen[specimen.notna()]) == []
    # spec 6 shares a catalogue number; spec 7 has no id at all, so its images are separate groups
    assert build_grouping(frame, "specimen").n_components == 3 * (7 + 3)
    assert set(split) == {"train", "test"}
    # the same sheets by one collector cannot be split by collector: one group per species
    assert build_grouping(frame, "collector").n_components == 3


def test_observation_mode_prefers_observation_id() -> None:
    frame = synthetic_manifest()
    frame["observationID"] = ["obs" + str(i // 2) for i in range(len(frame))]
    grouping = build_grouping(frame, "observation")
    assert grouping.groups_before_merge == (len(frame) + 1) // 2
    split = assign_splits(frame, by="observation", seed=0)
    assert _straddling(frame.assign(split=split), frame["observationID"]) == []
    plain = synthetic_manifest()  # without the column it falls back to specimens
    assert build_grouping(plain, "observation").groups_before_merge == len(plain)


def test_none_mode_still_merges_duplicates() -> None:
    frame = synthetic_manifest()
    grouping = build_grouping(frame, "none")
    assert grouping.groups_before_merge == len(frame)
    assert grouping.n_components == len(frame) - 3  # same bytes, same phash, phash 3 bits apart
    split = assign_splits(frame, by="none", seed=0)
    assert split[frame["sha256"] == DUP_SHA].nunique() == 1


def test_near_duplicate_bits_merges_close_scans() -> None:
    frame = synthetic_manifest()
    assert build_grouping(frame, "none", near_duplicate_bits=6).n_components == len(frame) - 3


def test_val_split_is_group_aware(dataset: Path) -> None:
    summary = split_dataset(dataset, test_fraction=0.2, val_fraction=0.2, seed=1)
    frame = load_manifest(dataset)
    assert set(frame["split"]) == {"train", "test", "val"}
    assert _straddling(frame, _collector_groups(frame)) == []
    assert frame.loc[frame["sha256"] == DUP_SHA, "split"].nunique() == 1
    assert abs(summary.achieved["val"] - 0.2) <= 0.07
    assert abs(summary.achieved["test"] - 0.2) <= 0.05
    for species in SPECIES:  # val never takes a species' last training group
        assert (frame.loc[frame["scientificName"] == species, "split"] == "train").any()


def test_splits_json_records_the_run(dataset: Path) -> None:
    summary = split_dataset(dataset, test_fraction=0.3, seed=5)
    data = json.loads((dataset / SPLITS).read_text())
    assert data == json.loads(json.dumps(summary.to_dict()))
    assert set(data) == {
        "mode", "seed", "test_fraction", "val_fraction", "near_duplicate_bits", "images", "species",
        "groups", "groups_before_merge", "cross_species_groups", "unknown_collector", "counts",
        "achieved", "per_species", "unsplittable_species", "herbid_version", "manifest_hash",
    }
    assert data["mode"] == "collector" and data["seed"] == 5 and data["test_fraction"] == 0.3
    assert data["herbid_version"] == herbid.__version__
    assert data["manifest_hash"] == manifest_hash(dataset)
    assert data["species"] == 7 and data["images"] == 87
    assert data["per_species"][SOLO] == {"train": 3, "test": 0, "val": 0, "test_fraction": 0.0}
    assert sum(v["test"] for v in data["per_species"].values()) == data["counts"]["test"]
    assert data["achieved"]["train"] + data["achieved"]["test"] == pytest.approx(1.0)


def test_bad_arguments_are_rejected(dataset: Path) -> None:
    with pytest.raises(ValueError, match="unknown split mode"):
        split_dataset(dataset, by="herbarium")
    with pytest.raises(ValueError, match="test_fraction"):
        split_dataset(dataset, test_fraction=1.0)
    with pytest.raises(ValueError, match="val_fraction"):
        split_dataset(dataset, test_fraction=0.5, val_fraction=0.5)
    with pytest.raises(ValueError, match="folds"):
        make_folds(dataset, k=1)
    assert set(GROUP_MODES) == {"collector", "specimen", "observation", "institution", "none"}


def test_folds_are_group_aware_and_balanced(dataset: Path) -> None:
    summary = make_folds(dataset, k=3, seed=0)
    frame = load_manifest(dataset)
    assert frame["fold"].notna().all()
    assert sorted(frame["fold"].unique().tolist()) == [0, 1, 2]
    assert _straddling(frame, _collector_groups(frame), "fold") == []
    assert frame.loc[frame["sha256"] == DUP_SHA, "fold"].nunique() == 1
    sizes = frame["fold"].value_counts().sort_index().tolist()
    assert sizes == summary.fold_images and sum(sizes) == len(frame)
    assert max(sizes) - min(sizes) <= 3
    assert summary.species_fewer_groups_than_k == [SOLO]
    for species in SPECIES:  # every species appears in every fold
        assert frame.loc[frame["scientificName"] == species, "fold"].nunique() == 3
    data = json.loads((dataset / SPLITS).read_text())
    assert data["folds"]["k"] == 3 and data["folds"]["fold_images"] == sizes


def test_split_with_folds_writes_both_and_keeps_folds_on_resplit(dataset: Path) -> None:
    summary = split_dataset(dataset, folds=4, seed=0)
    assert summary.folds is not None and summary.folds["k"] == 4
    frame = load_manifest(dataset)
    assert frame["split"].notna().all() and frame["fold"].between(0, 3).all()
    split_dataset(dataset, test_fraction=0.2, seed=1)
    assert json.loads((dataset / SPLITS).read_text())["folds"] == summary.folds


def test_assign_folds_in_memory_matches_species_with_few_groups() -> None:
    frame = synthetic_manifest()
    folds = assign_folds(frame, k=5, seed=3)
    assert folds.dtype == "int64" and folds.between(0, 4).all()
    # each of the 4 collector groups plus 2 unknown sheets of a species: 5 distinct folds
    for species in SPECIES[2:]:
        assert folds[frame["scientificName"] == species].nunique() == 5
    assert folds.tolist() == assign_folds(frame, k=5, seed=3).tolist()
    assert folds.tolist() != assign_folds(frame, k=5, seed=4).tolist()


def test_audit_after_split_is_clean(dataset: Path) -> None:
    split_dataset(dataset, test_fraction=0.3, val_fraction=0.1, seed=0, near_duplicate_bits=6)
    report = audit_dataset(dataset)
    assert report["mode"] == "collector"
    assert report["groups_in_both"] == 0
    assert report["groups_in_val_and_other"] == 0
    assert report["identical_images_across"] == 0
    assert report["near_duplicates_across"] == 0
    assert report["species_missing_from_train"] == []
    assert report["leak_free"] is True
    assert report["examples"] == {"groups_in_both": [], "groups_in_val_and_other": [],
                                  "identical_images_across": [], "near_duplicates_across": []}
    frame = load_manifest(dataset)
    expected = frame[frame["split"] == "test"]["scientificName"].value_counts().to_dict()
    assert report["class_counts"]["test"] == expected
    assert sum(report["splits"].values()) == report["images"] == 87
    json.dumps(report)


def test_audit_detects_deliberate_leaks() -> None:
    frame = synthetic_manifest()
    frame["split"] = "train"
    smith0 = (frame["scientificName"] == SPECIES[3]) & (frame["recordedBy"] == "A. Smith")
    frame.loc[smith0[smith0].index[0], "split"] = "test"  # one Smith sheet of species 3 in test
    frame.loc[(frame["sha256"] == DUP_SHA) & (frame["recordedBy"] == "Jones, B."), "split"] = "val"
    close = (frame["scientificName"] == CLOSE_PHASH_SPECIES) & (frame["recordedBy"] == "Jones, B.")
    frame.loc[close[close].index[0], "split"] = "test"
    only_test = frame["scientificName"] == SPECIES[5]
    frame.loc[only_test, "split"] = "test"

    report = audit_frame(frame, by="collector", near_duplicate_bits=6)
    # species 3 Smith, species 2 Jones; species 5 is wholly in test (no straddle)
    assert report["groups_in_both"] == 2
    assert report["groups_in_val_and_other"] == 1  # the Jones group of species 0
    assert report["identical_images_across"] == 1
    assert report["examples"]["identical_images_across"][0]["sha256"] == DUP_SHA
    # the identical pair (distance 0) and the planted 3-bit pair
    assert report["near_duplicates_across"] == 2
    assert sorted(e["distance"] for e in report["examples"]["near_duplicates_across"]) == [0, 3]
    assert report["species_missing_from_train"] == [SPECIES[5]]
    assert report["leak_free"] is False
    assert report["examples"]["groups_in_both"][0]["images"]["test"] == 1
    assert audit_frame(frame, by="collector", near_duplicate_bits=2)["near_duplicates_across"] == 1


def test_audit_uses_recorded_mode_and_rejects_unsplit(dataset: Path) -> None:
    from herbid.data.dataset_folder import DatasetError

    with pytest.raises(DatasetError, match="no split"):
        audit_dataset(dataset)
    split_dataset(dataset, by="none", seed=0)
    assert audit_dataset(dataset)["mode"] == "none"
    assert audit_dataset(dataset)["groups"] == 87
    collector_view = audit_dataset(dataset, by="collector")
    assert collector_view["mode"] == "collector" and collector_view["groups"] == 6 * 6 + 1


def test_near_duplicate_pairs_find_planted_neighbours() -> None:
    rng = np.random.default_rng(0)
    words = rng.integers(0, 2**63, size=(400, 4), dtype=np.int64).astype(np.uint64)
    words[200:260] = words[:60]
    words[200:260, 0] ^= np.uint64(0b111)  # 60 planted 3-bit neighbours
    words[300:310] = words[:10]  # and 10 exact copies of 0–9
    pairs = {tuple(p) for p in near_duplicate_pairs(words, 3).tolist()}
    assert len(pairs) == 60 + 10 + 10  # copies also pair with 200–209
    assert (0, 200) in pairs and (0, 300) in pairs and (200, 300) in pairs
    labels = np.zeros(400, dtype=int)
    labels[300:] = 1  # only pairs across labels
    across = {tuple(p) for p in near_duplicate_pairs(words, 3, labels).tolist()}
    assert across == {p for p in pairs if (p[0] < 300) != (p[1] < 300)}


def test_dataset_stats_exact(dataset: Path) -> None:
    stats = dataset_stats(dataset)
    assert stats == {
        "images": 87,
        "species": 7,
        "images_per_species": {"min": 3, "median": 14.0, "max": 14},
        "collectors": 5,  # smith, jones, brown, muller, solo
        "institutions": 3,
        "genera": 4,  # Genus0..Genus2 and Solo
        "families": 2,
    }
    split_dataset(dataset, seed=0, folds=3)
    stats = dataset_stats(dataset)
    assert sum(stats["splits"].values()) == 87 and set(stats["splits"]) == {"train", "test"}
    assert sorted(stats["folds"]) == ["0", "1", "2"] and sum(stats["folds"].values()) == 87
