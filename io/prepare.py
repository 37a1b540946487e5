"""Prepare one canonical row for the model: fetch, decode, build the mask, crop, resize.

``prepare_row`` never raises for a row's own problem; it returns a dict with the fields of
``PREPARED_SCHEMA`` (below), which is what travels from prepare to the model actor and on to finish.
Status "unchanged" means the mask is empty after threshold/invert (or the detector found nothing): the row passes
through and finish writes the original. Seeds: the row's own ``seed`` when given (must be >= 0), else
``row_seed(job_seed, id)``.
"""

from __future__ import annotations

import hashlib
import io
import time
import numpy as np
import pyarrow as pa
from PIL import Image

from .errors import RowError, redact_uri
from .geometry import model_inputs
from .images import decode_image
from .masks import bbox, boxes_to_mask, decode_mask_values, dilate, threshold_mask
from .regions import region_resolution, region_seed, region_windows
from .results import ERROR, MANIFEST, UNCHANGED, UNION
from .rle import rle_to_mask
from .settings import PrepareSettings
from .storage import protocol_of, read_bytes

# One prepared row. R is the model resolution; bytes are C-order uint8 arrays.
PREPARED_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("status", pa.string()),            # "ready" | "unchanged" | "error"
    ("error_kind", pa.string()),        # io.errors.KINDS, null unless error
    ("error", pa.string()),
    ("seed", pa.int64()),
    ("prompt", pa.string()),
    ("negative_prompt", pa.string()),
    ("image_uri", pa.string()),         # redacted
    # One entry per region (io/regions.py), in region order; empty lists unless ready. r is the region's model
    # side (R, or more under --max-resolution).
    ("model_image", pa.list_(pa.binary())),   # [r, r, 3]
    ("model_mask", pa.list_(pa.binary())),    # [r, r] in {0, 255}, 255 = repaint
    ("windows", pa.list_(pa.list_(pa.int64()))),  # [x0, y0, x1, y1] crop window in original pixels; may extend
                                        # past the image where the crop was reflect-padded (geometry.py)
    ("region_res", pa.list_(pa.int64())),     # r
    ("region_seeds", pa.list_(pa.int64())),   # regions.region_seed(seed, k)
    ("window", pa.list_(pa.int64())),   # the box around every region's window (the window itself for one
                                        # region); null unless ready
    ("width", pa.int64()),              # decoded (EXIF-oriented) size; null if the image did not decode
    ("height", pa.int64()),
    ("resolution", pa.int64()),         # R
    ("mask_pixels", pa.int64()),        # repaint pixels after dilation
    # The original encoded image, for finish to decode again (deterministic): inline only for rows whose image
    # came inline (image_bytes). A row read from a URI carries the URI and the size and digest of the bytes
    # decoded here instead, so the (up to tens of MB) bytes do not ride through the model stage; finish reads the
    # URI again and refuses the row (`source_changed`) if the object changed in between (io/finish.py).
    ("source", pa.binary()),
    ("source_uri", pa.string()),        # not redacted: finish reads it (never written to results or messages)
    ("source_size", pa.int64()),
    ("source_digest", pa.string()),     # source_digest(bytes)
    ("repaint_mask", pa.binary()),      # PNG (mode "1") of the dilated repaint mask, full size (b"" unless ready)
    ("mask_source", pa.string()),       # MANIFEST, UNION or the detector's name (--mask-from); null: no mask built
    ("mask_uri", pa.string()),          # the manifest's mask URI (redacted) when the mask is the row's own, from a URI
    ("detected_pixels", pa.int64()),    # pixels of the detector's own mask (before dilation); null without one
    ("used_mask", pa.binary()),         # PNG (mode "1") of a mask a detector made or joined, before dilation: finish
                                        # writes it under {output}/masks/ (null unless ready with a detector's mask)
    ("t_fetch", pa.float64()),          # seconds
    ("t_decode", pa.float64()),
    ("t_detect", pa.float64()),         # CPU seconds of the detector's call (part of t_prepare); null without one
    ("t_prepare", pa.float64()),
])


