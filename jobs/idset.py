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
    """An IdSet in parts, each a range of the ids in sorted order (ledger/index.py Index.ids hands them out
    sorted, a batch at a time): the driver builds one part at a time and, under Ray, puts it in the object
    store, so the driver never holds the whole set; a task fetches the parts its ids fall in (zero-copy from the
    object store) when it first needs them."""

    def __init__(self, parts: list, firsts: list, size: int):
        self.parts = parts    # IdSet or ray.ObjectRef of an IdSet, one per part
        self.firsts = firsts  # the smallest id of each part, ascending
        self.size = size
        self._got: dict = {}

    @classmethod
    def build(cls, batches, put=None) -> "PartedIdSet":
        """From arrays of ids sorted across batches (`put`: ray.put, to hold each part in the object store)."""
        parts, firsts, size = [], [], 0
        for ids in batches:
            if not len(ids):
                continue
            s = IdSet(ids)
            parts.append(put(s) if put is not None else s)
            firsts.append(ids[0].as_py())
            size += len(ids)
        return cls(parts, firsts, size)

    def __len__(self) -> int:
        return self.size

    def __getstate__(self) -> dict:
        return {"parts": self.parts, "firsts": self.firsts, "size": self.size}

    def __setstate__(self, state: dict) -> None:
        self.parts, self.firsts, self.size, self._got = state["parts"], state["firsts"], state["size"], {}

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
        ids = one_array(ids).cast(pa.string())
        found = np.zeros(len(ids), bool)
        if not self.parts or not len(ids):
            return found
        # The part whose range holds each id: Python's string order is the engine's (code points = UTF-8 bytes).
        values = np.asarray(pc.fill_null(ids, "").to_pylist(), dtype=object)
        where = np.searchsorted(np.asarray(self.firsts, dtype=object), values, side="right") - 1
        valid = pc.is_valid(ids).to_numpy(zero_copy_only=False)
        for k in np.unique(where[(where >= 0) & valid]):
            rows = np.flatnonzero((where == k) & valid)
            found[rows] = self._part(int(k)).contains(ids.take(pa.array(rows)))
        return found
