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
        ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
        ids = pc.drop_null(ids.cast(pa.string()))
        self.width = int(pc.max(pc.binary_length(ids)).as_py() or 0) + 1
        parts = [_fixed(ids.slice(k, _CHUNK), self.width) for k in range(0, len(ids), _CHUNK)]
        self.keys = np.unique(np.concatenate(parts)) if parts else np.empty(0, f"S{self.width}")

    def __len__(self) -> int:
        return len(self.keys)

    def contains(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """One bool per id of `ids` (null ids: False)."""
        ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
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
