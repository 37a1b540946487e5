"""The results schema and the results table.

One results row per input row, whatever happened to it: ``status`` is ``"ok"`` (inpainted
and written), ``"unchanged"`` (empty mask: the decoded original was written) or ``"error"``
(``error_kind`` + ``error``; no image written). ``regions`` lists each region of the mask (io/regions.py) with
its crop window in original pixels [x0, y0, x1, y1] (may extend past the image where it was padded) and the model
side it ran at; ``window`` is the box around every region's window, which for a row of one region is that
region's window (both null unless inpainted).
``output_format`` is the format of the image written (png, jpeg, webp, or jpeg-transplant: the JPEG source's blocks
kept and the repainted ones replaced, io/jpeg_transplant.py), ``output_bytes`` its size, and ``output_fallback``
why `--format auto` wrote a JPEG source as PNG (null otherwise); all three are null where no image was written, and
absent from results written before they existed (readers take them as null).
``mask_source`` says where the mask came from (the manifest, a detector named by ``--mask-from``, or both) and
``mask_uri`` where the mask actually used (after threshold, before dilation) can be looked at: a detector's mask is
written under ``{output}/masks/`` in the images' layout. Both are absent from results written before they existed.
``timings`` are seconds per stage for this row.
"""

from __future__ import annotations

import pyarrow as pa

# A row's status: the results' vocabulary, used by every stage and by the bookkeeping (ledger/layout.py).
OK, UNCHANGED, ERROR = "ok", "unchanged", "error"
DONE_STATUSES = (OK, UNCHANGED)  # a row of these is never processed again
# A row's mask_source besides a detector's name ("text", "prompt:<text>"): its own mask, or its own and a detector's.
MANIFEST, UNION = "manifest", "union"

TIMINGS_TYPE = pa.struct([
    ("fetch", pa.float64()), ("decode", pa.float64()), ("prepare", pa.float64()),
    ("inpaint", pa.float64()), ("finish", pa.float64()), ("write", pa.float64()),
])

REGION_TYPE = pa.struct([("window", pa.list_(pa.int32(), 4)), ("resolution", pa.int32())])

RESULTS_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("status", pa.string()),              # ok | unchanged | error
    ("error_kind", pa.string()),          # RowError.kind, null unless status == error
    ("error", pa.string()),
    ("output_uri", pa.string()),
    ("output_name_hashed", pa.bool_()),   # True when the id was not a safe file name
    ("image_uri", pa.string()),           # input image URI (redacted), null for inline bytes
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("seed", pa.int64()),
    ("prompt", pa.string()),
    ("negative_prompt", pa.string()),
    ("prompt_truncated", pa.bool_()),     # prompt or negative prompt over 77 tokens: the end was cut
    ("sampler", pa.string()),
    ("steps", pa.int32()),
    ("guidance", pa.float64()),
    ("strength", pa.float64()),
    ("resolution", pa.int32()),
    ("window", pa.list_(pa.int32(), 4)),  # [x0, y0, x1, y1] around every region's window
    ("regions", pa.list_(REGION_TYPE)),   # one per region, in region order
    ("mask_pixels", pa.int64()),          # repaint pixels after dilation
    ("mask_source", pa.string()),         # manifest | union | the detector's name: text, prompt:<text> (--mask-from)
    ("mask_uri", pa.string()),            # the mask used, before dilation: {output}/masks/... for a detector's mask,
                                          # the manifest's mask URI (redacted) for a row's own; null for boxes / RLE
    ("model_sha256", pa.string()),
    ("settings_fingerprint", pa.string()),  # the run's pixel settings (ledger/fingerprint.py); null: not a model row
    ("output_format", pa.string()),       # format written: png | jpeg | webp | jpeg-transplant (io/outputs.py)
    ("output_bytes", pa.int64()),         # size of the image written
    ("output_fallback", pa.string()),     # why --format auto wrote a JPEG source as PNG; null otherwise
    ("timings", TIMINGS_TYPE),
])


def results_table(rows: list[dict]) -> pa.Table:
    """Result rows (dicts from finish_row; extra keys ignored, missing ones null) -> Table."""
    names = RESULTS_SCHEMA.names
    columns = {name: [r.get(name) for r in rows] for name in names}
    return pa.Table.from_pydict(columns, schema=RESULTS_SCHEMA)
