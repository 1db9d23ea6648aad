"""Pairs of hashes within a Hamming distance: exact all-pairs, or bit-sampling LSH at scale.

Comparing every pair costs ``n²/2`` popcounts: about a minute per 100k hashes on two
cores, ~100 minutes at 1M. Above :data:`EXACT_BELOW` hashes the search samples bits
instead (locality-sensitive hashing for the Hamming distance):

* each of ``L`` *bands* draws ``k`` distinct bit positions at random (seeded);
* rows whose ``k`` bits agree share a band key; sorting a band's keys puts them side by
  side, and each such pair is a *candidate*;
* every candidate is verified with an exact popcount, so no pair beyond ``max_bits`` is
  ever reported. A missed pair is the only possible error.

A pair at distance ``d`` among ``B`` varying bits agrees on one band with probability
``p(d) = C(B−d, k) / C(B, k) ≈ (1 − d/B)^k``; the bands are drawn independently, so it is
found with probability ``recall(d) = 1 − (1 − p(d))^L``. That recall depends only on
``d``, ``k`` and ``L``, never on the data: :func:`plan_bands` picks ``k`` (from a sample
of the data, to keep the work small) and then ``L`` so that ``recall(max_bits)`` reaches
the requested value, and closer pairs are found more surely still. The data decide only
how long it takes.

The work splits into independent blocks of bands (:meth:`BandPlan.blocks` +
:func:`band_pairs`): a distributed engine can run them anywhere and union the results.
Identical hashes are merged first (a thousand copies of one blank sheet would otherwise
be a million candidates in every band) and expanded at the end.

Memory: the bit planes (one byte per bit and hash: 256 MB for 1M 256-bit hashes) plus
O(n) per band; found pairs are deduplicated as they accumulate. 1M hashes: ~0.5 GB peak,
~30 s on two shared cores (benchmarks/near_duplicates.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from herbid.errors import InvalidOption
from herbid.progress import progress_bar

Method = Literal["auto", "exact", "fast"]
METHODS: tuple[str, ...] = ("auto", "exact", "fast")
#: Below this many hashes ``method="auto"`` compares all pairs, which finds every pair.
#: Measured on two shared cores (benchmarks/near_duplicates.py --threshold): the two cost
#: the same near 3–4k hashes, and exact takes ≤ 0.1 s below 5k.
EXACT_BELOW = 5_000
#: Recall asked of the LSH at exactly ``max_bits`` (closer pairs are found more surely).
DEFAULT_RECALL = 0.995
#: Pair comparisons per block of the exact path (bounds memory to some tens of MB).
_BLOCK_ELEMENTS = 2_000_000
#: Measured seconds per row per band (key + radix sort) and per candidate (pair + verify),
#: and per pair of the exact path; only their ratios matter, to choose ``k`` and the path.
_ROW_COST, _CANDIDATE_COST, _EXACT_COST = 35e-9, 150e-9, 9e-9
_MAX_KEY_BITS = 32
_MAX_BANDS = 4096
_SAMPLE_PAIRS = 20_000


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit distances between broadcastable word arrays (last axis = words)."""
    return np.bitwise_count(a ^ b).sum(axis=-1, dtype=np.int64)


def _as_words(words: np.ndarray) -> np.ndarray:
    words = np.ascontiguousarray(words, dtype=np.uint64)
    return words[:, None] if words.ndim == 1 else words


def _empty() -> np.ndarray:
    return np.zeros((0, 2), dtype=np.int64)


# -- exact ------------------------------------------------------------------------------

