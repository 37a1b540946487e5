"""Finish one row: paste the model output back, encode, write, and build its results row.

``finish_row`` mirrors ``prepare_row``: it never raises for a row's problem. A "ready" row whose
result pastes, encodes and writes becomes status "ok"; an "unchanged" row (empty mask) writes
the decoded original and keeps status "unchanged"; an "error" row writes nothing. Any failure in
here (bad model output, encode) turns the row into an error row, except a failed write to the output
(after retries): that is the output's problem, not the row's, so ``OutputWriteError`` is raised and the
caller records nothing for the row.

The key promise (README "What it promises"): in the written image, every pixel farther than
``feather`` px from the dilated repaint mask carries the decoded input's exact bytes (for PNG
and lossless WebP outputs; JPEG and lossy WebP re-encode the whole image).
"""

from __future__ import annotations

import io
import time

import numpy as np
from PIL import Image, ImageFilter

from .errors import OutputWriteError, RowError, redact_uri
from .geometry import paste_back, window_inside
from .images import decode_image, encode_image
from .masks import bbox, feather_alpha
from .naming import image_path, output_name
from .settings import OutputSettings, PrepareSettings
from .storage import join_uri, write_bytes

PREVIEW_HEIGHT = 192


def _decode_repaint(png: bytes, width: int, height: int) -> np.ndarray:
    m = np.asarray(Image.open(io.BytesIO(png)).convert("1"), dtype=bool)
    if m.shape != (height, width):
        raise RowError("finish_failed", f"repaint mask is {m.shape[1]}x{m.shape[0]}, image {width}x{height}")
    return m


def _check_result(result, resolution: int) -> np.ndarray:
    if result is None:
        raise RowError("bad_result", "no model output for a ready row")
    arr = np.asarray(result)
    if arr.dtype != np.uint8 or arr.shape != (resolution, resolution, 3):
        raise RowError("bad_result", f"model output must be uint8 [{resolution}, {resolution}, 3], "
                                     f"got {arr.dtype} {list(arr.shape)}")
    return arr


def composite(prepared: dict, result, settings: PrepareSettings) -> tuple[np.ndarray, np.ndarray]:
    """(final uint8 [H, W, 3], original uint8 [H, W, 3]) for a prepared row and its model output."""
    rgb = decode_image(prepared["source"], "image", settings.max_pixels)
    h, w = rgb.shape[:2]
    if (w, h) != (prepared["width"], prepared["height"]):
        raise RowError("finish_failed", f"source decodes to {w}x{h}, prepare saw "
                                        f"{prepared['width']}x{prepared['height']}")
    if prepared["status"] == "unchanged":
        return rgb, rgb
    arr = _check_result(result, int(prepared.get("resolution") or settings.resolution))
    repaint = _decode_repaint(prepared["repaint_mask"], w, h)
    window = tuple(int(v) for v in prepared["window"])
    ix0, iy0, ix1, iy1 = window_inside(window, w, h)
    box = bbox(repaint)
    # The window was built to hold the dilated mask plus the feather band (geometry.py); the
    # feather distances are computed on that part only, so check it really holds the mask.
    if box is None or box[0] < ix0 or box[1] < iy0 or box[2] > ix1 or box[3] > iy1:
        raise RowError("finish_failed", f"repaint mask {box} is not inside the window {list(window)}")
    alpha = feather_alpha(repaint[iy0:iy1, ix0:ix1], settings.feather)
    return paste_back(rgb, arr, window, alpha), rgb


