"""The JPEG block transplant's pieces (io/jpeg_transplant.py) and `--format auto` in finish_row (io/outputs.py):
orientation, the coefficient reader against jpeglib's own, refusals and their fallback, unchanged rows, file
names, results columns and the settings fingerprint. The guarantee itself: tests/io/test_jpeg_guarantee.py."""

from __future__ import annotations

import io

import jpeglib
import numpy as np
import pytest
from PIL import Image, ImageOps

from helpers_io import JPEG_LAYOUTS, encode, jpeg_source, smooth_rgb
from rayinpaint.io import jpeg_transplant as jt
from rayinpaint.io.finish import finish_row
from rayinpaint.io.images import decode_image
from rayinpaint.io.prepare import prepare_row
from rayinpaint.io.results import RESULTS_SCHEMA, results_table
from rayinpaint.io.settings import OutputSettings, PrepareSettings


@pytest.mark.parametrize("orientation", range(1, 9))
def test_stored_view_and_coordinates_undo_pillows_exif_transpose(orientation):
    stored = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    im = Image.fromarray(stored)
    ex = Image.Exif()
    ex[0x0112] = orientation
    im.info["exif"] = ex.tobytes()
    shown = np.asarray(ImageOps.exif_transpose(im))
    assert np.array_equal(jt.stored_view(shown, orientation), stored)
    y, x = np.mgrid[0:shown.shape[0], 0:shown.shape[1]]
    r, c = jt.stored_coords(y, x, orientation, 5, 7)
    assert np.array_equal(stored[r, c], shown)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("mcu_blocks", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_changed_mcus_are_those_of_the_changed_pixels(orientation, mcu_blocks):
    """Per window, the stored MCU of every changed pixel inside it, found pixel by pixel, in row-major order;
    windows cut by the image's edges, and one with nothing changed, included."""
    rng = np.random.default_rng(orientation)
    dh, dw = 37, 53
    sh, sw = (dw, dh) if orientation >= 5 else (dh, dw)
    layout = jt.Layout(h=mcu_blocks[0], v=mcu_blocks[1], grey=False, orientation=orientation, width=sw, height=sh)
    original = rng.integers(0, 256, (dh, dw, 3), dtype=np.uint8)
    final = original.copy()
    final[rng.random((dh, dw)) < 0.01, 1] ^= 4
    windows = [(-9, 5, 21, 35), (30, -20, 70, 20), (40, 30, 45, 35)]
    final[30:35, 40:45] = original[30:35, 40:45]
    want = []
    for x0, y0, x1, y1 in windows:
        ys, xs = np.nonzero(np.any(final != original, axis=2)[max(y0, 0):y1, max(x0, 0):x1])
        r, c = jt.stored_coords(ys + max(y0, 0), xs + max(x0, 0), orientation, sh, sw)
        if ys.size:
            want.append(np.unique(np.stack([r // layout.mcu[0], c // layout.mcu[1]], 1), axis=0))
    got = jt.changed_mcus(final, original, windows, layout)
    assert len(got) == len(want) == 2
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("layout", JPEG_LAYOUTS)
@pytest.mark.parametrize("orientation", [1, 6])
def test_the_coefficient_reader_gives_what_jpeglib_read_dct_gives(tmp_path, layout, orientation):
    """read_coefficients skips jpeglib's information pass (a whole entropy decode): same arrays, tables, sizes,
    sampling and markers (the JFIF segment aside: libjpeg writes its own)."""
    src = jpeg_source(smooth_rgb(77, 45), layout, orientation, progressive=layout == "4:2:2")
    path = tmp_path / "s.jpg"
    path.write_bytes(src)
    want = jpeglib.read_dct(str(path))
    got = jt.read_coefficients(jt._jpeglib(), str(path), src, jt.inspect(src))
    assert (got.height, got.width) == (want.height, want.width)
    assert np.array_equal(got.block_dims, want.block_dims)
    if layout != "grey":
        assert np.array_equal(got.samp_factor, want.samp_factor)
    for name in ("Y", "Cb", "Cr") if layout != "grey" else ("Y",):
        assert np.array_equal(getattr(got, name), getattr(want, name)), name
    assert np.array_equal(got.qt, want.qt) and list(got.quant_tbl_no) == list(want.quant_tbl_no)
    kept = [(m.type, m.content) for m in want.markers if not (int(m.type) == 0xE0 and m.content.startswith(b"JFIF"))]
    assert [(m.type, m.content) for m in got.markers] == kept
    assert any(m.content.startswith(b"Exif") for m in got.markers) == (orientation != 1)


def test_refusals_name_what_is_not_handled():
    with pytest.raises(jt.Refused, match="not a JPEG"):
        jt.inspect(encode(smooth_rgb(20, 20), "PNG"))
    with pytest.raises(jt.Refused, match="CMYK"):
        jt.inspect(encode(Image.new("CMYK", (20, 20), (10, 20, 30, 40)), "JPEG"))
    with pytest.raises(jt.Refused, match="RGB-coded"):
        jt.inspect(encode(smooth_rgb(20, 20), "JPEG", keep_rgb=True))
    with pytest.raises(jt.Refused, match="4:1:1|sampling factors"):
        jt.inspect(patched_sampling(encode(smooth_rgb(64, 32), "JPEG", subsampling=2), 0x41))
    baseline = encode(smooth_rgb(64, 32), "JPEG", subsampling=2)
    with pytest.raises(jt.Refused, match="arithmetic-coded"):  # SOF9: the same frame, arithmetic coding
        jt.inspect(baseline.replace(b"\xff\xc0", b"\xff\xc9", 1))
    i = baseline.index(b"\xff\xc0") + 4  # FFC0, length(2), then the sample precision
    twelve = baseline[:i] + bytes([12]) + baseline[i + 1:]
    with pytest.raises(jt.Refused, match="12-bit JPEG: only 8-bit"):
        jt.inspect(twelve)


def patched_sampling(jpeg: bytes, luma: int) -> bytes:
    """`jpeg` with the luma sampling byte of its frame header replaced (a header-only refusal check)."""
    i = jpeg.index(b"\xff\xc0")
    data = bytearray(jpeg)
    data[i + 11] = luma  # FFC0, length(2), precision, height(2), width(2), count, id, sampling
    return bytes(data)


def row_outputs(tmp_path, src: bytes, boxes, fmt="auto"):
    s = PrepareSettings(resolution=64, min_context=8)
    p = prepare_row({"id": "r1", "image_bytes": src, "boxes": boxes}, s)
    res = [np.full((r, r, 3), 200, np.uint8) for r in p.get("region_res") or []] if p["status"] == "ready" else None
    row = finish_row(dict(p), res, s, OutputSettings(root=str(tmp_path / fmt), format=fmt))
    with open(row["output_uri"], "rb") as f:
        return row, f.read()


def test_a_cmyk_jpeg_falls_back_to_png_with_the_reason_recorded(tmp_path):
    src = encode(Image.new("CMYK", (40, 30), (10, 20, 30, 40)), "JPEG")
    row, data = row_outputs(tmp_path, src, [[5, 5, 20, 20]])
    assert row["status"] == "ok" and row["output_format"] == "png" and "CMYK" in row["output_fallback"]
    assert row["output_uri"].endswith("/images/r1.png") and data.startswith(b"\x89PNG")
    assert row["output_bytes"] == len(data)


def test_a_png_source_under_auto_is_png_without_a_fallback_reason(tmp_path):
    row, data = row_outputs(tmp_path, encode(smooth_rgb(40, 30), "PNG"), [[5, 5, 20, 20]])
    assert (row["output_format"], row["output_fallback"]) == ("png", None) and data.startswith(b"\x89PNG")


def test_an_unchanged_jpeg_row_under_auto_is_the_source_itself(tmp_path):
    src = jpeg_source(smooth_rgb(40, 30), "4:2:0", 6)
    row, data = row_outputs(tmp_path, src, [])
    assert row["status"] == "unchanged" and row["output_format"] == "jpeg-transplant" and data == src
    assert row["output_uri"].endswith("/images/r1.jpg")


def test_the_output_keeps_the_sources_exif_orientation_and_size(tmp_path):
    src = jpeg_source(smooth_rgb(64, 48), "4:2:0", 8)
    row, data = row_outputs(tmp_path, src, [[10, 10, 30, 30]])
    assert row["output_format"] == "jpeg-transplant"
    out = Image.open(io.BytesIO(data))
    assert out.getexif().get(0x0112) == 8 and out.size == (64, 48)
    assert decode_image(data).shape == decode_image(src).shape == (64, 48, 3)


def test_other_formats_record_what_they_wrote(tmp_path):
    src = jpeg_source(smooth_rgb(40, 30), "4:2:0")
    for fmt, ext in (("png", "png"), ("jpeg", "jpg"), ("webp", "webp")):
        row, data = row_outputs(tmp_path, src, [[5, 5, 20, 20]], fmt)
        assert (row["output_format"], row["output_fallback"], row["output_bytes"]) == (fmt, None, len(data))
        assert row["output_uri"].endswith(f".{ext}")


def test_results_carry_the_format_and_bytes_written_and_error_rows_none(tmp_path):
    table = results_table([{"id": "a", "status": "ok", "output_format": "jpeg-transplant", "output_bytes": 12},
                           {"id": "b", "status": "error"}])
    assert {"output_format", "output_bytes", "output_fallback"} <= set(RESULTS_SCHEMA.names)
    assert table.column("output_format").to_pylist() == ["jpeg-transplant", None]
    assert table.column("output_bytes").to_pylist() == [12, None]


def test_auto_is_a_setting_of_its_own_in_the_fingerprint():
    from rayinpaint.jobs.config import build_config
    from rayinpaint.ledger.fingerprint import fingerprint_of, pixel_settings

    base = {"manifest": "m.parquet", "output": "out"}
    auto, png = build_config({**base, "format": "auto"}), build_config(base)
    assert png.format == "png"  # the default stays PNG: existing outputs keep their settings (README "Outputs")
    assert fingerprint_of(pixel_settings(auto, "m")) != fingerprint_of(pixel_settings(png, "m"))
    assert OutputSettings(root="x", format="auto").kind == "auto"
