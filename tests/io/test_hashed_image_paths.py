"""The hashed image layout: images/ab/{stem}.ext, the path recorded in the results row, stable per id."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from helpers_io import rand_rgb
from rayinpaint.io.errors import SettingsError
from rayinpaint.io.finish import finish_row
from rayinpaint.io.images import decode_image, encode_image
from rayinpaint.io.naming import image_path
from rayinpaint.io.prepare import prepare_row
from rayinpaint.io.settings import OutputSettings, PrepareSettings
from rayinpaint.jobs.config import JobConfig, validate


def test_image_path():
    assert image_path("img-1", "flat") == "img-1"
    folder = hashlib.sha256(b"img-1").hexdigest()[:2]
    assert image_path("img-1", "hashed") == f"{folder}/img-1"
    folders = {image_path(f"row-{i}", "hashed").split("/")[0] for i in range(5000)}
    assert len(folders) == 256  # the ids spread over every folder
    with pytest.raises(ValueError):
        image_path("x", "deep")


@pytest.mark.parametrize("layout", ["flat", "hashed"])
def test_finish_writes_where_output_uri_says(tmp_path, layout):
    settings = PrepareSettings(resolution=64, mask_dilate=2, feather=2)
    src = encode_image(rand_rgb(80, 60, 1), "png")
    row = {"id": "row-7", "image_bytes": src, "boxes": [[10, 10, 30, 30]]}
    prepared = prepare_row(row, settings)
    result = [np.frombuffer(prepared["model_image"][0], np.uint8).reshape(64, 64, 3)]
    out = OutputSettings(root=str(tmp_path), layout=layout)
    got = finish_row(prepared, result, settings, out)
    assert got["status"] == "ok"
    want = tmp_path / "images" / f"{image_path('row-7', layout)}.png"
    assert got["output_uri"] == str(want) and os.path.isfile(want)
    assert decode_image(want.read_bytes()).shape == (60, 80, 3)


def test_layout_is_validated():
    with pytest.raises(SettingsError, match="layout"):
        OutputSettings(root="/tmp/x", layout="deep")
    with pytest.raises(SettingsError, match="--image-layout"):
        validate(JobConfig(manifest=("m",), output="/tmp/o", image_layout="deep"))
