"""Scale benchmark of the job's bookkeeping: a finished N-row output in the job's own format, then a no-op
resume (the whole `run` command's work when nothing is left to do) and a downstream read, timed, with the
requests counted on S3.

    python bench/scale.py --rows 1000000                         # local disk
    python bench/scale.py --rows 1000000 --s3 --latency-ms 20   # moto S3 on loopback, 20 ms added per request
    python bench/scale.py --rows 100000 --shard-rows 16         # the layout of unmerged finish-task shards
    python bench/scale.py --rows 1000000 --s3 --past-runs 365   # and a year of daily runs' records
    python bench/scale.py --rows 30000000 --new-rows 300000      # then a daily run adding 1% new rows

The S3 mode needs the test extras (moto) and uses the tests' fault proxy (tests/faultproxy.py) to add the
latency and count requests. Prints one JSON record: machine, versions, date, settings and the timings. With `--new-rows M`, a manifest
file of M new ids is added after the two no-op resumes and the `run` command is timed once more
(`incremental_resume`): its pass is replaced by a stand-in that records an `ok` row for each new id as the finish
tasks do (results files of `NEW_FILE_ROWS` rows, as the in-run compaction leaves them), so `seconds` is the
bookkeeping's time alone (the stand-in's own time is `pass_s`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent


def results_chunk(start: int, n: int) -> pa.Table:
    """n finished results rows as the job writes them (every column filled, 95% ok, 5% error)."""
    from rayinpaint.io.results import RESULTS_SCHEMA, TIMINGS_TYPE

    i = np.arange(start, start + n)
    ids = pc.binary_join_element_wise("row-", pa.array(np.char.zfill(i.astype(str), 9)), "")
    err = i % 20 == 0
    status = pa.array(np.where(err, "error", "ok"))
    jitter = np.random.default_rng(start).uniform(0.5, 1.5, (6, n))  # measured times vary, and compress as such
    timings = pa.StructArray.from_arrays([pa.array(v * j) for v, j in zip((0.01, 0.02, 0.03, 0.5, 0.04, 0.01), jitter)],
                                         fields=list(TIMINGS_TYPE))
    cols = {
        "id": ids, "status": status,
        "error_kind": pa.array(np.where(err, "not_found", None).tolist(), pa.string()),
        "error": pa.array(np.where(err, "the image s3://bucket/img/x.jpg was not found", None).tolist(), pa.string()),
        "output_uri": pc.binary_join_element_wise("s3://bucket/out/images/", ids, ".png", ""),
        "output_name_hashed": pa.array(np.zeros(n, bool)),
        "image_uri": pc.binary_join_element_wise("s3://bucket/img/", ids, ".jpg", ""),
        "width": pa.array(np.full(n, 1024, np.int32)), "height": pa.array(np.full(n, 768, np.int32)),
        "seed": pa.array(i * 7919), "prompt": pa.array(np.full(n, "clean background")),
        "negative_prompt": pa.nulls(n, pa.string()), "prompt_truncated": pa.array(np.zeros(n, bool)),
        "sampler": pa.array(np.full(n, "dpmpp_2m")), "steps": pa.array(np.full(n, 25, np.int32)),
        "guidance": pa.array(np.full(n, 7.5)), "strength": pa.array(np.full(n, 1.0)),
        "resolution": pa.array(np.full(n, 512, np.int32)),
        "window": pa.FixedSizeListArray.from_arrays(pa.array(np.tile([0, 0, 512, 512], n).astype(np.int32)), 4),
        "regions": pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), pa.StructArray.from_arrays(
            [pa.FixedSizeListArray.from_arrays(pa.array(np.tile([0, 0, 512, 512], n).astype(np.int32)), 4),
             pa.array(np.full(n, 512, np.int32))], names=["window", "resolution"])),  # one region per row
        "mask_pixels": pa.array(i % 50_000),
        "mask_source": pa.array(np.where(err, None, "manifest").tolist(), pa.string()),
        "mask_uri": pc.binary_join_element_wise("s3://bucket/masks/", ids, ".png", ""), "model_sha256": pa.array(np.full(n, "ab" * 32)), "timings": timings,
        # null: an output from before settings were fingerprinted, which a rerun adopts (ledger/fingerprint.py)
        "settings_fingerprint": pa.nulls(n, pa.string()),
        "output_format": pa.array(np.where(err, None, "png").tolist(), pa.string()),
        "output_bytes": pa.array(2_000_000 + i % 1000, pa.int64(), mask=err),
        "output_fallback": pa.nulls(n, pa.string()),
    }
    return pa.table([cols[f.name].cast(f.type) for f in RESULTS_SCHEMA], schema=RESULTS_SCHEMA)


def synthesise(output: str, manifest: str, rows: int, shard_rows: int, storage) -> int:
    """The manifest (ids and image URIs) and the results of a finished run; returns the results files written."""
    from rayinpaint.ledger.compaction import ROW_GROUP_ROWS
    from rayinpaint.ledger.files import Ledger, READ_THREADS
    from concurrent.futures import ThreadPoolExecutor

    step = 1_000_000
    for k in range(0, rows, step):
        manifest_file(manifest, f"part-{k // step:05d}.parquet", k, min(step, rows - k), storage)
    ledger = Ledger(output, storage)
    starts = list(range(0, rows, shard_rows))
    with ThreadPoolExecutor(READ_THREADS) as ex:
        # in row groups of the size merged files have (ledger/compaction.py), as a merged output would be
        list(ex.map(lambda s: ledger.write_rows(results_chunk(s, min(shard_rows, rows - s)),
                                                row_group_rows=ROW_GROUP_ROWS), starts))
    return len(starts)


def manifest_file(manifest: str, name: str, start: int, n: int, storage) -> None:
    """One manifest file of the ids start..start+n-1 (ids and image URIs as the results have them)."""
    from rayinpaint.io.storage import filesystem

    fs, mpath = filesystem(manifest, storage)
    fs.makedirs(mpath, exist_ok=True)
    ids = results_chunk(start, n).select(["id", "image_uri"]).rename_columns(["id", "image"])
    box = pa.array([[[0.0, 0.0, 64.0, 64.0]]], pa.list_(pa.list_(pa.float64())))
    ids = ids.append_column("boxes", pa.repeat(box[0], ids.num_rows) if hasattr(pa, "repeat")
                            else pa.array([box[0].as_py()] * ids.num_rows, box.type))
    with fs.open(f"{mpath}/{name}", "wb") as f:
        pq.write_table(ids, f)


def past_runs(output: str, runs: int, storage) -> None:
    """The run records (`_runs/`) of a job run daily for `runs` days, each of which processed some rows."""
    from rayinpaint.ledger.overview import record_run

    now = time.time()
    for day in range(runs):
        record_run(output, storage, {"started": now - 86_400 * (runs - day), "elapsed_s": 3600.0,
                                     "processed": 10_000, "by_status": {"ok": 10_000}})


def rss_mb() -> float:
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss, not inherited from the parent)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


NEW_FILE_ROWS = 4096  # rows per results file the incremental run's stand-in pass writes


def noop_resume(output: str, manifest: str, storage_kw: dict, new_rows: int = 0) -> dict:
    """The `run` command on the finished output (every id done, nothing to process, so Ray is not started), in
    a process of its own so that its peak memory is the driver's alone. `new_rows`: that many ids are left (a
    daily run's new file), processed by the stand-in pass (see the module docstring)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_resume_in_child, (output, manifest, storage_kw, new_rows))