def row_seed(job_seed: int, row_id: str) -> int:
    """Stable per-row seed in [0, 2**63): SHA-256 of "job_seed:id", first 8 bytes, top bit cleared."""
    digest = hashlib.sha256(f"{int(job_seed)}:{row_id}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") & (2 ** 63 - 1)


def source_digest(data: bytes) -> str:
    """What finish compares the re-read image against (with its size): BLAKE2b-128, ~1 GB/s on one core."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _source_fields(source: bytes, uri: str | None) -> dict:
    """The prepared row's source fields: the bytes themselves if inline, else the URI, size and digest."""
    if uri is None:
        return {"source": source, "source_uri": None, "source_size": len(source), "source_digest": None}
    return {"source": None, "source_uri": uri, "source_size": len(source), "source_digest": source_digest(source)}


def check_uri_allowed(uri: str, allowed: tuple) -> None:
    """Raise RowError("uri_not_allowed") unless the URI's scheme is allowed (a bare path is "file")."""
    if "::" in uri:
        raise RowError("uri_not_allowed", f"chained '::' URLs are not accepted: {redact_uri(uri)}")
    scheme = protocol_of(uri)
    authority = uri.split("://", 1)[1].split("/", 1)[0] if "://" in uri else ""
    if "@" in authority:
        raise RowError("uri_not_allowed", f"credentials inside a URI are not accepted (give them through the "
                                          f"environment or storage options): {redact_uri(uri)}")
    if scheme not in allowed:
        raise RowError("uri_not_allowed", f"scheme '{scheme}' is not allowed ({', '.join(allowed)}; "
                                          f"see --allowed-schemes): {redact_uri(uri)}")


def _fetch(row: dict, key: str, settings: PrepareSettings) -> tuple[bytes | None, str | None]:
    """(bytes, uri) of an image-like source: inline bytes win over a URI."""
    blob, uri = row.get(f"{key}_bytes"), row.get(f"{key}_uri")
    if blob is not None:
        return bytes(blob), None
    if uri is not None:
        if not isinstance(uri, str) or not uri:
            raise RowError("bad_row", f"{key}: URI must be a non-empty string, got {uri!r}")
        try:
            check_uri_allowed(uri, settings.allowed_schemes)
            return read_bytes(uri, settings.storage), uri
        except RowError as e:
            raise RowError(e.kind, f"{key} {e.message}") from None
    return None, None


def _manifest_mask(row: dict, width: int, height: int,
                   settings: PrepareSettings) -> tuple[np.ndarray | None, float, float]:
    """Union of the row's own mask sources -> bool [H, W] (True = repaint), None when it has none; plus fetch/decode
    times."""
    t0 = time.perf_counter()
    data, uri = _fetch(row, "mask", settings)
    t_fetch = time.perf_counter() - t0
    boxes, rle = row.get("boxes"), row.get("mask_rle")
    if data is None and boxes is None and rle is None:
        return None, t_fetch, 0.0
    t1 = time.perf_counter()
    mask = np.zeros((height, width), dtype=bool)
    if data is not None:
        try:
            values = decode_mask_values(data, settings.max_pixels, (width, height), settings.resize_mask)
        except RowError as e:
            where = f" {redact_uri(uri)}" if uri else ""
            msg = e.message if e.message.startswith("mask") else f"mask: {e.message}"
            raise RowError(e.kind, msg.replace("mask", f"mask{where}", 1)) from None
        mask |= threshold_mask(values, settings.mask_threshold, settings.mask_invert)
    if rle is not None:
        mask |= rle_to_mask(rle, (height, width))
    if boxes is not None:
        if isinstance(boxes, (str, bytes)) or not hasattr(boxes, "__iter__"):
            raise RowError("bad_boxes", f"boxes must be a list of [x0, y0, x1, y1], got {type(boxes).__name__}")
        mask |= boxes_to_mask(boxes, width, height)
    return mask, t_fetch, time.perf_counter() - t1


