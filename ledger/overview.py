"""The output as a whole, for the summary and the report: whatever run (or resume) writes them, they describe
every row recorded so far, not only this run's part.

- `{output}/_runs/<start>-<random>.json`: one record per run (when, how long, how many rows, the settings
  fingerprint), written at the end of each run; rates over the output come from these.
- the results rows: per-stage timings of `ok` rows (mean, p50, p95), error examples per kind with their message, the
  distribution of mask sizes (repainted share of each image), overall and per mask source (the manifest or a
  detector, --mask-from), and the images written by format (rows, bytes; rows from before the format was recorded
  are left out), read column by column, file by file.
- `{output}/_index/overview.json` and `runs.json` (ledger/caches.py): what each results file adds to the mask
  sizes and error examples, and the run records already read, so that a run reads only the results files and run
  records new since the last one (and the newest results' timings).
"""

from __future__ import annotations

import json
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayinpaint.io.storage import filesystem, join_uri, write_bytes

from . import caches
from .layout import DONE_STATUSES, ERROR, OK, UNCHANGED, Layout

STAGES = ("fetch", "decode", "prepare", "inpaint", "finish", "write")
EXAMPLES_PER_KIND = 5
_TIMING_SAMPLE = 100_000  # per stage: percentiles from at most this many rows (the newest files first)
# Upper edges of the mask-size bins, as a share of the image's pixels; `unchanged` rows (empty mask) count as 0.
MASK_BINS = ((0.0, "0 (empty)"), (0.01, "up to 1%"), (0.05, "1-5%"), (0.2, "5-20%"), (0.5, "20-50%"),
             (1.0, "over 50%"))
OVERVIEW_CACHE = "overview.json"  # {results file name: its size, mask-size bins and error examples}
RUNS_CACHE = "runs.json"  # {run record name: the record}
_COLUMNS = ("id", "status", "error_kind", "error", "timings", "mask_pixels", "width", "height", "output_format",
            "output_bytes", "mask_source")
_ENTRY_KEYS = {"bins", "examples", "formats", "sources"}  # what a cached file entry holds (older ones are re-read)


def record_run(root: str, storage, record: dict) -> None:
    """Write this run's record (`record`: started, elapsed_s, processed, by_status, settings_fingerprint)."""
    name = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(record['started']))}-{uuid.uuid4().hex[:8]}.json"
    write_bytes(join_uri(Layout(root).runs, name), (json.dumps(record, default=str) + "\n").encode(), storage)


def read_runs(root: str, storage) -> list[dict]:
    """Every run's record, oldest first. A daily job gathers hundreds: those read by an earlier run come from the
    cache (`_index/runs.json`), the rest are fetched together, not one round trip after another."""
    fs, path = filesystem(Layout(root).runs, storage)
    try:
        paths = {p.rstrip("/").rsplit("/", 1)[-1]: p for p in fs.ls(path, detail=False, refresh=True)
                 if p.endswith(".json")}
    except FileNotFoundError:
        return []
    known = caches.load(root, RUNS_CACHE, storage)
    new = [p for name, p in paths.items() if name not in known]
    texts = fs.cat(new) if new else {}  # keyed by the filesystem's own form of each path
    fetched = {p.rstrip("/").rsplit("/", 1)[-1]: json.loads(t) for p, t in texts.items()}
    runs = {name: known[name] if name in known else fetched[name] for name in sorted(paths)}
    if fetched or len(known) != len(runs):
        caches.save(root, RUNS_CACHE, storage, runs)
    return list(runs.values())


def run_totals(runs: list[dict]) -> dict:
    """Rows, images and wall-clock seconds of the runs that processed rows, and their rates."""
    working = [r for r in runs if r.get("processed")]
    seconds = sum(r.get("elapsed_s", 0.0) for r in working)
    rows = sum(r["processed"] for r in working)
    images = sum(r.get("by_status", {}).get(s, 0) for r in working for s in DONE_STATUSES)
    counted = [r for r in working if "regions" in r]  # runs recorded before regions were counted have none
    region_s = sum(r.get("elapsed_s", 0.0) for r in counted)
    regions = sum(r["regions"] for r in counted)
    return {"runs": len(runs), "runs_that_processed_rows": len(working), "processing_s": round(seconds, 3),
            "rows_processed": rows, "rows_per_s": round(rows / seconds, 4) if seconds else None,
            "images_per_s": round(images / seconds, 4) if seconds else None, "regions": regions,
            "regions_per_s": round(regions / region_s, 4) if region_s else None}


