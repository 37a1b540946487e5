"""A set of ids that small batches are tested against: the read tasks' "already done?" and "retry this?".

Testing a batch with `pyarrow.compute.is_in(batch, value_set=ids)` hashes the whole set again for every
batch (0.2-0.4 s per batch per million ids). An IdSet is built once on the driver: every id as fixed-width
bytes (its UTF-8 and a 0xFF terminator, a byte UTF-8 never holds, then zero padding), sorted. A batch is
tested by bisection, O(batch x log(set)), exactly. It pickles as one numpy buffer, which Ray hands to every
task of a pass without copying it per batch.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_CHUNK = 1 << 20  # ids converted at once (bounds the temporary index arrays)


def one_array(ids: pa.Array | pa.ChunkedArray) -> pa.Array:
    """`ids` as one Array, without a copy when it is one already (`combine_chunks` copies even one chunk)."""
    if isinstance(ids, pa.ChunkedArray):
        return ids.chunk(0) if ids.num_chunks == 1 else ids.combine_chunks()
    return ids


def _fixed(ids: pa.Array, width: int) -> np.ndarray:
    """`ids` (strings of at most width-1 UTF-8 bytes) as a numpy bytes array of `width` bytes each."""
    ids = ids.cast(pa.large_binary())
    offsets = np.frombuffer(ids.buffers()[1], np.int64)[ids.offset: ids.offset + len(ids) + 1]
    data = np.frombuffer(ids.buffers()[2], np.uint8) if ids.buffers()[2] is not None else np.empty(0, np.uint8)
    lengths = np.diff(offsets)
    out = np.zeros((len(ids), width), np.uint8)
    for n in np.unique(lengths):  # one gather per id length (ids are mostly of few lengths)
        rows = np.flatnonzero(lengths == n)
        out[rows, :n] = data[offsets[rows][:, None] + np.arange(n)]
        out[rows, n] = 0xFF
    return out.view(f"S{width}").ravel()


class IdSet:
    """Membership of string ids, built once (see the module docstring)."""

    def __init__(self, ids: pa.Array | pa.ChunkedArray):
        ids = one_array(ids)
        ids = pc.drop_null(ids.cast(pa.string()))
        self.width = int(pc.max(pc.binary_length(ids)).as_py() or 0) + 1
        parts = [_fixed(ids.slice(k, _CHUNK), self.width) for k in range(0, len(ids), _CHUNK)]
        self.keys = np.unique(np.concatenate(parts)) if parts else np.empty(0, f"S{self.width}")

    def __len__(self) -> int:
        return len(self.keys)

    def contains(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """One bool per id of `ids` (null ids: False)."""
        ids = one_array(ids)
        ids = ids.cast(pa.string())
        found = np.zeros(len(ids), bool)
        if not len(self.keys) or not len(ids):
            return found
        fits = pc.fill_null(pc.less(pc.binary_length(ids), self.width), False).to_numpy(zero_copy_only=False)
        candidates = np.flatnonzero(fits)  # a longer id cannot be in the set
        if not len(candidates):
            return found
        q = _fixed(ids.take(pa.array(candidates)), self.width)
        at = np.minimum(np.searchsorted(self.keys, q), len(self.keys) - 1)
        found[candidates] = self.keys[at] == q
        return found


class PartedIdSet:
    """An IdSet in the parts of a spill.PartedTable (split by `buckets`): the driver builds one part at a time
    and, under Ray, puts it in the object store, so the driver never holds the whole set; a task fetches the
    parts its ids fall in (zero-copy from the object store) when it first needs them."""

    def __init__(self, parts: list, size: int):
        self.parts = parts  # IdSet or ray.ObjectRef of an IdSet, one per part
        self.size = size
        self._got: dict = {}

    @classmethod
    def build(cls, table) -> "PartedIdSet":
        """From a spill.PartedTable with an `id` column (put in Ray's object store when Ray is running)."""
        import ray

        put = ray.put if ray.is_initialized() else None
        parts = []
        for k in range(table.parts):
            s = IdSet(table.ids(k))
            parts.append(put(s) if put is not None else s)
        return cls(parts, table.rows)

    def __len__(self) -> int:
        return self.size

    def __getstate__(self) -> dict:
        return {"parts": self.parts, "size": self.size}

    def __setstate__(self, state: dict) -> None:
        self.parts, self.size, self._got = state["parts"], state["size"], {}

    def _part(self, k: int) -> IdSet:
        if k not in self._got:
            p = self.parts[k]
            if not isinstance(p, IdSet):
                import ray

                p = ray.get(p)
            self._got[k] = p
        return self._got[k]

    def contains(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """One bool per id of `ids` (null ids: False)."""
        return per_part(one_array(ids).cast(pa.string()), len(self.parts), lambda k, i: self._part(k).contains(i))


def per_part(ids: pa.Array, parts: int, test) -> np.ndarray:
    """One bool per id of `ids`: `test(k, the ids that fall in part k)` for each part k of `parts` they fall in
    (parts split by `buckets`, as spill.PartedTable splits them)."""
    if parts == 1:
        return np.asarray(test(0, ids), bool)
    where = buckets(ids, parts)
    found = np.zeros(len(ids), bool)
    for k in np.unique(where):
        rows = np.flatnonzero(where == k)
        found[rows] = test(int(k), ids.take(pa.array(rows)))
    return found


# ---- set operations over millions of ids in bounded memory ----------------------------------------------------
# Arrow's hash kernels (is_in, value_counts, count_distinct) build one hash table over the whole value set: about
# 70 bytes per id at 10M ids (a table sized to twice the ids plus a copy of every string), on top of the ids
# themselves. The ids are split into BUCKETS by a hash of their last bytes; the same id always falls in the same
# bucket, so each operation is done bucket by bucket, exactly, with a table of 1/BUCKETS of the ids at a time.
BUCKETS = 16
_TAIL = 16  # bytes of each id's end that decide its bucket (ids usually differ there: counters, hashes, uuids,
#             numbered names before a fixed suffix). Ids alike there share a bucket: less memory saved, same answers.


def buckets(ids: pa.Array | pa.ChunkedArray, n: int = BUCKETS) -> np.ndarray:
    """The bucket (0 <= b < n) of each id, a function of the id's bytes alone (null ids: bucket 0)."""
    ids = one_array(ids)
    return np.concatenate([_buckets(ids.slice(k, _CHUNK), n) for k in range(0, len(ids), _CHUNK)] or
                          [np.empty(0, np.uint8)])


def _buckets(ids: pa.Array, n: int) -> np.ndarray:
    ids = ids.cast(pa.large_binary())
    offsets = np.frombuffer(ids.buffers()[1], np.int64)[ids.offset: ids.offset + len(ids) + 1]
    data = np.frombuffer(ids.buffers()[2], np.uint8) if ids.buffers()[2] is not None else np.zeros(1, np.uint8)
    start, end = offsets[:-1], offsets[1:]
    h = np.zeros(len(ids), np.uint32)
    for k in range(1, _TAIL + 1):
        at = end - k
        byte = data[np.clip(at, 0, len(data) - 1)].astype(np.uint32)
        byte[at < start] = 0
        h = h * np.uint32(131) + byte
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x2C1B3C6D)
    h ^= h >> np.uint32(12)
    return (h % np.uint32(n)).astype(np.uint8)


def is_in(values: pa.Array | pa.ChunkedArray, value_set: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """pyarrow.compute.is_in(values, value_set) as a numpy bool array (null: False), bucket by bucket when the
    set holds more than _CHUNK ids (one hash table over a part of the driver's bookkeeping, at most about 1M ids
    (spill.PART_IDS), costs less than bucketing it)."""
    values = one_array(values)
    out = np.zeros(len(values), bool)
    if not len(values) or not len(value_set):
        return out
    if len(value_set) <= _CHUNK:
        return pc.fill_null(pc.is_in(values, value_set=value_set), False).to_numpy(zero_copy_only=False)
    vb, sb = buckets(values), buckets(value_set)
    for b in range(BUCKETS):
        rows = np.flatnonzero(vb == b)
        if len(rows):
            subset = value_set.filter(pa.array(sb == b))
            found = pc.is_in(values.take(pa.array(rows)), value_set=subset)
            out[rows] = pc.fill_null(found, False).to_numpy(zero_copy_only=False)
    return out


def count_distinct(ids: pa.Array | pa.ChunkedArray) -> int:
    """Distinct non-null ids, bucket by bucket."""
    ids = one_array(ids)
    if len(ids) <= _CHUNK:
        return pc.count_distinct(ids).as_py()
    b = buckets(ids)
    return sum(pc.count_distinct(ids.filter(pa.array(b == k))).as_py() for k in range(BUCKETS))
