"""Image decoding (formats, modes, EXIF, frames, bombs) and encoding."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from helpers_io import encode, rand_rgb
from rayinpaint.io.errors import RowError
from rayinpaint.io.images import decode_image, encode_image, sniff_format


@pytest.mark.parametrize("fmt, kw", [("PNG", {}), ("TIFF", {}), ("BMP", {}), ("WEBP", {"lossless": True}),
                                     ("TIFF", {"compression": "tiff_lzw"})])
def test_lossless_formats_decode_exactly(fmt, kw):
    arr = rand_rgb(37, 23, 1)
    out = decode_image(encode(arr, fmt, **kw))
    assert out.dtype == np.uint8 and out.shape == (23, 37, 3)
    np.testing.assert_array_equal(out, arr)


def test_jpeg_decodes_close():
    arr = rand_rgb(64, 48, 2)
    data = encode(arr, "JPEG", quality=95)
    out = decode_image(data)
    assert out.shape == (48, 64, 3) and np.abs(out.astype(int) - arr).mean() < 12
    np.testing.assert_array_equal(out, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def test_grey_and_bilevel_modes():
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = decode_image(encode(Image.fromarray(grey, "L"), "PNG"))
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, 2))
    bits = Image.fromarray(grey > 100).convert("1")
    out = decode_image(encode(bits, "PNG"))
    np.testing.assert_array_equal(out[..., 0], np.where(grey > 100, 255, 0))


def over_white(rgb, a):
    # expected value computed in floating point, independently of the integer code path
    return np.floor(rgb * (a / 255.0) + 255.0 * (1 - a / 255.0) + 0.5).astype(np.uint8)


def test_rgba_and_la_composite_over_white():
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    rgba[0, 0, 3], rgba[0, 1, 3] = 0, 255
    out = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    exp = over_white(rgba[..., :3].astype(float), rgba[..., 3:].astype(float))
    assert np.abs(out.astype(int) - exp).max() <= 1  # rounding of exact .5 ties only
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])  # fully transparent -> white
    np.testing.assert_array_equal(out[0, 1], rgba[0, 1, :3])
    la = rng.integers(0, 256, (10, 10, 2), dtype=np.uint8)
    out = decode_image(encode(Image.fromarray(la, "LA"), "PNG"))
    exp = over_white(la[..., :1].astype(float), la[..., 1:].astype(float))
    assert np.abs(out.astype(int) - np.repeat(exp, 3, 2)).max() <= 1


def test_palette_with_transparency():
    p = Image.new("P", (8, 8), 0)
    p.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    p.putpixel((3, 3), 1)
    p.info["transparency"] = 0  # palette entry 0 is transparent
    out = decode_image(encode(p, "PNG", transparency=0))
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[3, 3], [200, 100, 50])
    p2 = Image.new("P", (4, 4), 1)
    p2.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    np.testing.assert_array_equal(decode_image(encode(p2, "PNG"))[0, 0], [200, 100, 50])


def test_cmyk_and_16bit():
    cmyk = Image.fromarray(rand_rgb(16, 12, 4)).convert("CMYK")
    out = decode_image(encode(cmyk, "JPEG", quality=100))
    assert out.shape == (12, 16, 3)
    ref = np.asarray(Image.open(io.BytesIO(encode(cmyk, "JPEG", quality=100))).convert("RGB"))
    np.testing.assert_array_equal(out, ref)
    v = np.array([[0, 128, 257, 65535], [1000, 30000, 60000, 65534]], dtype=np.uint16)
    im16 = Image.fromarray(v)  # mode I;16
    data = encode(im16, "PNG")
    opened = Image.open(io.BytesIO(data)).mode
    assert opened.startswith("I")
    out = decode_image(data)
    np.testing.assert_array_equal(out[..., 0], np.floor(v / 257.0 + 0.5).astype(np.uint8))
    out_tiff = decode_image(encode(im16, "TIFF"))
    np.testing.assert_array_equal(out_tiff[..., 0], np.floor(v / 257.0 + 0.5).astype(np.uint8))


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out = decode_image(buf.getvalue())
    assert out.shape == (10, 10, 3) and tuple(out[5, 5]) == (255, 0, 0)


@pytest.mark.parametrize("orientation, rotate", [(1, lambda a: a), (3, lambda a: np.rot90(a, 2)),
                                                  (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1)),
                                                  (2, lambda a: a[:, ::-1])])
def test_exif_orientation_applied(orientation, rotate):
    arr = rand_rgb(30, 20, 5)
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = decode_image(encode(Image.fromarray(arr), "PNG", exif=exif.tobytes()))
    np.testing.assert_array_equal(out, rotate(arr))


def test_exif_rotated_jpeg_swaps_size():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(rand_rgb(40, 20, 6)), "JPEG", exif=exif.tobytes())
    assert decode_image(data).shape == (40, 20, 3)


def _png_header_only(w, h):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def test_bomb_refused_before_decoding(monkeypatch):
    # 10000 x 10000 = 100 MP: over the 50 MP default, under PIL's own limit. The file has no
    # pixel data at all, so reaching the decoder would give "truncated", not "too_large".
    from PIL import ImageFile

    def no_decode(self):
        raise AssertionError("decoder must not run")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    with pytest.raises(RowError) as ei:
        decode_image(_png_header_only(10000, 10000))
    assert ei.value.kind == "too_large" and "10000x10000" in ei.value.message
    with pytest.raises(RowError) as ei:   # PIL's own DecompressionBombError maps too
        decode_image(_png_header_only(100000, 100000), max_pixels=50_000_000)
    assert ei.value.kind == "too_large"


def test_configurable_pixel_limit():
    data = encode(rand_rgb(20, 20), "PNG")
    assert decode_image(data, max_pixels=400).shape == (20, 20, 3)
    with pytest.raises(RowError, match="400 pixels is over the limit of 399"):
        decode_image(data, max_pixels=399)


def test_sniff():
    assert sniff_format(encode(rand_rgb(4, 4), "PNG")) == "PNG"
    assert sniff_format(encode(rand_rgb(4, 4), "JPEG")) == "JPEG"
    assert sniff_format(encode(rand_rgb(4, 4), "WEBP")) == "WEBP"
    assert sniff_format(b"hello") is None


def test_encode_formats():
    arr = rand_rgb(50, 40, 7)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encode_image(arr, "png")))), arr)
    webp = encode_image(arr, "webp", lossless=True)
    assert webp[8:12] == b"WEBP"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(webp)).convert("RGB")), arr)
    hi, lo = encode_image(arr, "jpeg", quality=95), encode_image(arr, "jpeg", quality=20)
    assert hi[:3] == b"\xff\xd8\xff" and len(lo) < len(hi)
    lossy = encode_image(arr, "webp", quality=50)
    assert Image.open(io.BytesIO(lossy)).size == (50, 40)
    with pytest.raises(ValueError):
        encode_image(arr, "gif")


def test_png_level_changes_bytes_never_pixels():
    """Smooth content with noise, like a photo: every zlib level decodes to the same pixels; level 0 stores."""
    arr = rand_rgb(128, 96, 3)  # [96, 128, 3]: gradients and noise
    sizes = {}
    for level in (0, 1, 6, 9):
        data = encode_image(arr, "png", png_level=level)
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), arr)
        sizes[level] = len(data)
    assert sizes[0] > 96 * 128 * 3 > sizes[1] >= sizes[6] >= sizes[9], sizes
