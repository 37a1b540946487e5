"""Finish one row: paste the model output back, encode, write, and build its results row.

``finish_row`` mirrors ``prepare_row``: it never raises for a row's problem. A "ready" row whose
result pastes, encodes and writes becomes status "ok"; an "unchanged" row (empty mask) writes
the decoded original and keeps status "unchanged"; an "error" row writes nothing. Any failure in
here (bad model output, encode) turns the row into an error row, except a failed write to the output
(after retries): that is the output's problem, not the row's, so ``OutputWriteError`` is raised and the
caller records nothing for the row.

A row whose mask a detector made (or joined, --mask-from) also gets that mask, before dilation, written under
``{output}/masks/`` in the images' layout, and its URI in ``mask_uri``.

The encoded original comes inline, or is read again from its URI and checked against what prepare decoded
(``source_bytes``): an object replaced during the run makes the row a ``source_changed`` error, never an image
pasted over other pixels.

The key promise (README "What it promises"): in the written image, every pixel farther than
``feather`` px from the dilated repaint mask carries the decoded input's exact bytes (for PNG
and lossless WebP outputs; JPEG and lossy WebP re-encode the whole image). Under ``--format auto`` a JPEG
source keeps its own coefficients outside the repainted MCUs (io/outputs.py, io/jpeg_transplant.py), so decoded
pixels are exact beyond the repaint area rounded out to the MCU grid plus one pixel.
"""

from __future__ import annotations

import io
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .errors import OutputWriteError, RowError, redact_uri
from .geometry import paste_into, window_inside
from .images import EXTENSIONS, decode_image
from .masks import feather_alpha
from .naming import image_path, output_name
from .outputs import Encoded, encode_output
from .settings import OutputSettings, PrepareSettings
from .prepare import source_digest
from .results import ERROR, OK, UNCHANGED
from .storage import join_uri, read_bytes, write_bytes

PREVIEW_HEIGHT = 192
PREVIEW_MAX_WIDTH = 1024  # px per panel
NO_OUTPUT = {"output_format": None, "output_bytes": None, "output_fallback": None}


def _decode_repaint(png: bytes, width: int, height: int) -> np.ndarray:
    im = Image.open(io.BytesIO(png))
    m = np.asarray(im if im.mode == "1" else im.convert("1"), dtype=bool)  # prepare writes mode "1"
    if m.shape != (height, width):
        raise RowError("finish_failed", f"repaint mask is {m.shape[1]}x{m.shape[0]}, image {width}x{height}")
    return m


def _check_result(result, side: int, where: str) -> np.ndarray:
    """One region's model output (bytes or an array) as uint8 [side, side, 3]."""
    if result is None:
        raise RowError("bad_result", f"{where}: no model output")
    if isinstance(result, (bytes, bytearray, memoryview)):
        if len(result) != side * side * 3:
            raise RowError("bad_result", f"{where}: model output is {len(result)} bytes, not {side}x{side}x3")
        return np.frombuffer(result, np.uint8).reshape(side, side, 3)
    arr = np.asarray(result)
    if arr.dtype != np.uint8 or arr.shape != (side, side, 3):
        raise RowError("bad_result", f"{where}: model output must be uint8 [{side}, {side}, 3], "
                                     f"got {arr.dtype} {list(arr.shape)}")
    return arr


def _region_outputs(prepared: dict, results) -> list[tuple[tuple, np.ndarray]]:
    """(window, output uint8 [r, r, 3]) of each region of a ready row."""
    windows, sides = prepared.get("windows") or [], prepared.get("region_res") or []
    results = [] if results is None else list(results)
    if not windows or len(results) != len(windows) or len(sides) != len(windows):
        raise RowError("bad_result", f"{len(results)} model output(s) for {len(windows)} region(s)")
    return [(tuple(int(v) for v in w), _check_result(r, int(side), f"region {k + 1} of {len(windows)}"))
            for k, (w, side, r) in enumerate(zip(windows, sides, results))]