def _resume_in_child(output: str, manifest: str, storage_kw: dict, new_rows: int) -> dict:
    import logging

    import torch  # noqa: F401 - imported before the clock starts, as the CLI has it loaded already

    from rayinpaint.jobs import inpaint
    from rayinpaint.jobs.config import JobConfig

    logging.basicConfig(level=logging.WARNING)
    os.environ["RAYINPAINT_SPILL_DIR"] = tempfile.mkdtemp(prefix="scale-spill-")
    steps = _watch_steps(inpaint)
    passed = {"s": 0.0}
    inpaint.process_rows = lambda cfg, storage, ledger, plan, tally, *a, **kw: _stand_in_pass(ledger, plan, tally,
                                                                                              passed)
    cfg = JobConfig(manifest=(manifest,), output=output, weights="random:tiny", **storage_kw)
    rss_before = rss_mb()
    t0 = time.perf_counter()
    code = inpaint.run_job(cfg)
    took = time.perf_counter() - t0
    summary = json.loads(_read(f"{output}/_SUMMARY.json", cfg.storage()))
    assert code == 0 and summary["complete"] and summary["this_run"]["processed"] == new_rows, (code, summary)
    peak = max(steps.pop("_seen") + [rss_mb()])
    return {"seconds": round(took - passed["s"], 2), "pass_s": round(passed["s"], 2), "exit_code": code,
            "accounted": summary["accounted"], "manifest_files_read": steps.pop("_files_read", None),
            "spill_bytes": steps.pop("_spill_bytes", None),
            "driver_rss_after_imports_mb": round(rss_before), "driver_peak_rss_mb": round(peak),
            "driver_peak_over_imports_bytes_per_id": round((peak - rss_before) * 2**20 / summary["accounted"], 1),
            "steps": steps}


