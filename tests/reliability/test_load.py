"""Load: the whole job over many small rows with the tiny model on CPU, on a real `ray start` cluster (token
authentication on) whose object store is small enough that it must spill to disk (rayinpaint.bench.load).

Asserted on the benchmark's record: every row done exactly once, the driver's memory flat between the first and
the last quarter of the run, the rate of the last quarter close to that of the second, and that the object store
really spilled.

Size: 2,000 rows at a 128-px model side, about 2 minutes on two cores: the smallest run that still shows each
property. At 128 px each prepared row is about four times the 64-px benchmark's, so the rows queued in front of
the model outgrow the 96 MiB store part way through and it spills (2,000 rows spilled 74-76 MiB in each of four
runs on 2026-12-07, 1,500 rows nothing; at 64 px the first spill came only after about 12,000 rows); each quarter
spans about 30 s, 60 memory samples and 15 progress lines, so a driver that holds every row's result shows as
tens of MB and a rate that falls shows in the quarters. The 20,000-row run is
the benchmark `python -m rayinpaint.bench.load --rows 20000`, whose numbers are in RELIABILITY.md;
`RAYINPAINT_LOAD_ROWS` runs this test at another size.
"""

from __future__ import annotations

import json
import os

import pytest

from rayinpaint.bench.load import OBJECT_STORE, run_load

ROWS = int(os.environ.get("RAYINPAINT_LOAD_ROWS", "2000"))
RESOLUTION = 128
pytestmark = [pytest.mark.timeout(2400), pytest.mark.slow]


def test_many_rows_driver_memory_flat_throughput_steady_spilling_loses_nothing(tmp_path, reliability):
    r = run_load(ROWS, tmp_path, resolution=RESOLUTION)
    print("LOAD", json.dumps({k: v for k, v in r.items() if k != "tail"}))
    assert r["rc"] == 0, r.get("tail")

    # Every row exactly once, all done, and the summary says so.
    assert r["result_rows"] == r["distinct_ids"] == ROWS
    assert r["statuses"] == {"ok": ROWS}
    assert r["summary_complete"] and r["summary_accounted"] == ROWS

    # Driver memory: flat between the first and the last quarter of the run (after start-up).
    first, last = r["driver_rss_mb_first_q"], r["driver_rss_mb_last_q"]
    assert last - first < 100, f"driver RSS grew from {first} to {last} MB"

    # Throughput: the last quarter's rate is close to the second quarter's.
    assert r["rate_q4"] > 0.6 * r["rate_q2"], f"rate fell from {r['rate_q2']} to {r['rate_q4']} rows/s"

    # The object store spilled during the run, and no row was lost to it.
    assert r["spilled_mib"] > 0, "the object store never spilled: make OBJECT_STORE smaller"

    reliability.record("load", f"{ROWS} rows, tiny model on CPU at {RESOLUTION} px, {OBJECT_STORE // 2**20} MiB object "
                       "store", ROWS,
                       f"every id once; driver RSS {first} -> {last} MB (first vs last quarter); "
                       f"{r['rate_q2']} -> {r['rate_q4']} rows/s (2nd vs 4th quarter); "
                       f"{r['spilled_mib']} MiB spilled in {r['spilled_objects']} objects, no row lost")