def source_bytes(prepared: dict, settings: PrepareSettings) -> bytes:
    """The encoded original prepare decoded: inline in the row, or read again from its URI (same storage options
    and retries as prepare) and checked against the size and digest prepare recorded."""
    uri = prepared.get("source_uri")
    if uri is None:
        if prepared.get("source") is None:
            raise RowError("finish_failed", "the prepared row carries neither the image nor its URI")
        return prepared["source"]
    try:
        data = read_bytes(uri, settings.storage)
    except RowError as e:
        raise RowError(e.kind, f"image read again to paste back: {e.message}") from None
    size, digest = prepared.get("source_size"), prepared.get("source_digest")
    if len(data) != size or source_digest(data) != digest:
        raise RowError("source_changed", f"image {redact_uri(uri)} changed during the run: prepare read {size} bytes "
                                         f"(digest {digest}), finish read {len(data)} (digest {source_digest(data)});"
                                         f" nothing was written for it, run again to process the new image")
    return data


def composite(prepared: dict, results, settings: PrepareSettings,
              source: bytes | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(final uint8 [H, W, 3], original uint8 [H, W, 3]) for a prepared row and its regions' model outputs
    (a list, one per region, in region order: bytes or uint8 [r, r, 3]); `source`: the encoded original when
    the caller has it already (`source_bytes`)."""
    source = source_bytes(prepared, settings) if source is None else source
    rgb = decode_image(source, "image", settings.max_pixels)
    h, w = rgb.shape[:2]
    if (w, h) != (prepared["width"], prepared["height"]):
        raise RowError("finish_failed", f"source decodes to {w}x{h}, prepare saw "
                                        f"{prepared['width']}x{prepared['height']}")
    if prepared["status"] == UNCHANGED:
        return rgb, rgb
    regions = _region_outputs(prepared, results)
    repaint = _decode_repaint(prepared["repaint_mask"], w, h)
    final, covered = rgb.copy(), 0
    for window, arr in regions:
        ix0, iy0, ix1, iy1 = window_inside(window, w, h)
        part = repaint[iy0:iy1, ix0:ix1]
        covered += np.count_nonzero(part)
        paste_into(final, arr, window, feather_alpha(part, settings.feather))
    # Each window holds its region's mask plus the feather band and the windows do not overlap (io/regions.py);
    # the feather distances are computed inside each window only, so check every mask pixel lies in exactly one.
    total = np.count_nonzero(repaint)
    if covered != total:
        raise RowError("finish_failed", f"the regions' windows {[list(w) for w, _ in regions]} hold {covered} of "
                                        f"the mask's {total} pixels")
    return final, rgb


def _outline(panel: Image.Image, mask: np.ndarray | None, colour: tuple) -> Image.Image:
    """The panel with the edge of `mask` (full size, resized to the panel) drawn in `colour`."""
    if mask is None or not mask.any():
        return panel
    m = Image.fromarray(mask.astype(np.uint8) * 255).resize(panel.size, Image.NEAREST)
    edge = np.asarray(m) > np.asarray(m.filter(ImageFilter.MinFilter(3)))
    arr = np.asarray(panel).copy()
    arr[edge] = colour
    return Image.fromarray(arr)


def preview_jpeg(original: np.ndarray, final: np.ndarray, repaint: np.ndarray | None, windows=(),
                 detected: np.ndarray | None = None) -> bytes:
    """Side-by-side thumbnail: input | input with the repaint outline in red, a detector's own mask (before
    dilation) in cyan and each region's window in yellow | output."""
    h, w = original.shape[:2]
    tw = min(PREVIEW_MAX_WIDTH, max(1, round(w * PREVIEW_HEIGHT / h)))  # a panorama: squeezed, not 65,000 px wide
    size = (tw, PREVIEW_HEIGHT)
    a = Image.fromarray(original).resize(size, Image.BILINEAR)
    c = Image.fromarray(final).resize(size, Image.BILINEAR)
    b = _outline(_outline(a.copy(), repaint, (255, 0, 0)), detected, (0, 220, 255))
    draw = ImageDraw.Draw(b)
    kx, ky = tw / w, PREVIEW_HEIGHT / h
    for x0, y0, x1, y1 in windows:
        draw.rectangle([round(x0 * kx), round(y0 * ky), max(round(x0 * kx), round(x1 * kx) - 1),
                        max(round(y0 * ky), round(y1 * ky) - 1)], outline=(255, 210, 0))
    sheet = Image.new("RGB", (3 * tw + 8, PREVIEW_HEIGHT), (255, 255, 255))
    for i, im in enumerate((a, b, c)):
        sheet.paste(im, (i * (tw + 4), 0))
    buf = io.BytesIO()
    sheet.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def finish_row(prepared: dict, result, settings: PrepareSettings, out: OutputSettings,
               run_info: dict | None = None, preview: bool = False) -> dict:
    """Prepared row + its regions' model outputs (see `composite`; None unless ready) -> one results row
    (RESULTS_SCHEMA)."""
    t0 = time.perf_counter()
    run_info = run_info or {}
    row = _results_row(prepared, settings, run_info)
    t_write = 0.0
    final = original = repaint = detected = None
    windows = []
    try:
        status = prepared.get("status")
        if status in ("ready", UNCHANGED):
            source = source_bytes(prepared, settings)
            final, original = composite(prepared, result, settings, source)
            if status == "ready" and preview:
                repaint = _decode_repaint(prepared["repaint_mask"], original.shape[1], original.shape[0])
                windows = prepared.get("windows") or []
                if prepared.get("used_mask"):
                    detected = _decode_repaint(prepared["used_mask"], original.shape[1], original.shape[0])
            encoded = encode_output(final, original, source, prepared.get("windows") or [], out)
            uri, hashed, t_write = _write_image(encoded, row["id"], out)
            if prepared.get("used_mask") and status == "ready":
                row["mask_uri"] = redact_uri(_write_mask(prepared["used_mask"], row["id"], out))
            row.update(status=OK if status == "ready" else UNCHANGED, output_uri=redact_uri(uri),
                       output_name_hashed=hashed, output_format=encoded.format, output_bytes=len(encoded.data),
                       output_fallback=encoded.fallback)
        elif status != ERROR:
            raise RowError("finish_failed", f"unknown prepared status {status!r}")
    except OutputWriteError:
        raise
    except RowError as e:
        row.update(status=ERROR, error_kind=e.kind, error=e.message, output_uri=None, window=None, regions=None,
                   **NO_OUTPUT)
        final = None
    except Exception as e:  # noqa: BLE001 - one row must never stop the job
        row.update(status=ERROR, error_kind="finish_failed", output_uri=None, window=None, regions=None, **NO_OUTPUT,
                   error=f"unexpected {type(e).__name__} while finishing: {redact_uri(str(e))[:300]}")
        final = None
    row["timings"] = {
        "fetch": prepared.get("t_fetch"), "decode": prepared.get("t_decode"),
        "prepare": prepared.get("t_prepare"), "inpaint": run_info.get("t_inpaint"),
        "finish": time.perf_counter() - t0, "write": t_write,
    }
    if preview:
        try:
            row["preview_jpeg"] = preview_jpeg(original, final, repaint, windows, detected) \
                if final is not None else None
        except Exception:  # noqa: BLE001 - a report thumbnail must never cost the row or its batch
            row["preview_jpeg"] = None
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
        "regions": _regions_column(prepared),
        "mask_pixels": prepared.get("mask_pixels"), "mask_source": prepared.get("mask_source"),
        "mask_uri": prepared.get("mask_uri"), "model_sha256": run_info.get("model_sha256"),
        "settings_fingerprint": run_info.get("settings_fingerprint"),
    }