def describe_output(root: str, storage, ledger, record: dict) -> dict:
    """Record this run, then describe the output as a whole: run totals and rates plus `results_overview`."""
    record_run(root, storage, record)
    return {**run_totals(read_runs(root, storage)), **results_overview(ledger)}


def results_overview(ledger) -> dict:
    """Stage timings, error examples and mask sizes over every results row (see the module docstring).

    What each results file adds to the mask sizes and error examples is kept in `_index/overview.json`, by file
    name and size (a file's rows never change under its name: rewrites and merges write new names). So a run
    reads only the files new since the last one, plus the newest files' timings until the sample is full."""
    known = caches.load(ledger.output, OVERVIEW_CACHE, ledger.storage)
    timings = {s: [] for s in STAGES}
    per_file: dict = {}  # newest file first, as the examples and the timing sample are taken
    for path, size in reversed(ledger.listing()):
        name = path.rsplit("/", 1)[-1]
        entry = known.get(name)
        if isinstance(entry, dict) and entry.get("size") == size and _ENTRY_KEYS <= entry.keys():
            per_file[name] = entry
            if _sampling(timings):
                _scan_file(ledger, path, timings, whole=False)
        else:
            per_file[name] = {"size": size, **_scan_file(ledger, path, timings, whole=True)}
    if per_file != known:
        caches.save(ledger.output, OVERVIEW_CACHE, ledger.storage, per_file)
    examples: dict = {}
    bins = np.zeros(len(MASK_BINS), np.int64)
    formats: dict = {}
    sources: dict = {}
    for entry in per_file.values():
        bins += np.asarray(entry["bins"], np.int64)
        for name, b in entry["sources"].items():
            sources[name] = np.asarray(sources.get(name, np.zeros(len(MASK_BINS), np.int64))) + np.asarray(b)
        for fmt, (n, size) in entry["formats"].items():
            formats[fmt] = [formats.get(fmt, [0, 0])[0] + n, formats.get(fmt, [0, 0])[1] + size]
        for kind, ex in entry["examples"].items():
            into = examples.setdefault(kind, {"ids": [], "message": ex["message"]})
            into["ids"].extend(ex["ids"][: EXAMPLES_PER_KIND - len(into["ids"])])
    return {"stage_timings_s": {s: _stats(v) for s, v in timings.items() if v},
            "error_examples": examples,
            "mask_area": {label: int(n) for (_, label), n in zip(MASK_BINS, bins)},
            # rows done (ok, unchanged) per mask source (manifest, union, text, prompt:...), with their mask sizes
            "mask_sources": {name: {"rows": int(b.sum()), "mask_area": {label: int(n) for (_, label), n
                                                                         in zip(MASK_BINS, b)}}
                             for name, b in sorted(sources.items())},
            "output_bytes": {fmt: {"rows": n, "bytes": size, "bytes_per_row": round(size / n) if n else None}
                             for fmt, (n, size) in sorted(formats.items())}}


def _scan_file(ledger, path: str, timings: dict, whole: bool) -> dict:
    """Add the file's ok rows to the timing sample while it has room; with `whole`, also return what the file
    adds to the mask sizes and error examples (else only the timings are read)."""
    bins = np.zeros(len(MASK_BINS), np.int64)
    examples: dict = {}
    formats: dict = {}
    sources: dict = {}
    with ledger.fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        for g in range(pf.num_row_groups):  # one row group at a time: memory bounded by a group, not a file
            # timings are the widest column and only sampled: once the sample is full they are not read
            sampling = _sampling(timings)
            if not (whole or sampling):
                break
            wanted = _COLUMNS if whole else ("status", "timings")
            columns = [c for c in wanted if c in pf.schema_arrow.names and (sampling or c != "timings")]
            t = pf.read_row_group(g, columns=columns)
            if "timings" in columns:  # rows that went through every stage (error and unchanged rows skip some)
                _add_timings(t.filter(pc.equal(t.column("status"), OK)).column("timings").combine_chunks(),
                             timings)
            if whole:
                _add_examples(t, examples)
            if whole and {"mask_pixels", "width", "height"} <= set(columns):
                bins += _mask_bins(t)
            if whole and {"output_format", "output_bytes"} <= set(columns):
                _add_formats(t, formats)
            if whole and {"mask_source", "mask_pixels", "width", "height"} <= set(columns):
                _add_sources(t, sources)
    return {"bins": bins.tolist(), "examples": examples, "formats": formats, "sources": sources}


