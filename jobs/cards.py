"""What the report's sample cards show besides the preview sheet: the row's prompt, a link to the full-size
output, and a zoomed crop of the repainted area (input and output side by side, from the full-size images: the
pixels that changed, with a margin), since a mark of a few pixels is invisible at card size.

Built on the driver for the few sample rows only (`--preview-count`): each sample row's results row is found by
its output file name, and its input and output images are read once.
"""

from __future__ import annotations

import io
import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from rayinpaint.io.images import decode_image
from rayinpaint.io.masks import bbox
from rayinpaint.io.storage import filesystem, join_uri

log = logging.getLogger("rayinpaint.job")

ZOOM_PX = 192         # height of the zoomed crop pair (the preview sheet's height, so the two sit side by side)
ZOOM_MAX_W = 320      # width of each crop at most
_CHANGED = 12         # a pixel counts as repainted when a channel moved by more than this (JPEG output is noisy)
_COLUMNS = ["id", "prompt", "output_uri", "image_uri", "window", "regions", "mask_pixels", "mask_source", "mask_uri"]


def image_path(output_uri: str) -> str:
    """The output image's path below the output folder (images/{stem}.ext, or images/ab/{stem}.ext in the
    hashed layout), from its results row's output_uri."""
    return "images/" + output_uri.rsplit("/images/", 1)[-1]


def mask_path(mask_uri: str) -> str:
    """A detector's mask's path below the output folder (masks/{stem}.png, or masks/ab/{stem}.png), from its results
    row's mask_uri."""
    return "masks/" + mask_uri.rsplit("/masks/", 1)[-1]


def card_details(root: str, storage, ledger, names: set) -> dict:
    """{output file stem: {"id", "prompt", "output_uri", "mask_pixels", "zoom": jpeg bytes or None}}."""
    found: dict = {}
    for path in reversed(ledger.paths()):
        if len(found) == len(names):
            break
        with ledger.fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            columns = [c for c in _COLUMNS if c in pf.schema_arrow.names]
            for g in range(pf.num_row_groups):  # a row group at a time, and only its rows of `names` as Python
                t = pf.read_row_group(g, columns=columns)
                if "output_uri" not in columns:
                    continue
                stems = pc.replace_substring_regex(pc.replace_substring_regex(t.column("output_uri"), "^.*/", ""),
                                                   r"\.[^.]*$", "")
                wanted = pc.fill_null(pc.is_in(stems, value_set=pa.array(sorted(names), pa.string())), False)
                for row in t.filter(wanted).to_pylist():
                    stem = row["output_uri"].rsplit("/", 1)[-1].rsplit(".", 1)[0]
                    if stem not in found:
                        found[stem] = row
    for stem, row in found.items():
        row["zoom"] = _zoom(root, storage, row)
    return found


def _zoom(root: str, storage, row: dict) -> bytes | None:
    """The repainted area (the pixels that changed, inside the mask's crop window, with a margin) from the input
    and the output, side by side, as a JPEG; None when unavailable."""
    window = row.get("window")
    if not window or not row.get("output_uri"):
        return None
    try:
        out = _read(join_uri(root, image_path(row["output_uri"])), storage)
        inp = _read(row["image_uri"], storage) if row.get("image_uri") else None
        box = _changed_box(inp, out, window)
        crops = [_crop(a, box) for a in (inp, out) if a is not None]
    except Exception as e:  # noqa: BLE001 - a card without a zoom is better than no report
        log.debug("no zoom for %s: %s", row.get("id"), e)
        return None
    scale = min(ZOOM_PX / crops[0].height, ZOOM_MAX_W / crops[0].width)  # a wide mask: capped width, less tall
    scaled = [c.resize((max(1, round(c.width * scale)), max(1, round(c.height * scale))),
                       Image.NEAREST if scale > 1 else Image.BILINEAR) for c in crops]
    sheet = Image.new("RGB", (sum(c.width for c in scaled) + 4 * (len(scaled) - 1), max(c.height for c in scaled)),
                      "white")
    x = 0
    for c in scaled:
        sheet.paste(c, (x, 0))
        x += c.width + 4
    buf = io.BytesIO()
    sheet.save(buf, "JPEG", quality=88)
    return buf.getvalue()


def _changed_box(inp, out: np.ndarray, window) -> tuple:
    """The box of the pixels that differ between input and output inside `window` (the model's crop, which
    holds the mask with context), grown by a quarter of its size (at least 8 px, at least 48 px square) so the
    edit is seen in its surroundings; the window itself when nothing changed or the input is unknown."""
    h, w = out.shape[:2]
    x0, y0, x1, y1 = max(0, window[0]), max(0, window[1]), min(w, window[2]), min(h, window[3])
    if inp is None or inp.shape != out.shape or x1 <= x0 or y1 <= y0:
        return x0, y0, x1, y1
    diff = np.abs(inp[y0:y1, x0:x1].astype(np.int16) - out[y0:y1, x0:x1]).max(axis=2) > _CHANGED
    found = bbox(diff)
    if found is None:
        return x0, y0, x1, y1
    bx0, by0, bx1, by1 = found[0] + x0, found[1] + y0, found[2] + x0, found[3] + y0
    mx = max(8, (bx1 - bx0) // 4, (48 - (bx1 - bx0)) // 2)
    my = max(8, (by1 - by0) // 4, (48 - (by1 - by0)) // 2)
    return max(0, bx0 - mx), max(0, by0 - my), min(w, bx1 + mx), min(h, by1 + my)


def _read(uri: str, storage) -> np.ndarray:
    fs, path = filesystem(uri, storage)
    return decode_image(fs.cat_file(path))


def _crop(img: np.ndarray, window) -> Image.Image:
    h, w = img.shape[:2]
    x0, y0, x1, y1 = max(0, window[0]), max(0, window[1]), min(w, window[2]), min(h, window[3])
    return Image.fromarray(img[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)])
