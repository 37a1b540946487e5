"""What the report's sample cards show besides the preview sheet: the row's prompt, a link to the full-size
output, and a zoomed crop of the repainted area (input and output side by side, from the full-size images), since
a mark of a few pixels is invisible at card size.

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
from rayinpaint.io.storage import filesystem, join_uri

log = logging.getLogger("rayinpaint.job")

ZOOM_PX = 240         # height of the zoomed crop pair
_COLUMNS = ["id", "prompt", "output_uri", "image_uri", "window", "mask_pixels"]


def card_details(root: str, storage, ledger, names: set) -> dict:
    """{output file stem: {"id", "prompt", "output_uri", "mask_pixels", "zoom": jpeg bytes or None}}."""
    found: dict = {}
    for path in reversed(ledger.shard_paths()):
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
    """The mask's crop window from the input and the output, side by side, as a JPEG; None when unavailable."""
    window = row.get("window")
    if not window or not row.get("output_uri"):
        return None
    try:
        out = _read(join_uri(root, "images", row["output_uri"].rsplit("/", 1)[-1]), storage)
        crops = [_crop(out, window)]
        if row.get("image_uri"):
            crops.insert(0, _crop(_read(row["image_uri"], storage), window))
    except Exception as e:  # noqa: BLE001 - a card without a zoom is better than no report
        log.debug("no zoom for %s: %s", row.get("id"), e)
        return None
    scaled = [c.resize((max(1, round(c.width * ZOOM_PX / c.height)), ZOOM_PX), Image.NEAREST) for c in crops]
    sheet = Image.new("RGB", (sum(c.width for c in scaled) + 4 * (len(scaled) - 1), ZOOM_PX), "white")
    x = 0
    for c in scaled:
        sheet.paste(c, (x, 0))
        x += c.width + 4
    buf = io.BytesIO()
    sheet.save(buf, "JPEG", quality=88)
    return buf.getvalue()


def _read(uri: str, storage) -> np.ndarray:
    fs, path = filesystem(uri, storage)
    return decode_image(fs.cat_file(path))


def _crop(img: np.ndarray, window) -> Image.Image:
    h, w = img.shape[:2]
    x0, y0, x1, y1 = max(0, window[0]), max(0, window[1]), min(w, window[2]), min(h, window[3])
    return Image.fromarray(img[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)])