def _add_sources(t: pa.Table, sources: dict) -> None:
    """Add the table's done rows' mask-size bins, by mask source, into `sources` (rows recorded before the source
    was have none and are left out)."""
    col = t.column("mask_source")
    for name in pc.unique(pc.drop_null(col)).to_pylist():
        bins = _mask_bins(t.filter(pc.fill_null(pc.equal(col, name), False)))
        sources[name] = [a + int(b) for a, b in zip(sources.get(name, [0] * len(MASK_BINS)), bins)]


def _add_formats(t: pa.Table, formats: dict) -> None:
    """Add the table's images written, [rows, bytes] by format, into `formats`."""
    g = t.select(["output_format", "output_bytes"]).group_by("output_format").aggregate(
        [("output_bytes", "count"), ("output_bytes", "sum")])
    for fmt, n, size in zip(*(g.column(c).to_pylist() for c in ("output_format", "output_bytes_count",
                                                                  "output_bytes_sum"))):
        if fmt is not None:
            rows, total = formats.get(fmt, [0, 0])
            formats[fmt] = [rows + int(n), total + int(size or 0)]


def _add_examples(t: pa.Table, examples: dict) -> None:
    errors = t.filter(pc.equal(t.column("status"), ERROR))
    for rid, kind, msg in zip(*(errors.column(c).to_pylist() for c in ("id", "error_kind", "error"))):
        ex = examples.setdefault(kind or "unknown", {"ids": [], "message": msg})
        if len(ex["ids"]) < EXAMPLES_PER_KIND:
            ex["ids"].append(rid)


def _sampling(timings: dict) -> bool:
    """Whether any stage's timing sample still has room."""
    return any(len(v) < _TIMING_SAMPLE for v in timings.values())


def _add_timings(col: pa.StructArray, timings: dict) -> None:
    for stage in STAGES:
        if len(timings[stage]) >= _TIMING_SAMPLE or stage not in [f.name for f in col.type]:
            continue
        values = pc.drop_null(col.field(stage)).to_numpy(zero_copy_only=False)
        timings[stage].extend(values[: _TIMING_SAMPLE - len(timings[stage])].tolist())


def _stats(values: list) -> dict:
    a = np.asarray(values, np.float64)
    return {"rows": int(a.size), "mean": round(float(a.mean()), 5), "p50": round(float(np.percentile(a, 50)), 5),
            "p95": round(float(np.percentile(a, 95)), 5)}


def _mask_bins(t: pa.Table) -> np.ndarray:
    """Rows per mask-size bin: ok rows by their repainted share, unchanged rows in the first bin."""
    ok = pc.fill_null(pc.equal(t.column("status"), OK), False).to_numpy(zero_copy_only=False)
    unchanged = pc.fill_null(pc.equal(t.column("status"), UNCHANGED), False).to_numpy(zero_copy_only=False)
    px = pc.fill_null(t.column("mask_pixels"), 0).to_numpy(zero_copy_only=False).astype(np.float64)
    area = (pc.fill_null(t.column("width"), 0).to_numpy(zero_copy_only=False).astype(np.float64)
            * pc.fill_null(t.column("height"), 0).to_numpy(zero_copy_only=False))
    out = mask_bin_counts(np.where(area > 0, px / np.maximum(area, 1), 0.0)[ok])
    out[0] += int(np.sum(unchanged))
    return out


def mask_bin_counts(share: np.ndarray) -> np.ndarray:
    """How many of the shares (a mask's pixels over the image's) fall in each of MASK_BINS."""
    edges = np.array([e for e, _ in MASK_BINS])
    index = np.minimum(np.searchsorted(edges, share, side="left"), len(MASK_BINS) - 1)
    return np.bincount(index, minlength=len(MASK_BINS))