def _detected(detector, rgb: np.ndarray, name: str) -> np.ndarray:
    """The detector's mask of the image (bool [H, W]); any failure of the detector is the row's `detector_error`."""
    try:
        found = detector(rgb)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - a detector failure is the row's, never the batch's
        raise RowError("detector_error", f"the {name} detector failed: {type(e).__name__}: "
                                         f"{redact_uri(str(e))[:300]}") from None
    found = np.asarray(found)
    if found.shape != rgb.shape[:2]:
        raise RowError("detector_error", f"the {name} detector returned a {found.shape} mask for a "
                                         f"{rgb.shape[1]}x{rgb.shape[0]} image")
    return found.astype(bool, copy=False)


def _build_mask(row: dict, rgb: np.ndarray, settings: PrepareSettings, detector=None) -> dict:
    """The mask the row is inpainted with (before dilation) and where it came from (`mask_source`): the row's own
    sources ("manifest"), the detector's mask (its name, settings.mask_from) or both ("union"), as --mask-combine
    says (io/settings.py MASK_COMBINE). `detected`: the pixels of the detector's mask, None when none was made."""
    height, width = rgb.shape[:2]
    skip_own = detector is not None and settings.mask_combine == "replace"
    own, t_fetch, t_decode = (None, 0.0, 0.0) if skip_own else _manifest_mask(row, width, height, settings)
    if detector is None or (own is not None and settings.mask_combine == "missing"):
        if own is None:
            raise RowError("bad_row", "no mask: mask, boxes and mask_rle are all null (or detect masks with "
                                      "--mask-from)")
        return {"mask": own, "source": MANIFEST, "detected": None, "t_fetch": t_fetch, "t_decode": t_decode,
                "t_detect": None}
    # CPU time of this thread: the detectors run on the calling thread (one ONNX or torch thread), and a job's
    # detector actor lets one row at a time in (jobs/stages.py), so wall time would count the wait for the others
    t1 = time.thread_time()
    found = _detected(detector, rgb, settings.mask_from)
    mask, source = (found, settings.mask_from) if own is None else (own | found, UNION)
    return {"mask": mask, "source": source, "detected": int(np.count_nonzero(found)), "t_fetch": t_fetch,
            "t_decode": t_decode, "t_detect": time.thread_time() - t1}


def _fill_row_fields(row: dict, settings: PrepareSettings, out: dict) -> None:
    """Set id, prompt, negative_prompt and seed of `out` from the row (the job's defaults filled in), in that
    order, so that an error row keeps whatever was valid before the bad field."""
    row_id = row.get("id")
    if not isinstance(row_id, str) or row_id == "":
        raise RowError("bad_row", f"id is {'empty' if row_id == '' else 'null' if row_id is None else repr(row_id)}")
    out["id"] = row_id
    prompt, negative = row.get("prompt"), row.get("negative_prompt")
    out["prompt"] = settings.default_prompt if prompt is None else str(prompt)
    out["negative_prompt"] = settings.default_negative_prompt if negative is None else str(negative)
    seed = row.get("seed")
    if seed is None:
        seed = row_seed(settings.job_seed, row_id)
    elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2 ** 63:
        raise RowError("bad_row", f"seed must be an integer in [0, 2**63), got {seed!r}")
    out["seed"] = int(seed)


_EMPTY = {"model_image": [], "model_mask": [], "windows": [], "region_res": [], "region_seeds": [], "window": None,
          "repaint_mask": b"", "used_mask": None, "source": None,
          "source_uri": None, "source_size": None, "source_digest": None}


