"""The job's CPU stages as plain functions over pyarrow batches (Ray calls them through `map_batches`).

select -> prepare -> [model actor, see predictor.py] -> finish_and_write. Each function is usable without Ray.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from rayinpaint.io.errors import OutputWriteError, RowError
from rayinpaint.io.manifest import canonicalize
from rayinpaint.io.finish import finish_row
from rayinpaint.io.prepare import PREPARED_SCHEMA, prepare_row
from rayinpaint.io.results import OK, results_table
from rayinpaint.io.settings import OutputSettings, PrepareSettings

from .events import report
from .idset import IdSet
from rayinpaint.ledger.files import write_file

# What each finish task sends back to the driver: small, for progress, summary and report.
DRIVER_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("status", pa.string()),
    ("error_kind", pa.string()),
    ("error", pa.string()),
    ("model_sha256", pa.string()),
    ("prompt_truncated", pa.bool_()),
    ("actor", pa.string()),
    ("speed", pa.string()),  # the speed switches in effect in the actor that ran the row
    ("region_count", pa.int32()),  # regions the row was inpainted in (0 unless ok)
    ("mask_source", pa.string()),  # io.results: manifest, union or the detector's name (null: no mask was built)
    ("mask_fraction", pa.float64()),  # a detector's mask (before dilation) as a fraction of the image; else null
    ("t_detect", pa.float64()),  # CPU seconds the detector took on the row (part of its prepare time); else null
    ("preview_jpeg", pa.binary()),
])

_THREADS = 8

# Driver-only status: the row was processed but could not be recorded because the output is unwritable.
UNWRITTEN = "unwritten"


def select_rows(batch: pa.Table, colmap, exclude: IdSet | None, include: IdSet | None,
                protocol: str) -> pa.Table:
    """Canonicalise a raw manifest batch and keep the rows this pass must process: ids not in `exclude` and,
    when given, in `include` (sets built once per pass on the driver, see idset.py).

    Ray's `path` column has no protocol (`bucket/key`), so the manifest's protocol is passed separately.
    """
    t = canonicalize(batch, colmap, source_column="path", protocol=protocol)
    # Rows without an id never reach the model: the driver records them as `missing_id` error rows.
    t = t.filter(pc.fill_null(pc.not_equal(t.column("id"), ""), False))
    if exclude is not None and len(exclude):
        t = t.filter(pa.array(~exclude.contains(t.column("id"))))
    if include is not None:
        t = t.filter(pa.array(include.contains(t.column("id"))))
    return t


def prepare_batch(batch: pa.Table, settings: PrepareSettings, detector=None) -> pa.Table:
    rows = batch.to_pylist()

    def one(row):
        t0 = time.perf_counter()
        p = prepare_row(row, settings, detector)
        p["t_prepare"] = time.perf_counter() - t0
        return {k: p.get(k) for k in PREPARED_SCHEMA.names}

    with ThreadPoolExecutor(min(_THREADS, max(1, len(rows)))) as ex:
        out = list(ex.map(one, rows))
    return pa.Table.from_pylist(out, schema=PREPARED_SCHEMA)


class DetectingPrepare:
    """The prepare stage when the job detects masks (--mask-from): a Ray actor that builds the detector once (an
    ONNX session or a CLIPSeg model: seconds, and hundreds of MB for CLIPSeg) and prepares every batch given to it.
    The batch's rows are fetched and decoded on threads as in `prepare_batch`, but detected one at a time: the
    actor holds one CPU, and the detector runs one thread (detect/), so concurrent calls would only share it."""

    def __init__(self, settings: PrepareSettings, detect):
        from rayinpaint.detect import build_detector

        self.settings = settings
        detector, lock = build_detector(detect), threading.Lock()

        def one_at_a_time(rgb):
            with lock:
                return detector(rgb)

        self.detector = one_at_a_time

    def __call__(self, batch: pa.Table) -> pa.Table:
        return prepare_batch(batch, self.settings, self.detector)


def preview_wanted(row_id: str, probability: float) -> bool:
    if probability <= 0:
        return False
    h = int.from_bytes(hashlib.sha1(row_id.encode("utf-8")).digest()[:8], "big")
    return h / 2**64 < probability


@dataclass(frozen=True)
class FinishContext:
    """What every finish task needs, built once per run on the driver."""
    rows: PrepareSettings
    out: OutputSettings
    run: dict                     # sampler settings recorded in every results row
    results_uri: str              # the ledger's folder, {output}/results
    preview_probability: float = 0.0
    events: object = None         # jobs/events.py RunEvents actor told the rows each task wrote (None: no one)


def finish_and_write(batch: pa.Table, ctx: FinishContext) -> pa.Table:
    """Paste back, encode and write each image; write this batch's rows as one results file.

    A row whose image, or whose results file, could not be written to the output comes back to the driver with
    status UNWRITTEN (never a ledger status): it is not recorded, so it is redone by the next run, and the
    driver stops the job with the message."""
    rows = batch.to_pylist()
    with ThreadPoolExecutor(min(_THREADS, max(1, len(rows)))) as ex:
        done = list(ex.map(lambda row: _finish_one(row, ctx), rows))
    recorded = [r for r in done if r["status"] != UNWRITTEN]
    if recorded:
        try:
            write_file(ctx.results_uri, results_table(recorded), ctx.out.storage)
        except RowError as e:  # the ledger cannot be written: none of these rows is recorded
            msg = f"cannot write the results ledger {e.message}"
            done = [{"id": r["id"], "status": UNWRITTEN, "error": msg, "actor": r.get("actor")} for r in done]
        else:  # on storage now: counted by the progress line from here, before the driver receives the rows
            report(ctx.events, "written", dict(Counter(r["status"] for r in recorded)),
                   sum(r["region_count"] for r in recorded))
    return pa.Table.from_pydict({name: [r.get(name) for r in done] for name in DRIVER_SCHEMA.names},
                                schema=DRIVER_SCHEMA)


def _finish_one(row: dict, ctx: FinishContext) -> dict:
    """One row's results row, plus the driver's `actor` and `preview_jpeg` keys (not ledger columns)."""
    res = row.pop("result", None)  # one output per region (bytes), or None
    info = dict(ctx.run)
    info["model_sha256"] = row.pop("model_sha256", None)
    info["t_inpaint"] = row.pop("t_inpaint", None) or 0.0
    actor = row.pop("actor", None)
    speed = row.pop("speed", None)
    want = row["status"] != "error" and preview_wanted(row["id"], ctx.preview_probability)
    try:
        r = finish_row(row, res, ctx.rows, ctx.out, info, preview=want)
    except OutputWriteError as e:
        r = {"id": row["id"], "status": UNWRITTEN, "error": str(e)}
    r["actor"] = actor
    r["speed"] = speed
    r["region_count"] = len(r.get("regions") or []) if r["status"] == OK else 0
    found, area = row.get("detected_pixels"), (row.get("width") or 0) * (row.get("height") or 0)
    r["mask_fraction"] = found / area if found is not None and area else None
    r["t_detect"] = row.get("t_detect")
    return r
