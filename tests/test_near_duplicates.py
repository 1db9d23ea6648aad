"""Near-duplicate search: the LSH path against exact all-pairs on planted hashes."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from herbid.data import near_duplicates
from herbid.data.near_duplicates import band_pairs, bit_planes, exact_pairs, lsh_pairs, lsh_plan
from herbid.data.phash import hamming, near_duplicate_pairs, near_duplicates_of_hex
from herbid.errors import InvalidOption

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "near_duplicates.py"
N, MAX_BITS = 20_000, 40


def _benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("near_duplicates_benchmark", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _set(pairs: np.ndarray) -> set[tuple[int, int]]:
    return {(int(i), int(j)) for i, j in pairs[:, :2]}


@pytest.fixture(scope="module")
def planted() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    words, near, far = _benchmark().planted_hashes(N, seed=3)
    return words, near, far, exact_pairs(words, MAX_BITS), near_duplicate_pairs(words, MAX_BITS, method="fast")


def test_exact_finds_exactly_the_planted_pairs(planted: tuple[np.ndarray, ...]) -> None:
    _, near, far, exact, _ = planted
    assert _set(exact) == _set(near)
    assert len(near) > 1000 and (near[:, 2] >= 35).sum() > 400  # many at the hard end
    assert 41 <= far[:, 2].min() and not _set(far) & _set(exact)


def test_fast_recall_against_exact_at_every_distance(planted: tuple[np.ndarray, ...]) -> None:
    words, _, _, exact, fast = planted
    found = _set(fast)
    hit = np.array([(int(i), int(j)) in found for i, j in exact])
    distance = hamming(words[exact[:, 0]], words[exact[:, 1]])
    assert hit.mean() >= 0.99
    for low, high in ((0, 20), (21, 34), (35, 40)):
        assert hit[(distance >= low) & (distance <= high)].mean() >= 0.99, (low, high)
    assert hit[distance <= 20].all()  # recall(20) is 1 − 10⁻¹⁰ or so


def test_fast_has_no_false_positives(planted: tuple[np.ndarray, ...]) -> None:
    words, _, far, exact, fast = planted
    assert _set(fast) <= _set(exact)
    assert hamming(words[fast[:, 0]], words[fast[:, 1]]).max() <= MAX_BITS
    assert not _set(far) & _set(fast)
    assert (fast[:, 0] < fast[:, 1]).all() and len(np.unique(fast, axis=0)) == len(fast)
    assert (np.lexsort(fast.T[::-1]) == np.arange(len(fast))).all()  # sorted like exact


def test_labels_keep_pairs_across_labels(planted: tuple[np.ndarray, ...]) -> None:
    words, _, _, exact, fast = planted
    labels = np.random.default_rng(0).choice(np.array(["train", "val", "test"], dtype=object), N)
    across = near_duplicate_pairs(words, MAX_BITS, labels, method="fast")
    assert _set(across) == {(i, j) for i, j in _set(fast) if labels[i] != labels[j]}
    assert 0 < len(across) < len(fast)
    assert _set(near_duplicate_pairs(words[:6000], MAX_BITS, labels[:6000], method="exact")) == {
        (i, j) for i, j in _set(exact) if j < 6000 and labels[i] != labels[j]}


def test_recall_formula_holds_whatever_the_data() -> None:
    """2000 pairs at exactly 30 bits under a plan asked for recall 0.5 at 30: the share
    found matches 1 − (1 − p)^L."""
    rng = np.random.default_rng(1)
    words = rng.integers(0, 2**63, size=(4000, 4), dtype=np.int64).astype(np.uint64)
    for i in range(0, 4000, 2):
        flip = np.zeros(256, dtype=np.uint8)
        flip[rng.choice(256, 30, replace=False)] = 1
        words[i + 1] = words[i] ^ np.packbits(flip).view(np.uint64)
    plan, _ = lsh_plan(words, 30, recall=0.5)
    assert plan is not None and 0.5 <= plan.recall(30) < 0.7
    found = lsh_pairs(words, 30, recall=0.5)
    assert (found[:, 1] - found[:, 0] == 1).all()
    assert abs(len(found) / 2000 - plan.recall(30)) < 0.05


def test_band_blocks_union_to_the_whole_search(planted: tuple[np.ndarray, ...]) -> None:
    words, _, _, _, _ = planted
    plan, _ = lsh_plan(words[:6000], MAX_BITS)
    assert plan is not None and plan.bands > 20
    planes, columns = bit_planes(words[:6000]), np.ascontiguousarray(words[:6000].T)
    whole = _set(band_pairs(planes, columns, plan, range(plan.bands)))
    parts = set().union(*(_set(band_pairs(planes, columns, plan, block)) for block in plan.blocks(7)))
    assert whole == parts and len(whole) > 100


def test_identical_hashes_pair_with_all_their_copies() -> None:
    rng = np.random.default_rng(2)
    words = rng.integers(0, 2**63, size=(6000, 4), dtype=np.int64).astype(np.uint64)
    words[100:400] = words[7]  # 301 copies: 45,150 pairs
    words[500] = words[7] ^ np.uint64(0b1011)  # 3 bits from all of them
    fast = near_duplicate_pairs(words, MAX_BITS, method="fast")
    assert _set(fast) == _set(exact_pairs(words, MAX_BITS))
    assert len(fast) == 302 * 301 // 2


def test_short_hashes_with_constant_padding() -> None:
    rng = np.random.default_rng(4)
    words = rng.integers(0, 2**48, size=(6000, 1), dtype=np.int64).astype(np.uint64)  # top 16 bits always 0
    words[3000:3300] = words[:300] ^ (np.uint64(1) << rng.integers(0, 48, (300, 1)).astype(np.uint64))
    fast = near_duplicate_pairs(words, 3, method="fast")
    assert _set(fast) == _set(exact_pairs(words, 3)) and len(fast) >= 300


def test_auto_switches_at_the_threshold(planted: tuple[np.ndarray, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    words, _, _, exact, _ = planted
    calls: list[int] = []
    real = near_duplicates.lsh_pairs

    def counting(words: np.ndarray, max_bits: int, **options: object) -> np.ndarray:
        calls.append(len(words))
        return real(words, max_bits, **options)

    monkeypatch.setattr(near_duplicates, "lsh_pairs", counting)
    below = near_duplicates.EXACT_BELOW - 1
    small = near_duplicate_pairs(words[:below], MAX_BITS)
    assert calls == [] and _set(small) == {(i, j) for i, j in _set(exact) if j < below}
    assert len(near_duplicate_pairs(words, MAX_BITS)) > 0 and calls == [N]
    near_duplicate_pairs(words[:6000], MAX_BITS, method="exact")
    near_duplicate_pairs(words[:100], MAX_BITS, method="fast")
    assert calls == [N, 100]
    with pytest.raises(InvalidOption, match="unknown near-duplicate method 'quick'"):
        near_duplicate_pairs(words, MAX_BITS, method="quick")  # type: ignore[arg-type]


def test_hex_pairs_report_their_distances() -> None:
    hashes = ["0" * 64, "0" * 63 + "7", "f" * 64, None, "00ff", "0" * 62 + "ff"]
    assert near_duplicates_of_hex(hashes, 8) == [(0, 1, 3), (0, 5, 8), (1, 5, 5)]


def test_measure_reports_recall_and_time() -> None:
    row = _benchmark().measure(6000, seed=1)
    assert row["n"] == 6000 and row["pairs_planted"] > 300
    assert row["recall"] >= 0.99 and row["recall_vs_exact"] == row["recall"]
    assert row["false_positives"] == 0 and row["pairs_beyond_40_reported"] == 0
    assert row["pairs_found"] == round(row["recall"] * row["pairs_planted"])
    assert row["seconds"] > 0 and row["peak_rss_mb"] > 0
