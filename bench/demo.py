"""`rayinpaint demo`: a synthetic dataset (varied sizes, masks, prompts, rows with several marks far apart, a few
bad rows) and a full offline run."""

from __future__ import annotations

import io
import json
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

SIZES = [(640, 480), (300, 200), (1024, 768), (200, 320), (512, 512), (800, 600), (123, 77), (1500, 400)]
PROMPTS = ["", "clean background", "a brick wall", "grass", "blue sky", "wooden table"]


def _scene(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """A smooth gradient with a few shapes and a 'watermark' text: something to clean up."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = (x / max(1, w - 1))[..., None]
    img = (c0 * (1 - t) + c1 * t + 20 * np.sin(y / 17.0)[..., None]).clip(0, 255).astype(np.uint8)
    im = Image.fromarray(img, "RGB")
    d = ImageDraw.Draw(im)
    for _ in range(3):
        x0, y0 = int(rng.uniform(0, w * 0.8)), int(rng.uniform(0, h * 0.8))
        d.ellipse([x0, y0, x0 + w // 6 + 2, y0 + h // 6 + 2], fill=tuple(int(v) for v in rng.uniform(0, 255, 3)))
    d.text((w // 10, h // 2), "SAMPLE", fill=(255, 255, 255))
    return im


def _mask(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    m = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(m)
    bw, bh = max(4, int(w * rng.uniform(0.1, 0.35))), max(4, int(h * rng.uniform(0.08, 0.3)))
    x0, y0 = int(rng.uniform(0, w - bw)), int(rng.uniform(0, h - bh))
    d.rectangle([x0, y0, x0 + bw, y0 + bh], fill=255)
    return m


def _marks_mask(w: int, h: int) -> Image.Image:
    """Dataset-cleanup marks far apart: a 'watermark' top left, a 'logo' bottom right, a 'caption' bottom left."""
    m = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(m)
    s = max(6, min(w, h) // 12)
    d.rectangle([4, 4, 4 + 2 * s, 4 + s], fill=255)
    d.ellipse([w - 5 - s, h - 5 - s, w - 5, h - 5], fill=255)
    d.rectangle([8, h - 6 - s // 2, 8 + 3 * s, h - 6], fill=255)
    return m


def _encode(im: Image.Image, fmt: str) -> bytes:
    b = io.BytesIO()
    im.save(b, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return b.getvalue()


def make_dataset(folder: str, rows: int = 24, seed: int = 0) -> str:
    """Write images, masks and manifest.parquet under `folder`; returns the manifest path."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    os.makedirs(os.path.join(folder, "masks"), exist_ok=True)
    recs = []
    for i in range(rows):
        w, h = SIZES[i % len(SIZES)]
        rid = f"img-{i:04d}"
        fmt = "JPEG" if i % 3 == 1 else "PNG"
        ext = "jpg" if fmt == "JPEG" else "png"
        with open(os.path.join(folder, "images", f"{rid}.{ext}"), "wb") as f:
            f.write(_encode(_scene(w, h, rng), fmt))
        rec = {"id": rid, "image": f"images/{rid}.{ext}", "mask": None, "boxes": None,
               "prompt": PROMPTS[i % len(PROMPTS)] or None, "seed": None}
        if i % 4 == 3:  # some rows give boxes instead of a mask image
            bw, bh = w // 4, h // 5
            rec["boxes"] = [[float(w // 3), float(h // 3), float(w // 3 + bw), float(h // 3 + bh)]]
        else:
            mask = _marks_mask(w, h) if i % 4 == 2 else _mask(w, h, rng)  # every 4th row: several marks
            with open(os.path.join(folder, "masks", f"{rid}.png"), "wb") as f:
                f.write(_encode(mask, "PNG"))
            rec["mask"] = f"masks/{rid}.png"
        if i % 5 == 0:
            rec["seed"] = 1000 + i
        recs.append(rec)
    # A few bad rows, each failing in its own way.
    with open(os.path.join(folder, "images", "corrupt.png"), "wb") as f:
        f.write(_encode(_scene(64, 64, rng), "PNG")[:40])
    with open(os.path.join(folder, "images", "notes.txt"), "wb") as f:
        f.write(b"this is not an image\n")
    with open(os.path.join(folder, "masks", "small.png"), "wb") as f:
        f.write(_encode(Image.new("L", (10, 10), 255), "PNG"))
    with open(os.path.join(folder, "masks", "empty.png"), "wb") as f:
        f.write(_encode(Image.new("L", (640, 480), 0), "PNG"))
    bad = [
        ("bad-truncated", "images/corrupt.png", "masks/img-0000.png"),
        ("bad-not-an-image", "images/notes.txt", "masks/img-0000.png"),
        ("bad-missing-file", "images/does-not-exist.png", "masks/img-0000.png"),
        ("bad-mask-size", "images/img-0000.png", "masks/small.png"),
        ("empty-mask", "images/img-0000.png", "masks/empty.png"),
    ]
    for rid, img, msk in bad:
        recs.append({"id": rid, "image": img, "mask": msk, "boxes": None, "prompt": None, "seed": None})
    schema = pa.schema([("id", pa.string()), ("image", pa.string()), ("mask", pa.string()),
                        ("boxes", pa.list_(pa.list_(pa.float64()))), ("prompt", pa.string()), ("seed", pa.int64())])
    path = os.path.join(folder, "manifest.parquet")
    pq.write_table(pa.Table.from_pylist(recs, schema=schema), path)
    return path


def run_demo(output: str, rows: int = 24, weights: str = "random:tiny") -> int:
    from rayinpaint.jobs.config import build_config
    from rayinpaint.jobs.inpaint import run_job

    output = os.path.abspath(output)
    manifest = make_dataset(os.path.join(output, "input"), rows=rows)
    print(f"demo: wrote {rows + 5} rows (5 of them deliberately bad) to {manifest}", file=sys.stderr)
    cfg = build_config({"manifest": (manifest,), "output": os.path.join(output, "run"), "weights": weights,
                        "steps": 8, "resolution": 256, "batch_size": 4, "max_error_rate": 0.5,
                        "prompt": "clean background", "progress_interval": 2.0})
    rc = run_job(cfg)
    run = os.path.join(output, "run")
    summary = os.path.join(run, "_SUMMARY.json")
    if os.path.exists(summary):
        with open(summary) as f:
            s = json.load(f)
        print(f"\ndemo finished: {s['counts_by_status']}, errors by kind {s['errors_by_kind']}\n"
              f"  images:  {os.path.join(run, 'images')}\n"
              f"  results: {os.path.join(run, 'results')} (Parquet; one row per input id)\n"
              f"  summary: {summary}\n"
              f"  report:  {os.path.join(run, '_REPORT.html')} (open in a browser)\n"
              f"Rerun the same command to see a resume (nothing left to do).", file=sys.stderr)
    return rc
