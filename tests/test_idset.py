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


def test_bucketed_set_operations_equal_arrows(monkeypatch):
    """is_in and count_distinct bucket by bucket (the path taken above idset._CHUNK ids) give exactly
    what Arrow's kernels over the whole set give, whatever the ids' lengths and bytes."""
    from rayinpaint.jobs import idset

    monkeypatch.setattr(idset, "_CHUNK", 64)
    rng = np.random.default_rng(7)
    pool = [f"row-{i:06d}" for i in range(300)] + ["", "é", "a" * 300, "x.jpg", "y.jpg", "日本"]
    ids = pa.array([pool[i] for i in rng.integers(0, len(pool), 2000)] + [None])
    some = pa.array(pool[::3] + ["not-there", None])
    assert list(idset.is_in(ids, some)) == pc.fill_null(pc.is_in(ids, value_set=some), False).to_pylist()
    assert idset.count_distinct(ids) == pc.count_distinct(ids).as_py()
    assert len(np.unique(idset.buckets(pa.array(pool)))) == idset.BUCKETS  # every bucket used
