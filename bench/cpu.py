"""`rayinpaint bench --cpu-stages`: CPU cost per row of the prepare and finish stages (no model, no Ray).

For each input size (1, 4 and 12 MP by default) a photo-like JPEG is synthesised (smooth colour fields, edges
and sensor-like noise; real photos compress somewhat differently) with a box mask covering about 5% of it. The
row goes through the job's own `prepare_row` and `finish_row` (the model's output stands in as the crop it was
given, its colours inverted), writing to a temporary folder; every output format and PNG level asked for is timed
on the same row.
Reported per size: ms per row for prepare (fetch, decode, mask, crop) and for finish (decode of the source,
paste-back, encode, write) and that less the source's decode, the encoded bytes (and their ratio to the source's),
the CPU cores one GPU needs to keep up at `--images-per-s`, and for the lossy outputs (`auto` writes the source's
JPEG blocks with the repainted ones replaced, io/jpeg_transplant.py; jpeg-q95 re-encodes the whole image) the PSNR
of the decoded output against the exact one over the pixels the paste-back changed.
"""

from __future__ import annotations

import tempfile
import time

import numpy as np

from .timing import median_ms

SIZES_MP = {1: (1152, 864), 4: (2304, 1728), 12: (4000, 3000)}


def photo_like(width: int, height: int, seed: int = 0) -> bytes:
    """A JPEG (quality 90) of smooth gradients, a few hard-edged shapes and noise of sigma 6."""
    import io

    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([127 + 80 * np.sin(x / width * 3 + c) * np.cos(y / height * 2 - c) for c in (0.0, 1.3, 2.6)], -1)
    im = Image.fromarray(np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, width - 8)), int(rng.integers(0, height - 8))
        draw.rectangle([x0, y0, x0 + int(rng.integers(8, width // 4)), y0 + int(rng.integers(8, height // 4))],
                       fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _row(width: int, height: int) -> dict:
    side_w, side_h = int(width * 0.224), int(height * 0.224)  # 0.224^2 ~ 5% of the image
    x0, y0 = width // 3, height // 3
    return {"id": f"bench-{width}x{height}", "image_bytes": photo_like(width, height),
            "boxes": [[x0, y0, x0 + side_w, y0 + side_h]]}


def bench_size(mp: int, outputs: list[tuple[str, dict]], images_per_s: float, repeat: int) -> dict:
    from rayinpaint.io.finish import composite
    from rayinpaint.io.images import decode_image
    from rayinpaint.io.prepare import prepare_row
    from rayinpaint.io.settings import PrepareSettings

    width, height = SIZES_MP[mp]
    row = _row(width, height)
    settings = PrepareSettings()
    prepare_ms, prepared = median_ms(lambda: prepare_row(dict(row), settings), repeat)
    assert prepared["status"] == "ready", prepared.get("error")
    # the model's output: its own input with the colours inverted, so every pixel under the mask changes (a crop
    # that passed through unchanged would leave nothing to re-encode where the window is not resized)
    result = [255 - np.frombuffer(m, np.uint8).reshape(r, r, 3)
              for m, r in zip(prepared["model_image"], prepared["region_res"])]
    rec = {"megapixels": round(width * height / 1e6, 1), "size": f"{width}x{height}",
           "source_bytes": len(row["image_bytes"]), "prepare_ms": prepare_ms,
           "decode_source_ms": median_ms(lambda: decode_image(prepared["source"]), repeat)[0],
           "composite_ms": median_ms(lambda: composite(prepared, result, settings), repeat)[0]}
    final, original = composite(prepared, result, settings)
    rec["outputs"] = _time_outputs(prepared, result, settings, outputs, (final, original), rec, images_per_s, repeat)
    if any(kw.get("format") == "auto" for _, kw in outputs):
        rec["transplant_parts_ms"] = _transplant_parts(prepared, final, original, repeat)
    return rec


def _transplant_parts(prepared: dict, final: np.ndarray, original: np.ndarray, repeat: int) -> dict:
    """Where `--format auto`'s time goes on a JPEG source: finding the changed MCUs, reading the source's
    coefficients (a whole entropy decode), encoding the changed MCUs, writing the output (a whole entropy
    encode)."""
    import os

    from rayinpaint.io import jpeg_transplant as jt

    source, layout, lib = prepared["source"], jt.inspect(prepared["source"]), jt._jpeglib()
    changed_ms, mcus = median_ms(lambda: jt.changed_mcus(final, original, prepared["windows"], layout), repeat)
    with tempfile.TemporaryDirectory() as tmp:
        def read():
            jpeg = jt.read_coefficients(lib, os.path.join(tmp, "s.jpg"), source, layout)
            jpeg.Y  # noqa: B018 - the first access reads every component
            return jpeg

        read_ms, jpeg = median_ms(read, repeat)
        comps = [jpeg.Y] + ([] if layout.grey else [jpeg.Cb, jpeg.Cr])
        tables = [np.asarray(jpeg.qt[int(n)], np.float64) for n in jpeg.quant_tbl_no[:len(comps)]]
        stored = jt.stored_view(final, layout.orientation)
        replace_ms, _ = median_ms(lambda: jt._replace(comps, tables, stored, mcus, layout), repeat)
        jpeg.content = None
        write_ms, _ = median_ms(lambda: jpeg.write_dct(os.path.join(tmp, "o.jpg")), repeat)
    return {"changed_mcus": changed_ms, "read_coefficients": read_ms, "encode_changed_mcus": replace_ms,
            "write_coefficients": write_ms,
            "mcus_replaced": len(np.unique(np.concatenate(mcus), axis=0)) if mcus else 0}


def _time_outputs(prepared, result, settings, outputs, images, rec, images_per_s, repeat) -> dict:
    """Per output variant: encode and finish times, bytes, the format written and, where it is not exact, the
    PSNR of the decoded output against the exact output over the pixels the paste-back changed."""
    from rayinpaint.io.finish import finish_row
    from rayinpaint.io.images import decode_image
    from rayinpaint.io.outputs import encode_output
    from rayinpaint.io.settings import OutputSettings

    (final, original), got = images, {}
    changed = np.any(final != original, axis=2)
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in outputs:
            out = OutputSettings(root=tmp, **kw)
            encode_ms, enc = median_ms(lambda: encode_output(final, original, prepared["source"],
                                                              prepared["windows"], out), repeat)
            finish_ms, _ = median_ms(lambda: finish_row(dict(prepared), result, settings, out), repeat)
            per_row_s = (rec["prepare_ms"] + finish_ms) / 1000
            got[name] = {"format_written": enc.format, "finish_ms": finish_ms,
                         "finish_beyond_decode_ms": round(finish_ms - rec["decode_source_ms"], 1),
                         "encode_ms": encode_ms, "bytes": len(enc.data),
                         "bytes_vs_source": round(len(enc.data) / rec["source_bytes"], 3),
                         "cores_per_gpu": round(per_row_s * images_per_s, 2)}
            decoded = decode_image(enc.data)
            if not np.array_equal(decoded, final):
                err = np.mean((decoded[changed].astype(np.float64) - final[changed]) ** 2)
                got[name]["psnr_in_repaint_db"] = round(float(10 * np.log10(255 ** 2 / max(err, 1e-12))), 2)
    return got


def output_variants(levels: list[int]) -> list[tuple[str, dict]]:
    out = [(f"png-level{n}", {"format": "png", "png_level": n}) for n in levels]
    return out + [("webp-lossless", {"format": "webp", "lossless": True}), ("jpeg-q95", {"format": "jpeg"}),
                  ("auto", {"format": "auto"})]


def run_cpu_bench(sizes: list[int], images_per_s: float, levels: list[int], repeat: int,
                  detect: bool = False) -> dict:
    """detect: add the detectors' cost per row (bench/detectcost.py) under "detect"."""
    import os
    import platform

    import jpeglib
    import PIL

    out = {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores (one used), Python {platform.python_version()}",
            "pillow": PIL.__version__, "numpy": np.__version__, "jpeglib": jpeglib.__version__, "images_per_s_per_gpu": images_per_s,
            "note": "one row at a time on one core; cores_per_gpu = (prepare + finish) s/row x images/s",
            "sizes": [bench_size(mp, output_variants(levels), images_per_s, repeat) for mp in sizes]}
    if detect:
        import io

        from PIL import Image

        from .detectcost import run_detect_cost

        images = {mp: np.asarray(Image.open(io.BytesIO(photo_like(*SIZES_MP[mp]))).convert("RGB")) for mp in sizes}
        out["detect"] = run_detect_cost(images, images_per_s, repeat)
    return out


def add_cpu_bench_arguments(p) -> None:
    g = p.add_argument_group("CPU stages (--cpu-stages: prepare and finish per row, no model)")
    g.add_argument("--cpu-stages", action="store_true",
                   help="time the prepare and finish stages per row instead of the model")
    g.add_argument("--megapixels", default="1,4,12", help="input sizes, among 1, 4, 12 (default: 1,4,12)")
    g.add_argument("--images-per-s", type=float, default=6.0,
                   help="one GPU's model rate, for cores per GPU (default: 6)")
    g.add_argument("--png-levels", default="1,6", help="PNG levels to time (default: 1,6)")
    g.add_argument("--repeat", type=int, default=3, help="timed repeats per measure; the median (default: 3)")
    g.add_argument("--no-detect", action="store_true",
                   help="leave out the cost of --mask-from's detectors (text, CLIPSeg; bench/detectcost.py)")
    g.add_argument("--regions", action="store_true",
                   help="regions: detail inside small marks far apart with regions vs one window (through the model "
                        "of --weights), and the cost of splitting 12-MP masks (bench/regions.py)")


def run_cpu_bench_cli(args) -> int:
    sizes = [int(v) for v in args.megapixels.split(",")]
    if any(s not in SIZES_MP for s in sizes):
        raise SystemExit(f"--megapixels: choose among {', '.join(map(str, SIZES_MP))}")
    out = run_cpu_bench(sizes, args.images_per_s, [int(v) for v in args.png_levels.split(",")], args.repeat,
                        detect=not args.no_detect)
    return print_record(out, args.json)


def print_record(out: dict, path: str | None) -> int:
    """Print a bench record as JSON (with the load average: other work on the machine inflates the times),
    also to `path` when given; 0."""
    import json
    import os

    out["load_average_1m"] = round(os.getloadavg()[0], 2)
    text = json.dumps(out, indent=1)
    print(text)
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")
    return 0