def _stand_in_pass(ledger, plan, tally, passed: dict) -> None:
    """The pass, without Ray or a model: an `ok` row for each id left, recorded as the finish tasks record rows
    (results files of NEW_FILE_ROWS rows, each handed to the driver's tally)."""
    t0 = time.perf_counter()
    for ids in plan.index.ids("SELECT id FROM todo", NEW_FILE_ROWS):
        first = int(ids[0].as_py().split("-")[1])  # the stand-in's ids are consecutive numbers (results_chunk)
        rows = results_chunk(first, len(ids))
        assert rows.column("id").combine_chunks().equals(ids), "ids left are not the new file's"
        ledger.write_rows(rows)
        tally.add(rows)
    passed["s"] += time.perf_counter() - t0


def _watch_steps(inpaint) -> dict:
    """Wrap the job's steps: seconds and peak RSS of each (VmHWM reset before each step, Linux; the peak
    before each reset is kept in "_seen", so the run's peak includes what ran between the steps)."""
    steps: dict = {}
    seen = steps.setdefault("_seen", [])

    def watched(name, fn):
        def run(*a, **kw):
            seen.append(rss_mb())  # the peak since the last reset (the steps between the watched ones)
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # resets VmHWM to the current RSS
            except OSError:
                pass
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            steps[name] = {"s": round(time.perf_counter() - t0, 2), "peak_rss_mb": round(rss_mb())}
            if name == "start_plan":
                steps["_files_read"] = len(out.scan.files) - len(out.old)
            if name == "outcome_of":  # the index's folder holds every table of the run by now (ledger/index.py)
                folder = Path(os.environ["RAYINPAINT_SPILL_DIR"])
                steps["_spill_bytes"] = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            return out
        return run

    for name in ("read_manifest", "start_plan", "compact", "outcome_of", "describe_output", "write_outputs"):
        setattr(inpaint, name, watched(name, getattr(inpaint, name)))
    return steps


def _read(uri: str, storage) -> bytes:
    from rayinpaint.io.storage import read_bytes

    return read_bytes(uri, storage)


