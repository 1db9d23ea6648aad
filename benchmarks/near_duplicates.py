"""Near-duplicate search at scale: bit-sampling LSH against exact all-pairs (and faiss).

The data are random 256-bit hashes with planted groups: pairs and small clusters whose
members sit 0–40 bits from the group's base (half of them 35–40, the hard end), plus
decoy pairs 41–60 bits apart that must never be reported. Random 256-bit hashes are
≥ 41 bits apart with probability 1 − 10⁻²⁹, so the planted pairs within 40 bits (their
distances computed exactly) are all the pairs there are: recall "against planted" is
recall against exact all-pairs. Up to ``--exact-up-to`` hashes the exact search is also
run and compared pair for pair.

    python benchmarks/near_duplicates.py                      # 100k and 1M (~1 min + exact at 100k: minutes)
    python benchmarks/near_duplicates.py --sizes 20000         # quick look, exact comparison included
    python benchmarks/near_duplicates.py --threshold           # exact vs LSH at 500…16k: sets EXACT_BELOW
    python benchmarks/near_duplicates.py --faiss --sizes 100000  # faiss binary indexes on the same data

``seconds`` is the wall time of ``near_duplicate_pairs(words, 40, method="fast")``;
``peak_rss_mb`` is the process's peak resident memory (``ru_maxrss``) after it, data
generation included.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from typing import Any

import numpy as np

from herbid.data.near_duplicates import exact_pairs, lsh_plan
from herbid.data.phash import hamming, near_duplicate_pairs

MAX_BITS = 40
WIDTH = 256


def _flip(base: np.ndarray, bits: int, rng: np.random.Generator) -> np.ndarray:
    """``base`` (words) with ``bits`` distinct random bits flipped."""
    flip = np.zeros(WIDTH, dtype=np.uint8)
    flip[rng.choice(WIDTH, bits, replace=False)] = 1
    return base ^ np.packbits(flip).view(np.uint64)


def planted_hashes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(words, near, far)``: ``n`` hashes as ``(n, 4)`` uint64, the planted pairs
    ``(i, j, distance)`` within :data:`MAX_BITS`, and decoy pairs 41–60 bits apart
    (and cluster members that ended up beyond 40 bits of each other)."""
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 2**63, size=(n, 4), dtype=np.int64).astype(np.uint64)
    words ^= rng.integers(0, 2, size=(n, 4), dtype=np.int64).astype(np.uint64) << np.uint64(63)
    rows = rng.permutation(n)
    used, near, far = 0, [], []
    for _ in range(n // 25):  # ~10% of rows in near-duplicate groups
        size = 2 if rng.random() < 0.7 else int(rng.integers(3, 6))
        group = rows[used:used + size]
        used += size
        for member in group[1:]:
            d = int(rng.integers(35, 41)) if rng.random() < 0.5 else int(rng.integers(0, 41))
            words[member] = _flip(words[group[0]], d, rng)
        for x in range(size):
            for y in range(x + 1, size):
                i, j = sorted((int(group[x]), int(group[y])))
                d = int(hamming(words[i], words[j]))
                (near if d <= MAX_BITS else far).append((i, j, d))
    for _ in range(n // 50):  # decoys just beyond the threshold
        i, j = sorted(int(r) for r in rows[used:used + 2])
        used += 2
        words[j] = _flip(words[i], int(rng.integers(MAX_BITS + 1, 61)), rng)
        far.append((i, j, int(hamming(words[i], words[j]))))
    return words, np.array(near, dtype=np.int64).reshape(-1, 3), np.array(far, dtype=np.int64).reshape(-1, 3)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _codes(pairs: np.ndarray, n: int) -> np.ndarray:
    return pairs[:, 0] * n + pairs[:, 1]


def measure(n: int, seed: int = 0, *, exact: bool | None = None) -> dict[str, Any]:
    """Figures of the LSH search on ``n`` planted hashes; ``exact`` (default: up to 50k)
    also times the all-pairs search and computes recall against it pair for pair."""
    words, near, far = planted_hashes(n, seed)
    start = time.perf_counter()
    found = near_duplicate_pairs(words, MAX_BITS, method="fast")
    seconds = time.perf_counter() - start
    plan, _ = lsh_plan(words, MAX_BITS)  # the plan the search made (same seed)
    distances = hamming(words[found[:, 0]], words[found[:, 1]]) if len(found) else np.zeros(0)
    found_codes = _codes(found, n)
    hit = np.isin(_codes(near, n), found_codes)
    hard = near[:, 2] >= 35
    row: dict[str, Any] = {
        "n": n, "seed": seed, "pairs_planted": len(near), "pairs_found": len(found), "seconds": round(seconds, 2),
        "recall_vs": "planted pairs (all pairs ≤ 40 bits: random 256-bit hashes are never that close)",
        "recall": round(float(hit.mean()), 5), "recall_35_to_40_bits": round(float(hit[hard].mean()), 5),
        "false_positives": int((distances > MAX_BITS).sum()),
        "pairs_beyond_40_reported": int(np.isin(_codes(far, n), found_codes).sum()),
        "bits_per_band": plan.key_bits, "bands": plan.bands,
        "expected_recall_at_40_bits": round(plan.recall(MAX_BITS), 5),
        "peak_rss_mb": round(_peak_rss_mb()),
    }
    if exact if exact is not None else n <= 50_000:
        start = time.perf_counter()
        truth = exact_pairs(words, MAX_BITS)
        row["exact_seconds"] = round(time.perf_counter() - start, 2)
        row["exact_pairs"] = len(truth)
        row["recall_vs_exact"] = round(float(np.isin(_codes(truth, n), found_codes).mean()), 5)
        row["speedup"] = round(row["exact_seconds"] / seconds, 1)
    return row


def threshold(sizes: tuple[int, ...] = (500, 1_000, 2_000, 4_000, 8_000, 16_000), seed: int = 0) -> list[dict[str, Any]]:
    """Seconds of exact and LSH search at small sizes: where they cross sets ``EXACT_BELOW``."""
    rows = []
    for n in sizes:
        words, _, _ = planted_hashes(n, seed)
        timings = {}
        for method in ("exact", "fast"):
            start = time.perf_counter()
            near_duplicate_pairs(words, MAX_BITS, method=method)
            timings[method] = round(time.perf_counter() - start, 3)
        rows.append({"n": n, "exact_seconds": timings["exact"], "fast_seconds": timings["fast"]})
    return rows


def faiss_candidates(n: int, seed: int = 0, *, flat_queries: int = 2_000) -> list[dict[str, Any]]:
    """faiss binary indexes on the same data: seconds (extrapolated to all ``n`` queries
    where only ``flat_queries`` ran) and recall of the planted pairs."""
    import faiss  # only this comparison needs it

    words, near, _ = planted_hashes(n, seed)
    codes = np.ascontiguousarray(words).view(np.uint8)
    near_codes = _codes(near, n)
    rows = []

    def report(name: str, index: Any, queries: int, search: str = "range") -> None:
        start = time.perf_counter()
        index.add(codes)
        build = time.perf_counter() - start
        start = time.perf_counter()
        if search == "range":
            limits, _, ids = index.range_search(codes[:queries], MAX_BITS + 1)  # faiss keeps d < radius
            owner = np.repeat(np.arange(queries), np.diff(limits).astype(np.int64))
        else:
            distance, ids = index.search(codes[:queries], 16)
            owner = np.repeat(np.arange(queries), 16)
            keep = (distance.ravel() <= MAX_BITS) & (ids.ravel() >= 0)
            owner, ids = owner[keep], ids.ravel()[keep]
        took = time.perf_counter() - start
        a, b = np.minimum(owner, ids), np.maximum(owner, ids)
        found = np.unique(a[a != b] * n + b[a != b])
        asked = near[:, 0] < queries
        rows.append({"index": name, "n": n, "queries": queries, "build_seconds": round(build, 2),
                     "search_seconds_all_n": round(took * n / queries, 1),
                     "recall_planted": round(float(np.isin(near_codes[asked], found).mean()), 4)})

    report("IndexBinaryFlat range_search", faiss.IndexBinaryFlat(WIDTH), flat_queries)
    for nhash, bits, nflip in ((8, 32, 2), (16, 16, 1)):
        index = faiss.IndexBinaryMultiHash(WIDTH, nhash, bits)
        index.nflip = nflip
        report(f"IndexBinaryMultiHash nhash={nhash} b={bits} nflip={nflip}", index, min(n, 20_000))
    index = faiss.IndexBinaryHash(WIDTH, 20)
    index.nflip = 3
    report("IndexBinaryHash b=20 nflip=3", index, min(n, 20_000))
    index = faiss.IndexBinaryHNSW(WIDTH, 16)
    report("IndexBinaryHNSW M=16 knn16", index, min(n, 20_000), search="knn")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--exact-up-to", type=int, default=50_000,
                        help="also run exact all-pairs up to this many hashes (100000: ~minutes)")
    parser.add_argument("--threshold", action="store_true", help="time exact vs LSH at 500…16k hashes")
    parser.add_argument("--faiss", action="store_true", help="time faiss binary indexes instead")
    args = parser.parse_args()
    if args.threshold:
        rows = threshold(seed=args.seed)
    elif args.faiss:
        rows = [r for n in args.sizes for r in faiss_candidates(n, args.seed)]
    else:
        rows = [measure(n, args.seed, exact=n <= args.exact_up_to) for n in args.sizes]
    for row in rows:
        print(json.dumps(row, ensure_ascii=False))


if __name__ == "__main__":
    main()
