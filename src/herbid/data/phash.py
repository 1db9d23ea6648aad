"""Perceptual hashes of sheets and the near-duplicate pairs they reveal.

One implementation for the build (report near duplicates), the splitter (keep them on one
side) and the audit (count those that straddle). Hashes are hex strings of any fixed
length (herbid stores 256-bit pHashes); they are compared as rows of 64-bit words.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from herbid.data.near_duplicates import DEFAULT_RECALL, Method, find_pairs, hamming

__all__ = ["NEAR_DUPLICATE_BITS", "PHASH_SIZE", "hamming", "hash_words", "near_duplicate_pairs",
           "near_duplicates_of_hex"]

#: pHash grid size (16 → 256-bit hashes) and the distance that counts as a near duplicate.
#: The usual 64-bit pHash is too coarse for herbarium sheets: on the shared CNH thumbnails,
#: sheets of different species (same paper, label and colour-bar layout) came within 4 bits.
#: At 256 bits distinct sheets stayed ≥ 56 bits apart while re-encoded, slightly cropped
#: and brightened copies stayed within ~40.
PHASH_SIZE = 16
NEAR_DUPLICATE_BITS = 40


def hash_words(hex_hashes: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """Hex hashes as an (n, words) ``uint64`` matrix plus a validity mask.

    Missing or garbled hashes, and hashes of another length than the most common one,
    are invalid (they take part in no pair).
    """
    texts = [h if isinstance(h, str) else None for h in hex_hashes]
    lengths = [len(t) for t in texts if t]
    if not lengths:
        return np.zeros((len(texts), 1), dtype=np.uint64), np.zeros(len(texts), dtype=bool)
    length = max(set(lengths), key=lengths.count)
    words = -(-length // 16)
    values = np.zeros((len(texts), words), dtype=np.uint64)
    valid = np.zeros(len(texts), dtype=bool)
    for row, text in enumerate(texts):
        if text is None or len(text) != length:
            continue
        try:
            padded = text.rjust(words * 16, "0")
            values[row] = [int(padded[i:i + 16], 16) for i in range(0, words * 16, 16)]
        except ValueError:
            continue
        valid[row] = True
    return values, valid


def near_duplicate_pairs(words: np.ndarray, max_bits: int, labels: np.ndarray | None = None, *,
                         method: Method = "auto", recall: float = DEFAULT_RECALL, seed: int = 0,
                         progress: bool = False) -> np.ndarray:
    """Index pairs ``(i, j)``, ``i < j``, whose hashes differ in at most ``max_bits`` bits.

    With ``labels``, only pairs whose labels differ (e.g. in different splits). Below
    ``EXACT_BELOW`` hashes all pairs are compared (a minute per 100k); above, bit-sampling
    LSH finds each pair at distance ``d`` with probability ``1 − (1 − C(B−d, k)/C(B, k))^L``,
    ``≥ recall`` at ``d = max_bits``, whatever the data, and never reports a pair beyond
    ``max_bits`` (see :mod:`herbid.data.near_duplicates`). ``method`` forces either path.
    """
    return find_pairs(words, max_bits, labels, method=method, recall=recall, seed=seed, progress=progress)


def near_duplicates_of_hex(hex_hashes: Sequence[str | None], max_bits: int = NEAR_DUPLICATE_BITS, *,
                           progress: bool = False) -> list[tuple[int, int, int]]:
    """``(i, j, distance)`` for every near-duplicate pair among hex hashes."""
    words, valid = hash_words(hex_hashes)
    rows = np.flatnonzero(valid)
    pairs = near_duplicate_pairs(words[rows], max_bits, progress=progress)
    a, b = rows[pairs[:, 0]], rows[pairs[:, 1]]
    return list(zip(a.tolist(), b.tolist(), hamming(words[a], words[b]).tolist()))
