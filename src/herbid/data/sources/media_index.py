"""The images of a Darwin Core Archive's multimedia extension, keyed by core id, in Arrow columns.

A bulk download from GBIF or iDigBio has millions of multimedia rows. Held as one
Python object per row (a dict of lists of references) they took more memory than the
rest of the read together; here a row costs its bytes in four Arrow columns (core id,
location, licence, line) and one 8-byte hash. The core is joined to it a chunk of rows
at a time:

* the core ids are hashed with Python's own ``hash`` (stable within a process, which is
  all a join needs) and looked up with :func:`numpy.searchsorted` in the sorted hashes;
* the candidate rows are taken from the Arrow columns in one call and kept only where
  the core id is equal, so a hash collision can never join the wrong images;
* which rows were joined is one boolean per row, so rows whose core id never appears
  (orphans) are known at the end without a set of every core id.

Neither file needs to be sorted.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa

from herbid.data.sources.media import MediaRef

#: Rows buffered as Python values before they become Arrow arrays.
FLUSH_ROWS = 1 << 16


def key_hashes(keys: Sequence[str]) -> np.ndarray:
    """Python's string hash of each key, as int64 (equal keys, equal hashes, in one process)."""
    return np.fromiter(map(hash, keys), dtype=np.int64, count=len(keys))


class MediaIndex:
    """Images per core id, filled with :meth:`add`, frozen by :meth:`finish`, read by :meth:`lookup`."""

    def __init__(self) -> None:
        self._tables: list[str] = []
        self._pending: tuple[list[str], list[str], list[str | None], list[int], list[int]] = ([], [], [], [], [])
        self._chunks: dict[str, list[pa.Array]] = {name: [] for name in _SCHEMA.names}
        self._hash_chunks: list[np.ndarray] = []
        self._columns: pa.Table | None = None
        self._hashes = np.empty(0, dtype=np.int64)
        self._joined = np.empty(0, dtype=bool)

    def table(self, display: str) -> int:
        """The number that stands for one data file in :meth:`add` (origins are ``display:line``)."""
        self._tables.append(display)
        return len(self._tables) - 1

    def add(self, key: str, ref: MediaRef, table: int, line: int) -> None:
        """One image of core id ``key``, found on ``line`` of ``table``."""
        keys, values, licenses, tables, lines = self._pending
        keys.append(key)
        values.append(ref.value)
        licenses.append(ref.license)
        tables.append(table)
        lines.append(line)
        if len(keys) >= FLUSH_ROWS:
            self._flush()

    def finish(self) -> None:
        """Sort the rows by key hash (stable: a key's images keep their file order)."""
        self._flush()
        hashes = np.concatenate(self._hash_chunks) if self._hash_chunks else np.empty(0, dtype=np.int64)
        self._hash_chunks = []
        order = pa.array(np.argsort(hashes, kind="stable"))
        self._hashes = hashes[order.to_numpy()]
        columns = []
        for field in _SCHEMA:  # one column at a time, so the unsorted copy of only one is held twice
            columns.append(pa.chunked_array(self._chunks.pop(field.name), field.type).take(order).combine_chunks())
        self._columns = pa.Table.from_arrays(columns, schema=_SCHEMA)
        self._joined = np.zeros(len(order), dtype=bool)
        pa.default_memory_pool().release_unused()  # the unsorted copies: give them back to the system

    def lookup(self, keys: Sequence[str | None]) -> list[list[MediaRef]]:
        """The images of each core id, in file order; a ``None`` or unknown id has none."""
        found: list[list[MediaRef]] = [[] for _ in keys]
        wanted = [i for i, key in enumerate(keys) if key]
        if not wanted or self._columns is None or not len(self._hashes):
            return found
        hashes = key_hashes([keys[i] for i in wanted])  # type: ignore[misc]
        starts = np.searchsorted(self._hashes, hashes, side="left")
        stops = np.searchsorted(self._hashes, hashes, side="right")
        counts = stops - starts
        if not counts.any():
            return found
        owners = np.repeat(np.asarray(wanted), counts)
        # row k of owner j is starts[j] + (k - where owner j's rows begin)
        rows = np.arange(int(counts.sum())) + np.repeat(starts - (np.cumsum(counts) - counts), counts)
        candidates = self._columns.take(pa.array(rows)).to_pydict()
        for owner, row, key, value, license, table, line in zip(
            owners.tolist(), rows.tolist(), candidates["key"], candidates["value"], candidates["license"],
            candidates["table"], candidates["line"], strict=True,
        ):
            if key == keys[owner]:  # equal hashes, different ids: not this row's image
                self._joined[row] = True
                found[owner].append(MediaRef(value, f"{self._tables[table]}:{line}", license))
        return found

    def orphans(self) -> Iterator[tuple[str, MediaRef]]:
        """``(core id, image)`` of every row no :meth:`lookup` joined, in file order."""
        if self._columns is None:
            return
        unjoined = np.flatnonzero(~self._joined)
        rows = self._columns.take(pa.array(unjoined)).to_pydict()
        order = sorted(range(len(unjoined)), key=lambda i: (rows["table"][i], rows["line"][i]))
        for i in order:
            origin = f"{self._tables[rows['table'][i]]}:{rows['line'][i]}"
            yield rows["key"][i], MediaRef(rows["value"][i], origin, rows["license"][i])

    def _flush(self) -> None:
        keys, values, licenses, tables, lines = self._pending
        if not keys:
            return
        self._hash_chunks.append(key_hashes(keys))
        for field, column in zip(_SCHEMA, (keys, values, licenses, tables, lines), strict=True):
            if pa.types.is_dictionary(field.type):
                self._chunks[field.name].append(pa.array(column, field.type.value_type).dictionary_encode())
            else:
                self._chunks[field.name].append(pa.array(column, field.type))
        self._pending = ([], [], [], [], [])


# large_string: a multi-GB download's locations overflow 32-bit offsets once combined
# licences repeat (a few per archive), so they are dictionary-encoded
_SCHEMA = pa.schema([("key", pa.large_string()), ("value", pa.large_string()),
                     ("license", pa.dictionary(pa.int32(), pa.large_string())),
                     ("table", pa.int32()), ("line", pa.int64())])
