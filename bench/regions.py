"""`rayinpaint bench --regions`: what regions buy and what they cost, without Ray.

Detail. A photo-like image (cpu.photo_like) gets small marks far apart (by default two 52-px marks in
opposite corners of a 3000x2000 photo, the case that motivated regions). The row goes through the job's own
prepare, model actor (InpaintPredictor with the model given by --weights) and finish,
twice: with regions (--max-regions 8) and with one window around the whole mask (--max-regions 1, the old
behaviour), and once per mark with that mark alone (its native-resolution fill, the reference). Detail inside a
mark is the mean absolute Laplacian of the output's luminance there; a detail ratio is detail / the reference's
(1.0: nothing lost; one window around marks far apart resizes their fills down and back up, which lowers it).

Cost. The splitting (connected parts and grouping, io/regions.py) of a 12-MP mask, against decoding the
12-MP JPEG it belongs to, for a few mask kinds: one blob, marks far apart, a text line, and specks.
"""

from __future__ import annotations

import time

import numpy as np

from .cpu import photo_like
from .timing import median_ms


def _marks(width: int, height: int, size: int, count: int) -> list[list[int]]:
    """`count` square marks of `size` px spread over the image: the corners first, then the edge midpoints."""
    spots = [(20, 20), (width - 20 - size, height - 20 - size), (width - 20 - size, 20), (20, height - 20 - size),
             (width // 2, 20), (width // 2, height - 20 - size)]
    return [[x, y, x + size, y + size] for x, y in spots[:count]]


def _laplacian_detail(rgb: np.ndarray, box) -> float:
    x0, y0, x1, y1 = box
    grey = rgb[y0:y1, x0:x1].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    lap = 4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
    return float(np.abs(lap).mean())


def _inpaint(row: dict, settings, actor) -> tuple[np.ndarray, dict]:
    """(final image, prepared row) through the job's prepare, model actor and finish."""
    import pyarrow as pa

    from rayinpaint.io.finish import composite
    from rayinpaint.io.prepare import PREPARED_SCHEMA, prepare_row

    prepared = prepare_row(dict(row), settings)
    assert prepared["status"] == "ready", prepared.get("error")
    out = actor(pa.Table.from_pylist([prepared], schema=PREPARED_SCHEMA))
    assert out.column("status")[0].as_py() == "ready", out.column("error")[0].as_py()
    return composite(prepared, out.column("result")[0].as_py(), settings)[0], prepared


def detail_ratio(width: int = 3000, height: int = 2000, mark: int = 52, count: int = 2, resolution: int = 512,
                 weights: str = "random:tiny", steps: int = 4) -> dict:
    """Detail inside the marks with regions and with one window (see the module docstring)."""
    from rayinpaint.io.settings import PrepareSettings
    from rayinpaint.jobs.predictor import InpaintPredictor, ModelSettings

    boxes = _marks(width, height, mark, count)
    row = {"id": "detail", "image_bytes": photo_like(width, height, seed=3), "boxes": boxes, "prompt": ""}
    actor = InpaintPredictor(ModelSettings(weights, dtype="float32", sampler="dpmpp_2m", steps=steps,
                                           resolution=resolution, pad_to=1))
    rec = {"image": f"{width}x{height}", "marks": boxes, "resolution": resolution, "weights": weights}
    for name, max_regions in (("regions", 8), ("single_window", 1)):
        settings = PrepareSettings(resolution=resolution, max_regions=max_regions).validate()
        t0 = time.perf_counter()
        final, prepared = _inpaint(row, settings, actor)
        rec[name] = {"windows": prepared["windows"], "seconds": round(time.perf_counter() - t0, 2),
                     "detail": [round(_laplacian_detail(final, b), 3) for b in boxes]}
    settings = PrepareSettings(resolution=resolution).validate()
    alone = [_laplacian_detail(_inpaint({**row, "boxes": [b]}, settings, actor)[0], b) for b in boxes]
    rec["alone"] = {"detail": [round(d, 3) for d in alone]}
    for name in ("regions", "single_window"):
        rec[name]["detail_ratio"] = round(float(np.mean(rec[name]["detail"]) / np.mean(alone)), 3)
    return rec


def cleanup_masks(width: int, height: int) -> dict[str, np.ndarray]:
    """Mask kinds for the splitting cost: one blob, marks far apart, a text line, specks."""
    masks = {name: np.zeros((height, width), bool) for name in ("blob", "marks", "text_line", "specks")}
    masks["blob"][height // 3: height // 3 + height // 5, width // 3: width // 3 + width // 5] = True
    for x0, y0, x1, y1 in _marks(width, height, 80, 6):
        masks["marks"][y0:y1, x0:x1] = True
    for k in range(60):  # 60 letters of 20 x 40 px, 10 px apart, along the bottom
        masks["text_line"][height - 120: height - 80, 200 + 30 * k: 220 + 30 * k] = True
    masks["specks"] = np.random.default_rng(0).random((height, width)) < 0.0005
    return masks


def split_cost(width: int = 4000, height: int = 3000, repeat: int = 3) -> dict:
    """ms to split each mask kind into regions, next to ms to decode the photo (module docstring)."""
    from rayinpaint.io.images import decode_image
    from rayinpaint.io.regions import region_windows

    jpeg = photo_like(width, height)
    rec = {"size": f"{width}x{height}", "decode_jpeg_ms": median_ms(lambda: decode_image(jpeg), repeat)[0]}
    for name, mask in cleanup_masks(width, height).items():
        ms, windows = median_ms(lambda: region_windows(mask, 512, 0.25, 32, 8), repeat)
        rec[f"split_{name}_ms"] = ms
        rec[f"split_{name}_regions"] = len(windows)
    return rec


def run_region_bench_cli(args) -> int:
    import os
    import platform

    from .cpu import print_record

    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    return print_record({"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine,
                         "detail": detail_ratio(resolution=args.resolution, weights=args.weights, steps=args.steps),
                         "split_cost": split_cost(repeat=args.repeat)}, args.json)
