"""The load benchmark's measurements (rayinpaint.bench.load) on inputs worked out by hand, without Ray; the whole
benchmark runs in tests/reliability/test_load.py."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from rayinpaint.bench.load import memory_and_rate, spilled, write_manifest


def test_memory_quarters_and_rates_from_samples_and_progress_lines():
    # progress lines (seconds, rows done of 100), the first at t = 2 s
    progress = [(2.0, 0), (3.0, 30), (4.0, 40), (5.0, 60), (6.0, 76), (8.0, 80), (9.0, 90), (10.0, 96)]
    samples = [(t / 2, 100.0 + t) for t in range(22)]  # RSS 100..121 MB, one sample per 0.5 s
    r = memory_and_rate({"progress": progress, "samples": samples}, rows=100)
    # from t=2 s on: 18 samples (t = 2.0 .. 10.5, RSS 104..121), quarters of 4
    assert (r["driver_rss_mb_first_q"], r["driver_rss_mb_last_q"], r["driver_rss_mb_max"]) == (107, 121, 121)
    # 2nd quarter of the rows (25 <= n < 50): 30 at 3 s to 40 at 4 s; 4th (75 <= n < 97): 76 at 6 s to 96 at 10 s
    assert (r["rate_q2"], r["rate_q4"]) == (10.0, 5.0)


def test_spilled_takes_the_largest_running_total_of_the_raylet_log(tmp_path):
    logs = tmp_path / "session_1" / "logs"
    logs.mkdir(parents=True)
    assert spilled(str(tmp_path)) == (0, 0)
    (logs / "raylet.out").write_text("x :info_message:Spilled 76 MiB, 299 objects, write throughput 143 MiB/s.\n"
                                     "y :info_message:Spilled 152 MiB, 589 objects, write throughput 260 MiB/s.\n")
    assert spilled(str(tmp_path)) == (152, 589)


def test_the_manifest_has_every_id_once_over_the_shared_images(tmp_path):
    root = write_manifest(tmp_path / "in", rows=2500)
    files = sorted((tmp_path / "in").glob("manifest-*.parquet"))
    t = pa.concat_tables(pq.read_table(f) for f in files)
    assert t.num_rows == 2500 and len(set(t.column("id").to_pylist())) == 2500
    assert root == str(tmp_path / "in") and len(files) == 3  # 1,000 rows a file
    im = Image.open(io.BytesIO((tmp_path / "in" / "img" / "0.png").read_bytes()))
    assert im.size == (256, 192) and np.asarray(im).std() > 50  # noise: each source is ~150 KB of bytes to carry