def exact_block(columns: np.ndarray, start: int, stop: int, max_bits: int) -> np.ndarray:
    """Pairs ``(i, j)`` with ``start ≤ i < stop``, ``i < j``, within ``max_bits``: one block
    of the exact search (the blocks ``[0, s), [s, 2s) …`` together give every pair).
    ``columns`` is the ``(words, n)`` transpose of the hashes: adding one word's popcounts
    at a time is ~5× faster than summing over a last axis of 4."""
    n = columns.shape[1]
    distance = np.zeros((stop - start, n - start), dtype=np.uint16)
    for column in columns:
        distance += np.bitwise_count(column[start:stop, None] ^ column[None, start:])
    close = distance <= max_bits
    # column c is row start + c, row r is start + r: keep j > i only
    close &= np.arange(n - start)[None, :] > np.arange(stop - start)[:, None]
    rows, cols = np.nonzero(close)
    return np.stack([rows + start, cols + start], axis=1)


def exact_pairs(words: np.ndarray, max_bits: int) -> np.ndarray:
    """Every pair within ``max_bits``, comparing all pairs blockwise (sorted by ``i``, ``j``)."""
    columns = np.ascontiguousarray(_as_words(words).T)
    n = columns.shape[1]
    rows_per_block = max(1, _BLOCK_ELEMENTS // max(n, 1))
    found = [exact_block(columns, s, min(n, s + rows_per_block), max_bits) for s in range(0, n, rows_per_block)]
    found = [f for f in found if len(f)]
    return np.concatenate(found) if found else _empty()


# -- LSH --------------------------------------------------------------------------------

def band_probability(distance: np.ndarray | int, width: int, key_bits: int) -> np.ndarray:
    """``C(width − d, k) / C(width, k)``: the chance that ``k`` distinct random bits of
    ``width`` all avoid the ``d`` bits in which a pair differs."""
    d = np.asarray(distance, dtype=np.float64)[..., None]
    i = np.arange(key_bits, dtype=np.float64)
    return np.prod(np.clip((width - d - i) / (width - i), 0.0, None), axis=-1)


@dataclass(frozen=True)
class BandPlan:
    """The bands of one LSH search: ``positions[b]`` are band ``b``'s bit positions (rows of
    :func:`bit_planes`); ``width`` bits vary among the hashes."""

    positions: np.ndarray
    width: int
    max_bits: int

    @property
    def bands(self) -> int:
        return len(self.positions)

    @property
    def key_bits(self) -> int:
        return self.positions.shape[1]

    def recall(self, distance: int) -> float:
        """Chance that a pair at ``distance`` is found: ``1 − (1 − p(d))^L``."""
        return float(1.0 - (1.0 - band_probability(distance, self.width, self.key_bits)) ** self.bands)

    def blocks(self, size: int) -> list[range]:
        """Band ranges of ``size`` bands: independent units of work for :func:`band_pairs`."""
        return [range(s, min(self.bands, s + size)) for s in range(0, self.bands, max(1, size))]


def bit_planes(words: np.ndarray) -> np.ndarray:
    """One ``uint8`` row of 0/1 per bit: ``planes[p, i]`` is bit ``p`` of hash ``i``."""
    return np.unpackbits(np.ascontiguousarray(words.view(np.uint8).reshape(len(words), -1).T), axis=0)


def varying_bits(words: np.ndarray) -> np.ndarray:
    """Which rows of :func:`bit_planes` vary at all: constant bits, such as the padding of
    short hex strings, tell no hashes apart and are never sampled."""
    spread = np.bitwise_or.reduce(words ^ words[0], axis=0) if len(words) else np.zeros(words.shape[1], np.uint64)
    return np.unpackbits(np.ascontiguousarray(spread).view(np.uint8)).astype(bool)


def plan_bands(words: np.ndarray, varying: np.ndarray, max_bits: int, *, recall: float = DEFAULT_RECALL,
               seed: int = 0) -> tuple[BandPlan | None, float]:
    """The cheapest band plan with ``recall(max_bits) ≥ recall``, and its estimated seconds.

    The cost of ``k``-bit bands is estimated from the distances of random pairs of the data
    (real sheets share a layout, so their hashes are closer than random bits); ``None`` when
    no plan with at most :data:`_MAX_BANDS` bands exists.
    """
    if not 0.0 < recall < 1.0:
        raise InvalidOption(f"recall must be between 0 and 1, not {recall}")
    n, positions = len(words), np.flatnonzero(varying)
    width = len(positions)
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, n, _SAMPLE_PAIRS), rng.integers(0, n, _SAMPLE_PAIRS)
    sample = hamming(words[a[a != b]], words[b[a != b]]) if n > 2 else hamming(words[0], words[-1])[None]
    best: tuple[float, int, int] | None = None
    for k in range(1, min(_MAX_KEY_BITS, width - max_bits) + 1):
        p_near = float(band_probability(max_bits, width, k))
        bands = int(np.ceil(np.log1p(-recall) / np.log1p(-p_near))) if p_near < 1 else 1
        if bands > _MAX_BANDS:
            continue
        candidates = n * (n - 1) / 2 * float(band_probability(sample, width, k).mean())
        cost = bands * (n * _ROW_COST + candidates * _CANDIDATE_COST)
        if best is None or cost < best[0]:
            best = (cost, k, bands)
    if best is None:
        return None, float("inf")
    cost, k, bands = best
    chosen = np.stack([rng.choice(positions, k, replace=False) for _ in range(bands)])
    return BandPlan(chosen, width, max_bits), cost