def preview_jpeg(original: np.ndarray, final: np.ndarray, repaint: np.ndarray | None) -> bytes:
    """Side-by-side thumbnail: input | input with the repaint outline in red | output."""
    h, w = original.shape[:2]
    tw = max(1, round(w * PREVIEW_HEIGHT / h))
    size = (tw, PREVIEW_HEIGHT)
    a = Image.fromarray(original).resize(size, Image.BILINEAR)
    c = Image.fromarray(final).resize(size, Image.BILINEAR)
    b = a.copy()
    if repaint is not None and repaint.any():
        m = Image.fromarray(repaint.astype(np.uint8) * 255).resize(size, Image.NEAREST)
        edge = np.asarray(m) > np.asarray(m.filter(ImageFilter.MinFilter(3)))
        arr = np.asarray(b).copy()
        arr[edge] = (255, 0, 0)
        b = Image.fromarray(arr)
    sheet = Image.new("RGB", (3 * tw + 8, PREVIEW_HEIGHT), (255, 255, 255))
    for i, im in enumerate((a, b, c)):
        sheet.paste(im, (i * (tw + 4), 0))
    buf = io.BytesIO()
    sheet.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def finish_row(prepared: dict, result, settings: PrepareSettings, out: OutputSettings,
               run_info: dict | None = None, preview: bool = False) -> dict:
    """Prepared row + model output (uint8 [R, R, 3] or None) -> one results row (RESULTS_SCHEMA)."""
    t0 = time.perf_counter()
    run_info = run_info or {}
    row = _results_row(prepared, settings, run_info)
    t_write = 0.0
    final = original = repaint = None
    try:
        status = prepared.get("status")
        if status in ("ready", "unchanged"):
            final, original = composite(prepared, result, settings)
            if status == "ready" and preview:
                repaint = _decode_repaint(prepared["repaint_mask"], original.shape[1], original.shape[0])
            uri, hashed, t_write = _write_image(final, row["id"], out)
            row.update(status="ok" if status == "ready" else "unchanged", output_uri=redact_uri(uri),
                       output_name_hashed=hashed)
        elif status != "error":
            raise RowError("finish_failed", f"unknown prepared status {status!r}")
    except OutputWriteError:
        raise
    except RowError as e:
        row.update(status="error", error_kind=e.kind, error=e.message, output_uri=None, window=None)
        final = None
    except Exception as e:  # noqa: BLE001 - one row must never stop the job
        row.update(status="error", error_kind="finish_failed", output_uri=None, window=None,
                   error=f"unexpected {type(e).__name__} while finishing: {redact_uri(str(e))[:300]}")
        final = None
    row["timings"] = {
        "fetch": prepared.get("t_fetch"), "decode": prepared.get("t_decode"),
        "prepare": prepared.get("t_prepare"), "inpaint": run_info.get("t_inpaint"),
        "finish": time.perf_counter() - t0, "write": t_write,
    }
    if preview:
        row["preview_jpeg"] = preview_jpeg(original, final, repaint) if final is not None else None
    return row


def _results_row(prepared: dict, settings: PrepareSettings, run_info: dict) -> dict:
    """The results row as prepare left it (no output yet)."""
    return {
        "id": prepared.get("id"), "status": prepared.get("status"), "error_kind": prepared.get("error_kind"),
        "error": prepared.get("error"), "output_uri": None, "output_name_hashed": None,
        "image_uri": prepared.get("image_uri"), "width": prepared.get("width"),
        "height": prepared.get("height"), "seed": prepared.get("seed"),
        "prompt": prepared.get("prompt"), "negative_prompt": prepared.get("negative_prompt"),
        "prompt_truncated": prepared.get("prompt_truncated"),
        "sampler": run_info.get("sampler"), "steps": run_info.get("steps"),
        "guidance": run_info.get("guidance"), "strength": run_info.get("strength"),
        "resolution": prepared.get("resolution") or settings.resolution,
        "window": prepared.get("window") if prepared.get("status") == "ready" else None,
        "mask_pixels": prepared.get("mask_pixels"), "model_sha256": run_info.get("model_sha256"),
        "settings_fingerprint": run_info.get("settings_fingerprint"),
    }


def _write_image(final: np.ndarray, row_id: str, out: OutputSettings) -> tuple[str, bool, float]:
    """Encode and write the output image: (its URI, whether its name is hashed, seconds writing). An encoding
    failure is the row's (RowError); a write failure is the output's (OutputWriteError)."""
    try:
        data = encode_image(final, out.format, out.quality, out.lossless, out.png_level)
    except Exception as e:  # noqa: BLE001
        raise RowError("write_failed", f"encoding {out.format} failed: {type(e).__name__}: {e}") from None
    stem, hashed = output_name(row_id)
    uri = join_uri(out.root, "images", f"{image_path(stem, out.layout)}.{out.extension}")
    t1 = time.perf_counter()
    try:
        write_bytes(uri, data, out.storage)
    except RowError as e:
        raise OutputWriteError(f"cannot write the output image {e.message}") from None
    return uri, hashed, time.perf_counter() - t1