def downstream(output: str, storage) -> dict:
    """What a consumer does with `results/*.parquet`: counts by status, one id looked up, every column read."""
    from rayinpaint.io.storage import filesystem
    from rayinpaint.jobs.pipeline import _arrow_fs

    fs, path = filesystem(f"{output}/results", storage)
    ds = pads.dataset(f"{path}", format="parquet", filesystem=_arrow_fs(fs))
    out = {"files": len(ds.files)}
    t0 = time.perf_counter()
    by_status = ds.to_table(columns=["status"]).group_by("status").aggregate([("status", "count")])
    out["count_by_status_s"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    hit = ds.to_table(filter=pc.field("id") == "row-000000042")
    out["lookup_by_id_s"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    whole = ds.to_table()
    out["read_all_columns_s"] = round(time.perf_counter() - t0, 3)
    assert hit.num_rows == 1 and sum(by_status.column(1).to_pylist()) == whole.num_rows
    out["bytes_on_storage"] = sum(fs.size(f) for f in ds.files)
    return out


def measure(output: str, manifest: str, args, storage, storage_kw: dict, proxy=None) -> dict:
    from rayinpaint.ledger.files import Ledger

    rec = {"rows": args.rows, "shard_rows": args.shard_rows}
    t0 = time.perf_counter()
    rec["files_written"] = synthesise(output, manifest, args.rows, args.shard_rows, storage)
    past_runs(output, args.past_runs, storage)
    rec["synthesise_s"] = round(time.perf_counter() - t0, 1)
    if rec["files_written"] > 1 and not args.no_downstream:  # as written, before the first resume merges it
        rec["downstream_as_written"] = downstream(output, storage)
    for k in ("first_resume", "second_resume"):  # the first merges an unmerged layout; the second is a daily run
        if proxy is not None:
            proxy.reset_counts()
        rec[k] = noop_resume(output, manifest, storage_kw)
        if proxy is not None:
            methods = [m for m, _, _ in proxy.history]
            rec[k]["requests"] = proxy.requests
            rec[k]["gets"] = methods.count("GET")
            if os.environ.get("SCALE_REQUESTS"):  # every request of the resume, for a look at where they go
                rec[k]["request_log"] = [f"{m} {key}" for m, key, _ in proxy.history]
        rec[k]["results_files_after"] = len(Ledger(output, storage).paths())
    if args.new_rows:
        manifest_file(manifest, "part-new.parquet", args.rows, args.new_rows, storage)
        if proxy is not None:
            proxy.reset_counts()
        rec["incremental_resume"] = noop_resume(output, manifest, storage_kw, args.new_rows)
        if proxy is not None:
            rec["incremental_resume"]["requests"] = proxy.requests
        rec["incremental_resume"].update(new_rows=args.new_rows,
                                         results_files_after=len(Ledger(output, storage).paths()))
    if not args.no_downstream:
        rec["downstream"] = downstream(output, storage)
    return rec


def on_s3(args) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    import boto3
    from faultproxy import FaultProxy
    from moto.server import ThreadedMotoServer

    from rayinpaint.io.storage import StorageOptions

    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        os.environ.setdefault(k, "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    moto = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=moto, region_name="us-east-1").create_bucket(Bucket="bench")
    # Every request held `latency` seconds before it is forwarded: what a real object store's round trip costs.
    with FaultProxy(moto, rate=1.0, mix={"slow": 1}, slow_delay=args.latency_ms / 1000, max_log=10**7) as proxy:
        kw = {"endpoint_url": proxy.url, "region": "us-east-1"}
        storage = StorageOptions(endpoint_url=moto, region="us-east-1")  # synthesis goes around the proxy
        rec = measure("s3://bench/out", "s3://bench/manifest", args, storage, kw, proxy)
    server.stop()
    return rec


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--shard-rows", type=int, default=1_000_000,
                   help="rows per results file as synthesised (16: the finish tasks' shards before any merge)")
    p.add_argument("--s3", action="store_true", help="a moto S3 server on loopback behind a latency proxy")
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--past-runs", type=int, default=0, help="run records of earlier daily runs to synthesise")
    p.add_argument("--no-downstream", action="store_true", help="skip the downstream read (it holds every row)")
    p.add_argument("--new-rows", type=int, default=0,
                   help="then a daily run: a manifest file of this many new ids (see the module docstring)")
    args = p.parse_args(argv)
    logging_quiet()
    import torch  # noqa: F401 - imported first, as the job's CLI does, so import time is not counted below

    from rayinpaint.io.storage import StorageOptions

    record = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
              "pyarrow": pa.__version__, "store": "s3 (moto, loopback)" if args.s3 else "local disk",
              "latency_ms": args.latency_ms if args.s3 else 0}
    if args.s3:
        record.update(on_s3(args))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            record.update(measure(f"{tmp}/out", f"{tmp}/manifest", args, StorageOptions(), {}))
    print(json.dumps(record, indent=1))
    return 0


def logging_quiet() -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request


if __name__ == "__main__":
    sys.exit(main())