def _regions_column(prepared: dict) -> list[dict] | None:
    """The results row's `regions`: each region's window and model side, in region order; null unless ready."""
    if prepared.get("status") != "ready":
        return None
    return [{"window": list(w), "resolution": int(r)}
            for w, r in zip(prepared.get("windows") or [], prepared.get("region_res") or [])]


def _write_mask(png: bytes, row_id: str, out: OutputSettings) -> str:
    """Write a detector's mask (before dilation) under {output}/masks/, named and laid out as the row's image; its
    URI. A write failure is the output's (OutputWriteError), as for the image."""
    uri = join_uri(out.root, "masks", f"{image_path(output_name(row_id)[0], out.layout)}.png")
    try:
        write_bytes(uri, png, out.storage)
    except RowError as e:
        raise OutputWriteError(f"cannot write the detected mask {e.message}") from None
    return uri


def _write_image(encoded: Encoded, row_id: str, out: OutputSettings) -> tuple[str, bool, float]:
    """Write the encoded output image: (its URI, whether its name is hashed, seconds writing). A write failure
    is the output's (OutputWriteError)."""
    stem, hashed = output_name(row_id)
    uri = join_uri(out.root, "images", f"{image_path(stem, out.layout)}.{EXTENSIONS[encoded.format]}")
    t1 = time.perf_counter()
    try:
        write_bytes(uri, encoded.data, out.storage)
    except RowError as e:
        raise OutputWriteError(f"cannot write the output image {e.message}") from None
    return uri, hashed, time.perf_counter() - t1
