"""JPEG in, JPEG out without generation loss: keep the source's blocks, replace only the repainted ones.

A baseline or progressive JPEG stores 8x8 blocks of quantised DCT coefficients, grouped in MCUs (minimum coded
units: 16x16 px for 4:2:0, 16x8 for 4:2:2, 8x8 for 4:4:4 and greyscale). ``transplant`` reads the source's
coefficients (``jpeglib``, through libjpeg-turbo), finds the MCUs in which the pasted-back output differs from
the decoded source (these lie inside the mask after dilation and feather: the paste-back changes nothing else),
encodes only those MCUs from the output's pixels with the source's own quantisation tables and sampling factors,
and writes the source's coefficients back with them replaced. Every other block keeps its exact coefficients,
so a decoder gives the same pixels there as for the source, except within ``CHROMA_MARGIN_PX`` of a replaced
MCU where the chroma is subsampled: libjpeg's "fancy" upsampling interpolates each output pixel from the two
nearest chroma samples, so a changed chroma sample reaches one pixel past its MCU.

Orientation: the coefficients are in the stored orientation; the output keeps the source's EXIF orientation
tag, so the transplant works in stored orientation: the output (in display orientation, as decode_image gives it)
is turned back with an exact pixel permutation, never resampled.

Sources this does not handle raise ``Refused`` with a sentence saying why (CMYK/YCCK and other colour spaces,
sampling other than 4:4:4/4:2:2/4:2:0, 12-bit, arithmetic coding); the caller (io/outputs.py) writes the row
as PNG instead and records the reason. Progressive and restart-marker sources are handled; the output is
baseline without restart markers (the coefficients, hence the pixels, are the same; only the entropy coding
differs). A greyscale source gives a greyscale output: the repaint's luminance is kept, its colour dropped.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .geometry import window_inside

CHROMA_MARGIN_PX = 1          # reach of libjpeg's fancy chroma upsampling past a replaced MCU (0 without subsampling)
JPEGLIB_VERSION = "turbo210"  # jpeglib bundles several libjpegs; libjpeg-turbo is several times faster than 6b
_LUMA_SAMPLING = {(1, 1), (2, 1), (2, 2)}  # (h, v) of the luma component (4:4:4, 4:2:2, 4:2:0); chroma is (1, 1)
_ORIENTATION = 0x0112


class Refused(Exception):
    """A source the transplant does not handle; the message says why."""


@dataclass(frozen=True)
class Layout:
    """What the transplant needs of a source: MCU size in blocks (h, v), colour or grey, EXIF orientation."""
    h: int
    v: int
    grey: bool
    orientation: int
    width: int = 0     # stored orientation
    height: int = 0

    @property
    def mcu(self) -> tuple[int, int]:
        """(height, width) of an MCU in pixels."""
        return 8 * self.v, 8 * self.h

    @property
    def margin(self) -> int:
        """Pixels past a replaced MCU whose decoded value may change (the chroma upsampling's reach)."""
        return CHROMA_MARGIN_PX if (self.h, self.v) != (1, 1) and not self.grey else 0


def inspect(source: bytes) -> Layout:
    """The source's layout from its header (no pixel decoded), or Refused naming what is not handled."""
    if not source.startswith(b"\xff\xd8\xff"):
        raise Refused("the source is not a JPEG")
    frame = next(((m, data) for m, data in header_segments(source) if m in _SOF), None)
    if frame is not None and frame[1][:1] not in (b"", b"\x08"):  # Pillow stops at these with a vaguer error
        raise Refused(f"{frame[1][0]}-bit JPEG: only 8-bit sources are transplanted")
    try:
        im = Image.open(io.BytesIO(source))
        layers, mode, exif = list(getattr(im, "layer", [])), im.mode, im.getexif()
    except Exception as e:  # noqa: BLE001 - a header PIL cannot parse is refused, never fatal
        raise Refused(f"the JPEG header does not parse ({type(e).__name__})") from None
    if mode not in ("RGB", "L") or len(layers) not in (1, 3):
        raise Refused(f"{mode} JPEG ({len(layers)} components): only YCbCr and greyscale sources are transplanted")
    # libjpeg takes three components as RGB under an Adobe segment with transform 0, or with ids "R", "G", "B"
    if len(layers) == 3 and (im.info.get("adobe_transform") == 0 or [x[0] for x in layers] == [82, 71, 66]):
        raise Refused("RGB-coded JPEG (not YCbCr): only YCbCr and greyscale sources are transplanted")
    if frame is not None and frame[0] >= 0xC9:  # SOF9..SOF15: arithmetic coding
        raise Refused("arithmetic-coded JPEG: only Huffman-coded sources are transplanted")
    # Pillow's layer entries are (id, high nibble, low nibble, table): H is the high nibble (JPEG spec B.2.2)
    (_, h, v, _), *chroma = layers
    if len(layers) == 1:
        h, v = 1, 1  # a single component's factors do not matter: its MCU is one block
    if (h, v) not in _LUMA_SAMPLING or any((ch, cv) != (1, 1) for _, ch, cv, _ in chroma):
        factors = ", ".join(f"{a}x{b}" for _, a, b, _ in layers)
        raise Refused(f"sampling factors {factors}: only 4:4:4, 4:2:2 and 4:2:0 are transplanted")
    orientation = exif.get(_ORIENTATION, 1)
    return Layout(h=h, v=v, grey=len(layers) == 1, orientation=orientation if orientation in range(1, 9) else 1,
                  width=im.size[0], height=im.size[1])


def header_segments(source: bytes):
    """(marker, payload) of each segment before the first scan (SOS), reading segment headers only."""
    i = 2
    while i + 4 <= len(source) and source[i] == 0xFF:
        marker, length = source[i + 1], int.from_bytes(source[i + 2:i + 4], "big")
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xDA or length < 2:
            return
        yield marker, source[i + 4:i + 2 + length]
        i += 2 + length


_SOF = {m for m in range(0xC0, 0xD0) if m not in (0xC4, 0xC8, 0xCC)}  # frame headers (DHT, JPG, DAC are not)


# ---- orientation: display = F(stored) as Pillow's exif_transpose applies it ---------------------------------

def stored_view(display: np.ndarray, orientation: int) -> np.ndarray:
    """The stored-orientation view (no copy) of a display-orientation array: the inverse of exif_transpose."""
    d = display
    return {1: lambda: d, 2: lambda: d[:, ::-1], 3: lambda: d[::-1, ::-1], 4: lambda: d[::-1],
            5: lambda: d.swapaxes(0, 1), 6: lambda: np.rot90(d, 1), 7: lambda: np.rot90(d, 2).swapaxes(0, 1),
            8: lambda: np.rot90(d, -1)}[orientation]()


def stored_coords(y: np.ndarray, x: np.ndarray, orientation: int, height: int, width: int):
    """Stored (row, column) of display pixels (y, x); `height`, `width`: the stored image's size."""
    return {1: (y, x), 2: (y, width - 1 - x), 3: (height - 1 - y, width - 1 - x), 4: (height - 1 - y, x),
            5: (x, y), 6: (height - 1 - x, y), 7: (height - 1 - x, width - 1 - y), 8: (x, width - 1 - y)}[orientation]


def changed_mcus(final: np.ndarray, original: np.ndarray, windows, layout: Layout) -> list[np.ndarray]:
    """Per window where anything changed, the stored-orientation MCUs [[row, col], ...] in which `final`
    differs from `original` (both display orientation), in row-major order; only the windows are compared
    (nothing else is pasted)."""
    dh, dw = final.shape[:2]
    sh, sw = (dw, dh) if layout.orientation >= 5 else (dh, dw)
    (mh, mw), out = layout.mcu, []
    for window in windows:
        x0, y0, x1, y1 = window_inside(window, dw, dh)
        ne = final[y0:y1, x0:x1] != original[y0:y1, x0:x1]
        changed = ne[..., 0] | ne[..., 1] | ne[..., 2]  # several times faster than any(axis=2)
        if changed.any():
            # the window is a rectangle in stored orientation too, from its corners' lowest stored row and column
            r, c = stored_coords(np.array([y0, y1 - 1]), np.array([x0, x1 - 1]), layout.orientation, sh, sw)
            out.append(_mcu_flags(stored_view(changed, layout.orientation), int(r.min()), int(c.min()), mh, mw))
    return out


def _mcu_flags(changed: np.ndarray, r0: int, c0: int, mh: int, mw: int) -> np.ndarray:
    """[[row, col], ...] of the MCUs holding a True pixel of `changed`, a stored-orientation box whose top-left
    pixel is (r0, c0): the box is padded out to whole MCUs and reduced per MCU (no per-pixel coordinates)."""
    g0, k0 = r0 // mh, c0 // mw
    rows, cols = -(-(r0 + changed.shape[0]) // mh) - g0, -(-(c0 + changed.shape[1]) // mw) - k0
    grid = np.zeros((rows * mh, cols * mw), bool)
    grid[r0 - g0 * mh:r0 - g0 * mh + changed.shape[0], c0 - k0 * mw:c0 - k0 * mw + changed.shape[1]] = changed
    hit_r, hit_c = np.nonzero(grid.reshape(rows, mh, cols, mw).any(axis=(1, 3)))
    return np.stack([hit_r + g0, hit_c + k0], 1)


# ---- encoding pixels to quantised coefficients, as a JPEG encoder would -------------------------------------

def _dct_matrix() -> np.ndarray:
    k = np.arange(8)
    c = np.cos((2 * k[None, :] + 1) * k[:, None] * np.pi / 16) * np.sqrt(2 / 8)
    c[0] /= np.sqrt(2)
    return c  # orthonormal DCT-II: for 8x8 blocks it is exactly the JPEG FDCT (ITU T.81 A.3.3)


_C = _dct_matrix()


def quantised_blocks(plane: np.ndarray, qt: np.ndarray) -> np.ndarray:
    """Samples [8m, 8n] (0..255) -> quantised coefficients [m, n, 8, 8] (row = vertical frequency), int16."""
    m, n = plane.shape[0] // 8, plane.shape[1] // 8
    blocks = (plane.astype(np.float64) - 128.0).reshape(m, 8, n, 8).transpose(0, 2, 1, 3)
    return np.rint((_C @ blocks @ _C.T) / qt).astype(np.int16)


def ycbcr_planes(rgb: np.ndarray, layout: Layout) -> list[np.ndarray]:
    """JFIF colour conversion (ITU T.871), chroma averaged over each (v, h) group of pixels: the planes of
    the components at their own resolution."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    if layout.grey:
        return [y]
    cb = -0.168735892 * r - 0.331264108 * g + 0.5 * b + 128.0
    cr = 0.5 * r - 0.418687589 * g - 0.081312411 * b + 128.0
    H, W = y.shape
    return [y] + [c.reshape(H // layout.v, layout.v, W // layout.h, layout.h).mean(axis=(1, 3)) for c in (cb, cr)]


def encode_box(stored: np.ndarray, box: tuple[int, int, int, int], layout: Layout, tables: list) -> list:
    """Quantised coefficients of the MCUs rows r0..r1, columns c0..c1 (end-exclusive) of the stored-orientation
    image, one array [blocks high, blocks wide, 8, 8] per component. Past the image's edge the edge pixels are
    repeated (as libjpeg pads)."""
    r0, r1, c0, c1 = box
    (mh, mw), (H, W) = layout.mcu, stored.shape[:2]
    y0, y1, x0, x1 = r0 * mh, r1 * mh, c0 * mw, c1 * mw
    crop = np.ascontiguousarray(stored[y0:min(y1, H), x0:min(x1, W)])
    crop = np.pad(crop, ((0, y1 - y0 - crop.shape[0]), (0, x1 - x0 - crop.shape[1]), (0, 0)), mode="edge")
    return [quantised_blocks(p, q) for p, q in zip(ycbcr_planes(crop, layout), tables)]


# ---- the transplant ----------------------------------------------------------------------------------------

def _jpeglib():
    import jpeglib

    if jpeglib.version.get() != JPEGLIB_VERSION:
        jpeglib.version.set(JPEGLIB_VERSION)
    return jpeglib


def read_coefficients(jpeglib, path: str, source: bytes, layout: Layout):
    """jpeglib's DCTJPEG of the source at `path`, described from the header read by `inspect` rather than by
    jpeglib.read_dct, whose information pass entropy-decodes the whole file once more (about 0.13 s at 12 MP);
    tests/io/test_jpeg_transplant.py compares the two. The source's JFIF segment is left out because libjpeg
    writes its own; every other APPn and COM segment (EXIF, ICC, XMP) is kept."""
    from jpeglib._cenum import Colorspace, MarkerType
    from jpeglib._marker import Marker

    h, w, up = layout.height, layout.width, lambda a, b: -(-a // b)
    dims = [[up(h, 8), up(w, 8)]] + ([] if layout.grey else [[up(h, 8 * layout.v), up(w, 8 * layout.h)]] * 2)
    sampling = [[1, 1]] if layout.grey else [[layout.v, layout.h], [1, 1], [1, 1]]
    markers = [Marker(type=MarkerType(m), length=len(data), content=data) for m, data in header_segments(source)
               if (0xE0 <= m <= 0xEF or m == 0xFE) and not (m == 0xE0 and data.startswith(b"JFIF\0"))]
    return jpeglib.DCTJPEG(
        path=path, content=source, height=h, width=w, block_dims=np.array(dims, np.int32),
        samp_factor=np.array(sampling, np.int32), markers=markers, huffmans=None, num_scans=1,
        jpeg_color_space=Colorspace.JCS_GRAYSCALE if layout.grey else Colorspace.JCS_YCbCr,
        progressive_mode=False, quant_tbl_no=None, Y=None, Cb=None, Cr=None, K=None, qt=None)


def _replace(components: list, tables: list, stored: np.ndarray, mcus: list[np.ndarray], layout: Layout) -> None:
    """Encode each group's MCU box and write its changed MCUs' blocks into the components' arrays (in place)."""
    for group in mcus:
        (r0, c0), (r1, c1) = group.min(axis=0), group.max(axis=0) + 1
        new = encode_box(stored, (r0, r1, c0, c1), layout, tables)
        sel = np.zeros((r1 - r0, c1 - c0), bool)
        sel[group[:, 0] - r0, group[:, 1] - c0] = True
        for k, (arr, fresh) in enumerate(zip(components, new)):
            fv, fh = (layout.v, layout.h) if k == 0 else (1, 1)
            # a component's block array stops at the image's last block, not at the MCU grid's end
            dst = arr[r0 * fv:r1 * fv, c0 * fh:c1 * fh]
            pick = sel.repeat(fv, 0).repeat(fh, 1)[:dst.shape[0], :dst.shape[1]]
            dst[pick] = fresh[:dst.shape[0], :dst.shape[1]][pick]


def transplant(source: bytes, final: np.ndarray, original: np.ndarray, windows) -> tuple[bytes, int]:
    """(output JPEG bytes, MCUs replaced) for a JPEG `source` whose decoded pixels are `original` and whose
    pasted-back output is `final` (both display orientation, uint8 [H, W, 3]); `windows`: the regions' windows
    (only they can differ). Raises Refused for sources it does not handle. With nothing changed the source's
    own bytes are returned."""
    if not windows and source.startswith(b"\xff\xd8\xff"):
        return source, 0  # an unchanged row: the source decodes to its own pixels, whatever its kind
    layout = inspect(source)
    mcus = changed_mcus(final, original, windows, layout)
    if not mcus:
        return source, 0
    jpeglib = _jpeglib()
    with tempfile.TemporaryDirectory(prefix="rayinpaint-jpeg-") as tmp:
        # jpeglib works on files: it writes the source's bytes to a temporary file of its own when it reads
        src, dst = os.path.join(tmp, "source.jpg"), os.path.join(tmp, "output.jpg")
        jpeg = read_coefficients(jpeglib, src, source, layout)
        components = [jpeg.Y] + ([] if layout.grey else [jpeg.Cb, jpeg.Cr])
        stored = stored_view(final, layout.orientation)
        if stored.shape[:2] != (layout.height, layout.width):
            raise Refused(f"the output is {stored.shape[1]}x{stored.shape[0]} in stored orientation, the source "
                          f"{layout.width}x{layout.height}")
        tables = [np.asarray(jpeg.qt[int(n)], np.float64) for n in jpeg.quant_tbl_no[:len(components)]]
        _replace(components, tables, stored, mcus, layout)
        # Written from the arrays alone (not re-read from the source file, which costs a second entropy
        # decode); the source's APPn and COM segments (EXIF, ICC, XMP) are kept, so its orientation tag still
        # applies; libjpeg writes the JFIF segment itself.
        jpeg.content = None
        jpeg.write_dct(dst)
        with open(dst, "rb") as f:
            data = f.read()
    return data, len(np.unique(np.concatenate(mcus), axis=0))