def _regions(rgb: np.ndarray, repaint: np.ndarray, seed: int, settings: PrepareSettings) -> dict:
    """The prepared fields of the mask's regions: windows, model inputs, sides and seeds (io/regions.py)."""
    R = settings.resolution
    windows = region_windows(repaint, R, settings.context, settings.min_context, settings.feather,
                             settings.max_regions)
    sides = [region_resolution(w[2] - w[0], R, settings.max_resolution) for w in windows]
    inputs = [model_inputs(rgb, repaint, w, r) for w, r in zip(windows, sides)]
    return {"windows": [list(w) for w in windows], "region_res": sides,
            "region_seeds": [region_seed(seed, k) for k in range(len(windows))],
            "model_image": [i.tobytes() for i, _ in inputs], "model_mask": [m.tobytes() for _, m in inputs],
            "window": [min(w[0] for w in windows), min(w[1] for w in windows),
                       max(w[2] for w in windows), max(w[3] for w in windows)]}


def _mask_fields(row: dict, rgb: np.ndarray, built: dict, seed: int, settings: PrepareSettings) -> dict:
    """The prepared fields of the row's mask (`_build_mask`): where it came from, its dilation, and the regions to
    inpaint (status ready), or status unchanged when it is empty."""
    mask, detected = built["mask"], built["detected"]
    repaint = dilate(mask, settings.mask_dilate)
    out = {"mask_source": built["source"], "detected_pixels": detected, "mask_pixels": int(repaint.sum()),
           "mask_uri": None if detected is not None else redact_uri(row.get("mask_uri"))}
    if bbox(repaint) is None:
        return {**out, "status": UNCHANGED}
    return {**out, **_regions(rgb, repaint, seed, settings), "status": "ready", "repaint_mask": _mask_png(repaint),
            "used_mask": None if detected is None else _mask_png(mask)}


def _mask_png(mask: np.ndarray) -> bytes:
    png = io.BytesIO()
    Image.fromarray(mask).save(png, "PNG", optimize=False)  # bool -> mode "1"
    return png.getvalue()


def prepare_row(row: dict, settings: PrepareSettings, detector=None) -> dict:
    """Canonical row dict -> prepared dict (see module docstring). Never raises for row problems. `detector`: the
    --mask-from detector (a callable, uint8 [H, W, 3] -> bool [H, W]), built once per worker by the caller."""
    t_start = time.perf_counter()
    R = settings.resolution
    out = {
        "id": None, "status": "error", "error_kind": None, "error": None, "seed": None,
        "prompt": None, "negative_prompt": None, "image_uri": redact_uri(row.get("image_uri")),
        "width": None, "height": None, "resolution": R, "mask_pixels": None, "mask_source": None, "mask_uri": None,
        "detected_pixels": None,
        "t_fetch": 0.0, "t_decode": 0.0, "t_detect": None, "t_prepare": 0.0, **_EMPTY,
    }
    try:
        _fill_row_fields(row, settings, out)
        t0 = time.perf_counter()
        source, uri = _fetch(row, "image", settings)
        out["t_fetch"] = time.perf_counter() - t0
        if source is None:
            raise RowError("bad_row", "image is null (neither a URI nor bytes)")
        t1 = time.perf_counter()
        where = f"image {redact_uri(uri)}" if uri else "image (inline bytes)"
        rgb = decode_image(source, where, settings.max_pixels)
        out["t_decode"] = time.perf_counter() - t1
        height, width = rgb.shape[:2]
        out.update(_source_fields(source, uri), width=int(width), height=int(height))

        built = _build_mask(row, rgb, settings, detector)
        out["t_fetch"] += built["t_fetch"]
        out["t_decode"] += built["t_decode"]
        out["t_detect"] = built["t_detect"]
        out.update(_mask_fields(row, rgb, built, out["seed"], settings))
    except RowError as e:
        out.update(status=ERROR, error_kind=e.kind, error=e.message, **_EMPTY)
    except MemoryError:
        out.update(status=ERROR, error_kind="too_large", error="out of memory while preparing the row", **_EMPTY)
    except Exception as e:  # noqa: BLE001 - one row must never stop the job
        out.update(status=ERROR, error_kind="prepare_failed",
                   error=f"unexpected {type(e).__name__} while preparing: {redact_uri(str(e))[:300]}", **_EMPTY)
    out["t_prepare"] = time.perf_counter() - t_start
    return out