def _band_order(planes: np.ndarray, bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by their key on ``bits``, and the sorted keys (two stable radix passes
    on 16-bit halves: three times faster than a comparison sort of 32-bit keys)."""
    halves = []
    for part in (bits[:16], bits[16:]):
        key = np.zeros(planes.shape[1], dtype=np.uint16)
        for shift, p in enumerate(part):
            key |= planes[p].astype(np.uint16) << np.uint16(shift)
        halves.append(key)
    low, high = halves
    order = np.argsort(low, kind="stable")
    if len(bits) > 16:
        order = order[np.argsort(high[order], kind="stable")]
    keys = (high.astype(np.uint32) << np.uint32(16) | low)[order]
    return order, keys


def band_pairs(planes: np.ndarray, columns: np.ndarray, plan: BandPlan, bands: range) -> np.ndarray:
    """Verified pairs ``(i, j)``, ``i < j``, that share a key in any of ``bands``; sorted and
    deduplicated. ``columns`` is the ``(words, n)`` transpose of the hashes."""
    n = planes.shape[1]
    codes: list[np.ndarray] = []
    for band in bands:
        order, keys = _band_order(planes, plan.positions[band])
        # rows with equal keys are adjacent: pair each with the next, then the one after …
        alive = np.flatnonzero(keys[1:] == keys[:-1])
        step = 1
        while len(alive):
            a, b = order[alive], order[alive + step]
            distance = np.zeros(len(a), dtype=np.int64)
            for column in columns:
                distance += np.bitwise_count(column[a] ^ column[b])
            close = distance <= plan.max_bits
            a, b = a[close], b[close]
            codes.append(np.minimum(a, b) * n + np.maximum(a, b))
            step += 1
            alive = alive[alive + step < n]
            alive = alive[keys[alive + step] == keys[alive]]
        if sum(len(c) for c in codes) > 4 * n:  # close pairs recur in many bands: bound memory
            codes = [np.unique(np.concatenate(codes))]
    unique = np.unique(np.concatenate(codes)) if codes else np.zeros(0, dtype=np.int64)
    return np.stack([unique // n, unique % n], axis=1) if n else _empty()


def _distinct(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(first, group)``: the first row of each distinct hash, and each row's group."""
    order = np.lexsort(words.T[::-1])
    ordered = words[order]
    new = np.ones(len(words), dtype=bool)
    new[1:] = (ordered[1:] != ordered[:-1]).any(axis=1)
    group = np.empty(len(words), dtype=np.int64)
    group[order] = np.cumsum(new) - 1
    return order[new], group


def _expand(pairs: np.ndarray, group: np.ndarray, groups: int) -> np.ndarray:
    """Pairs of rows from pairs of groups, plus the pairs inside each group (distance 0)."""
    members = np.argsort(group, kind="stable")
    size = np.bincount(group, minlength=groups)
    start = np.concatenate([[0], np.cumsum(size)[:-1]])
    inside = np.flatnonzero(size > 1)
    gu = np.concatenate([pairs[:, 0], inside])
    gv = np.concatenate([pairs[:, 1], inside])
    count = size[gu] * size[gv]
    pair = np.repeat(np.arange(len(gu)), count)
    offset = np.arange(len(pair)) - np.repeat(np.cumsum(count) - count, count)
    a = members[start[gu[pair]] + offset // size[gv[pair]]]
    b = members[start[gv[pair]] + offset % size[gv[pair]]]
    keep = a != b
    a, b = a[keep], b[keep]
    n = len(group)
    codes = np.unique(np.minimum(a, b) * n + np.maximum(a, b))
    return np.stack([codes // n, codes % n], axis=1)


def lsh_plan(words: np.ndarray, max_bits: int, *, recall: float = DEFAULT_RECALL, seed: int = 0
             ) -> tuple[BandPlan | None, float]:
    """The band plan (and its estimated seconds) that :func:`lsh_pairs` makes for ``words``."""
    distinct = _as_words(words)[_distinct(_as_words(words))[0]]
    if len(distinct) < 2 or max_bits < 0:
        return None, 0.0
    return plan_bands(distinct, varying_bits(distinct), max_bits, recall=recall, seed=seed)


def lsh_pairs(words: np.ndarray, max_bits: int, *, recall: float = DEFAULT_RECALL, seed: int = 0,
              bands_per_block: int = 16, progress: bool = False, fallback: bool = False) -> np.ndarray:
    """Pairs within ``max_bits`` found by bit-sampling LSH; exact distances, probabilistic
    recall (see the module docstring). Compares all pairs instead when no band plan exists
    or, with ``fallback``, when that is estimated to be cheaper."""
    words = _as_words(words)
    if max_bits < 0:
        return _empty()
    first, group = _distinct(words)
    distinct = words[first]
    if len(distinct) < 2:
        return _expand(_empty(), group, len(first))
    plan, cost = plan_bands(distinct, varying_bits(distinct), max_bits, recall=recall, seed=seed)
    if plan is None or (fallback and cost > len(distinct) ** 2 / 2 * _EXACT_COST):
        pairs = exact_pairs(distinct, max_bits)
    else:
        planes, columns = bit_planes(distinct), np.ascontiguousarray(distinct.T)
        found = []
        with progress_bar("near duplicates (bands)", plan.bands, enabled=progress) as advance:
            for block in plan.blocks(bands_per_block):
                found.append(band_pairs(planes, columns, plan, block))
                advance(len(block))
        pairs = np.unique(np.concatenate(found), axis=0)
    return _expand(pairs, group, len(first))


def find_pairs(words: np.ndarray, max_bits: int, labels: np.ndarray | None = None, *, method: Method = "auto",
               recall: float = DEFAULT_RECALL, seed: int = 0, progress: bool = False) -> np.ndarray:
    """``(m, 2)`` int64 pairs ``(i, j)``, ``i < j``, sorted and unique, whose hashes differ in
    at most ``max_bits`` bits; with ``labels``, only pairs whose labels differ.

    ``method``: ``"exact"`` compares all pairs, ``"fast"`` uses the LSH, ``"auto"`` the
    exact path below :data:`EXACT_BELOW` hashes or where the LSH would cost more.
    """
    if method not in METHODS:
        raise InvalidOption(f"unknown near-duplicate method {method!r}: choose one of {', '.join(METHODS)}")
    words = _as_words(words)
    if method == "exact" or (method == "auto" and len(words) < EXACT_BELOW):
        pairs = exact_pairs(words, max_bits)
    else:
        pairs = lsh_pairs(words, max_bits, recall=recall, seed=seed, progress=progress, fallback=method == "auto")
    if labels is not None and len(pairs):
        labels = np.asarray(labels)
        pairs = pairs[labels[pairs[:, 0]] != labels[pairs[:, 1]]]
    return pairs
