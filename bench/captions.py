"""A dataset that comes without masks: photo-like JPEGs with captions and watermark text burnt in, some without any
text, and a manifest of their URIs only (no mask column), for `--mask-from text` (README: Masks from detectors):

    python -m rayinpaint.bench.captions --out captioned --rows 24
    rayinpaint run --manifest captioned/manifest.parquet --output captioned-out --mask-from text --weights random:tiny

The keep-up benchmark (bench/keepup.py --mask-from text) and the job's tests use the same images.
"""

from __future__ import annotations

import argparse
import io
import os

import numpy as np

from .cpu import photo_like

CAPTIONS = ("Summer Sale 2026", "© Studio Nord", "photo by A. Lee", "www.example.com", "SAMPLE", "limited offer")
TEXT_FREE_EVERY = 4  # one image in this many has no text (the detector must leave it `unchanged`)


def captioned(width: int, height: int, seed: int, with_text: bool = True) -> bytes:
    """A photo-like JPEG (quality 92) with, unless `with_text` is off, a caption along the bottom and a
    half-transparent watermark word in the middle, their size following the image's."""
    from PIL import Image, ImageDraw, ImageFont

    im = Image.open(io.BytesIO(photo_like(width, height, seed))).convert("RGBA")
    if with_text:
        rng = np.random.default_rng(seed)
        layer = Image.new("RGBA", im.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        px = max(12, height // 16)
        caption = CAPTIONS[int(rng.integers(len(CAPTIONS)))]
        draw.text((width // 20, height - 2 * px), caption, font=ImageFont.load_default(size=px),
                  fill=(255, 255, 255, 255), stroke_width=max(1, px // 12), stroke_fill=(0, 0, 0, 255))
        mark = ImageFont.load_default(size=2 * px)
        left, top, right, bottom = mark.getbbox("SAMPLE")
        draw.text(((width - right + left) // 2, (height - bottom + top) // 3), "SAMPLE", font=mark,
                  fill=(255, 255, 255, 150))
        im = Image.alpha_composite(im, layer)
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=92)
    return buf.getvalue()


def write_dataset(folder: str, rows: int, width: int = 640, height: int = 480, distinct: int = 8) -> str:
    """`rows` manifest rows (id, image URI) over `distinct` images of which every TEXT_FREE_EVERY-th has no text;
    returns the manifest's path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(folder, exist_ok=True)
    for k in range(distinct):
        with open(os.path.join(folder, f"photo-{k}.jpg"), "wb") as f:
            f.write(captioned(width, height, k, with_text=k % TEXT_FREE_EVERY != TEXT_FREE_EVERY - 1))
    path = os.path.join(folder, "manifest.parquet")
    pq.write_table(pa.table({"id": [f"row-{i:06d}" for i in range(rows)],
                             "image": [f"photo-{i % distinct}.jpg" for i in range(rows)]}), path)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the images and manifest.parquet")
    p.add_argument("--rows", type=int, default=24)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    a = p.parse_args(argv)
    print(write_dataset(a.out, a.rows, a.width, a.height))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
