"""IdSet answers exactly what `pyarrow.compute.is_in` answers, for any ids (unicode, NUL bytes, prefixes,
lengths beyond the set's), from a set built once."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayinpaint.jobs.idset import IdSet


def test_same_answers_as_is_in():
    rng = random.Random(7)
    alphabet = ["a", "b", "\x00", "é", "字", "-", "\U0001f600"]
    pool = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6))) for _ in range(3000)]
    members = pa.array(pool[:1500] + pool[:100])  # repeated members too
    s = IdSet(members)
    queries = pa.array(pool + ["a" * 40, "a\x00", "a", ""] + [None])
    want = pc.fill_null(pc.is_in(queries, value_set=members), False).to_numpy(zero_copy_only=False)
    assert np.array_equal(s.contains(queries), want)
    assert np.array_equal(s.contains(queries.slice(1000, 50)), want[1000:1050])
    assert np.array_equal(pickle.loads(pickle.dumps(s, protocol=5)).contains(queries), want)


def test_empty_set_and_chunked_input():
    assert not IdSet(pa.array([], pa.string())).contains(pa.array(["x"])).any()
    s = IdSet(pa.chunked_array([["x", "y"], ["z"]]))
    assert s.contains(pa.chunked_array([["z"], ["w", "x"]])).tolist() == [True, False, True]
    assert len(s) == 3


def test_a_parted_set_from_the_index_answers_as_one_set_whatever_the_ids_bytes(monkeypatch):
    """The index hands ids out sorted by the engine (ledger/index.py); the parted set finds each id's part by
    Python's string order. Both orders must agree for every id, non-ASCII and long ones included."""
    from rayinpaint.jobs.idset import PartedIdSet
    from rayinpaint.ledger.index import local_index

    rng = np.random.default_rng(7)
    pool = [f"row-{i:06d}" for i in range(300)] + ["", "é", "e\u0301", "a" * 300, "x.jpg", "Y.jpg", "日本", "\U0001f600",
                                                   "ab", "abc", "ab\x00"]
    members = [pool[i] for i in rng.choice(len(pool), 200, replace=False)]
    asked = pa.array(pool + ["not-there", None])
    with local_index() as index:
        index.add_manifest_ids(pa.array(members), 0)
        parted = PartedIdSet.build(index.ids("SELECT DISTINCT id FROM manifest", 16))
    assert len(parted) == len(set(members)) and len(parted.parts) == -(-len(set(members)) // 16)
    assert parted.contains(asked).tolist() == IdSet(pa.array(members)).contains(asked).tolist()
    assert parted.contains(asked).tolist() == [x in set(members) for x in pool] + [False, False]
