"""The job's CPU stages as plain functions over pyarrow batches (Ray calls them through `map_batches`).

select -> prepare -> [model actor, see predictor.py] -> finish_and_write. Each function is usable without Ray.
"""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayinpaint.io.errors import OutputWriteError, RowError
from rayinpaint.io.manifest import canonicalize
from rayinpaint.io.finish import finish_row
from rayinpaint.io.prepare import prepare_row
from rayinpaint.io.results import results_table
from rayinpaint.io.storage import join_uri, write_bytes

from .ledger import new_shard_name, table_to_parquet_bytes

# What travels from prepare to the model and on to finish (one row per manifest row).
PREPARED_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("status", pa.string()),
    ("error_kind", pa.string()),
    ("error", pa.string()),
    ("seed", pa.int64()),
    ("prompt", pa.string()),
    ("negative_prompt", pa.string()),
    ("image_uri", pa.string()),
    ("model_image", pa.binary()),
    ("model_mask", pa.binary()),
    ("window", pa.list_(pa.int64())),
    ("width", pa.int64()),
    ("height", pa.int64()),
    ("resolution", pa.int64()),
    ("mask_pixels", pa.int64()),
    ("source", pa.binary()),
    ("repaint_mask", pa.binary()),
    ("t_fetch", pa.float64()),
    ("t_decode", pa.float64()),
    ("t_prepare", pa.float64()),
])

# What each finish task sends back to the driver: small, for progress, summary and report.
DRIVER_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("status", pa.string()),
    ("error_kind", pa.string()),
    ("error", pa.string()),
    ("model_sha256", pa.string()),
    ("actor", pa.string()),
    ("preview_jpeg", pa.binary()),
])

_THREADS = 8

# Driver-only status: the row was processed but could not be recorded because the output is unwritable.
UNWRITTEN = "unwritten"


def select_rows(batch: pa.Table, colmap, exclude: pa.Array | None, include: pa.Array | None,
                protocol: str) -> pa.Table:
    """Canonicalise a raw manifest batch and keep the rows this pass must process.

    Ray's `path` column has no protocol (`bucket/key`), so the manifest's protocol is passed separately.
    """
    t = canonicalize(batch, colmap, source_column="path", protocol=protocol)
    # Rows without an id never reach the model: the driver records them as `missing_id` error rows.
    t = t.filter(pc.fill_null(pc.not_equal(t.column("id"), ""), False))
    ids = t.column("id")
    if exclude is not None and len(exclude):
        t = t.filter(pc.invert(pc.fill_null(pc.is_in(ids, value_set=exclude), False)))
    if include is not None:
        t = t.filter(pc.fill_null(pc.is_in(t.column("id"), value_set=include), False))
    return t


def prepare_batch(batch: pa.Table, settings) -> pa.Table:
    rows = batch.to_pylist()

    def one(row):
        t0 = time.perf_counter()
        p = prepare_row(row, settings)
        p["t_prepare"] = time.perf_counter() - t0
        return {k: p.get(k) for k in PREPARED_SCHEMA.names}

    with ThreadPoolExecutor(min(_THREADS, max(1, len(rows)))) as ex:
        out = list(ex.map(one, rows))
    return pa.Table.from_pylist(out, schema=PREPARED_SCHEMA)


def preview_wanted(row_id: str, probability: float) -> bool:
    if probability <= 0:
        return False
    h = int.from_bytes(hashlib.sha1(row_id.encode("utf-8")).digest()[:8], "big")
    return h / 2**64 < probability


def finish_and_write(batch: pa.Table, settings, out, run: dict, preview_probability: float,
                     results_uri: str) -> pa.Table:
    """Paste back, encode and write each image; write this batch's rows as one results shard.

    A row whose image, or whose shard, could not be written to the output comes back to the driver with
    status UNWRITTEN (never a ledger status): it is not recorded, so it is redone by the next run, and the
    driver stops the job with the message."""
    R = settings.resolution
    rows = batch.to_pylist()

    def one(row):
        res = row.pop("result", None)
        arr = np.frombuffer(res, np.uint8).reshape(R, R, 3) if res else None
        info = dict(run)
        info["model_sha256"] = row.pop("model_sha256", None)
        info["t_inpaint"] = row.pop("t_inpaint", None) or 0.0
        actor = row.pop("actor", None)
        want = row["status"] != "error" and preview_wanted(row["id"], preview_probability)
        r = finish_row(row, arr, settings, out, info, preview=want)
        return r, actor

    def guarded(row):
        rid = row["id"]
        try:
            return one(row)
        except OutputWriteError as e:
            return {"id": rid, "status": UNWRITTEN, "error": str(e)}, None

    with ThreadPoolExecutor(min(_THREADS, max(1, len(rows)))) as ex:
        pairs = list(ex.map(guarded, rows))
    done = [r for r, _ in pairs if r["status"] != UNWRITTEN]
    previews = {r["id"]: r.pop("preview_jpeg", None) for r in done}
    if done:
        try:
            write_bytes(join_uri(results_uri, new_shard_name()), table_to_parquet_bytes(results_table(done)),
                        out.storage)
        except RowError as e:  # the ledger cannot be written: none of these rows is recorded
            msg = f"cannot write the results ledger {e.message}"
            pairs = [({"id": r["id"], "status": UNWRITTEN, "error": msg}, None) for r, _ in pairs]
    return pa.Table.from_pydict({
        "id": [r["id"] for r, _ in pairs],
        "status": [r["status"] for r, _ in pairs],
        "error_kind": [r.get("error_kind") for r, _ in pairs],
        "error": [r.get("error") for r, _ in pairs],
        "model_sha256": [r.get("model_sha256") for r, _ in pairs],
        "actor": [a for _, a in pairs],
        "preview_jpeg": [previews.get(r["id"]) if r["status"] != UNWRITTEN else None for r, _ in pairs],
    }, schema=DRIVER_SCHEMA)
