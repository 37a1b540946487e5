"""The stand-in model actor of the keep-up benchmark (bench/standin.py), without Ray: it takes the model actor's
blocks, splits them into calls of the fixed batch shape, logs each call, and echoes its inputs, so finish pastes
back real pixels and every pixel beyond dilate + feather stays the input's."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from helpers_io import decode_png, make_mask_png, make_png
from rayinpaint.bench.standin import SleepPredictor, sleeping_actor
from rayinpaint.io.finish import finish_row
from rayinpaint.io.prepare import PREPARED_SCHEMA, prepare_row
from rayinpaint.io.settings import OutputSettings, PrepareSettings
from rayinpaint.jobs.predictor import ModelSettings

R = 64
SETTINGS = PrepareSettings(resolution=R, mask_dilate=2, feather=3, min_context=4).validate()
BOX = (30, 20, 50, 40)


def test_the_stand_in_echoes_its_inputs_in_fixed_shape_calls_and_logs_each(tmp_path):
    cls, args = sleeping_actor(0.01, str(tmp_path / "log"))
    assert cls is SleepPredictor
    actor = cls(ModelSettings("random:tiny", resolution=R, pad_to=4), *args)
    rows = [{"id": f"r{i}", "image_bytes": make_png(96, 80, i), "mask_bytes": make_mask_png(96, 80, [BOX]),
             "prompt": "sky"} for i in range(5)]
    prepared = [prepare_row(r, SETTINGS) for r in rows]
    out = actor(pa.Table.from_pylist(prepared, schema=PREPARED_SCHEMA))
    assert out.column("status").to_pylist() == ["ready"] * 5, out.column("error").to_pylist()

    (log,) = (tmp_path / "log").glob("actor-*.txt")
    calls = [line.split() for line in log.read_text().splitlines()]
    assert sorted(int(n) for _, _, n in calls) == [1, 4]  # five regions: one call of four, one of the rest
    assert all(float(end) - float(start) >= 0.01 for start, end, _ in calls)

    far = np.ones((80, 96), bool)  # farther than dilate + feather from the box
    far[BOX[1] - 5:BOX[3] + 5, BOX[0] - 5:BOX[2] + 5] = False
    for i, (p, res) in enumerate(zip(prepared, out.column("result").to_pylist())):
        got = finish_row(p, res, SETTINGS, OutputSettings(root=str(tmp_path / "out")))
        assert got["status"] == "ok"
        image = decode_png(open(got["output_uri"], "rb").read())
        original = decode_png(make_png(96, 80, i))
        assert np.array_equal(image[far], original[far])
