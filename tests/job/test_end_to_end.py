"""The whole Ray job on a local Ray cluster with the tiny random model.

Manifest, images and outputs on a real S3 endpoint on loopback (moto server) and on local disk.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageFilter

from helpers_io import write_tiny_checkpoint
from helpers_job import BAD, FAST, FAST_TINY, faulthooks_pythonpath, run_cli
from rayinpaint.jobs.cli import main
from rayinpaint.jobs.config import JobConfig
from rayinpaint.bench.demo import make_dataset
from rayinpaint.ledger import index as index_mod
from rayinpaint.jobs.inpaint import run_job
from rayinpaint.ledger.files import read_results

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # a local Ray cluster or the job in a subprocess


def check_untouched(original: np.ndarray, mask: np.ndarray, output: np.ndarray, radius: int) -> None:
    """Every pixel farther than `radius` (Chebyshev, which bounds the Euclidean distance) from the mask is equal."""
    assert original.shape == output.shape
    grown = Image.fromarray((mask > 0).astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(2 * radius + 1))
    outside = np.asarray(grown) == 0
    assert outside.any()
    diff = np.any(original != output, axis=-1)
    assert not diff[outside].any(), f"{int(diff[outside].sum())} pixels outside the repaint region changed"
    assert diff[~outside].any(), "nothing changed inside the mask"


def test_job_on_s3_end_to_end(ray_local, s3_bucket, tmp_path):
    import s3fs

    bucket, opts = s3_bucket
    local = tmp_path / "input"
    make_dataset(str(local), rows=10)
    fs = s3fs.S3FileSystem(**opts.fsspec_kwargs("s3"))
    fs.put(str(local), f"{bucket}/input", recursive=True)
    # The weights come from the bucket too: a single-file checkpoint with LDM key names (tiny config).
    weights = tmp_path / "tiny.safetensors"
    sha = write_tiny_checkpoint(weights)
    fs.put(str(weights), f"{bucket}/weights/tiny.safetensors")
    out = f"s3://{bucket}/run"
    cfg = JobConfig(manifest=(f"s3://{bucket}/input/manifest.parquet",), output=out,
                    endpoint_url=opts.endpoint_url, weights=f"s3://{bucket}/weights/tiny.safetensors",
                    model_config="tiny", weights_cache=str(tmp_path / "cache"), **FAST)
    assert run_job(cfg) == 0

    manifest = pq.read_table(str(local / "manifest.parquet")).to_pylist()
    res = read_results(f"s3://{bucket}/run", opts)
    ids = res.column("id").to_pylist()
    assert sorted(ids) == sorted(r["id"] for r in manifest)  # every id exactly once
    rows = {r["id"]: r for r in res.to_pylist()}
    for rid, kind in BAD.items():
        assert rows[rid]["status"] == "error" and rows[rid]["error_kind"] == kind, rows[rid]
        assert rows[rid]["error"], "an error row carries a reason"
    assert rows["empty-mask"]["status"] == "unchanged"
    good = [r for r in manifest if not r["id"].startswith(("bad-", "empty-"))]
    assert all(rows[r["id"]]["status"] == "ok" for r in good)

    # Untouched pixels are byte-identical (PNG output) for mask-image rows and box rows alike.
    radius = FAST["mask_dilate"] + FAST["feather"] + 1
    for r in good:
        original = np.asarray(Image.open(local / r["image"]).convert("RGB"))
        if r["mask"]:
            mask = np.asarray(Image.open(local / r["mask"]).convert("L")) >= 128
        else:
            mask = np.zeros(original.shape[:2], bool)
            for x0, y0, x1, y1 in r["boxes"]:
                mask[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = True
        uri = rows[r["id"]]["output_uri"]
        output = np.asarray(Image.open(io.BytesIO(fs.cat(uri))).convert("RGB"))
        check_untouched(original, mask, output, radius)

    summary = json.loads(fs.cat(f"{bucket}/run/_SUMMARY.json"))
    assert sum(summary["counts_by_status"].values()) == len(manifest) == summary["accounted"]
    assert summary["counts_by_status"]["error"] == len(BAD)
    assert sum(summary["errors_by_kind"].values()) == len(BAD)
    assert summary["success"] and fs.exists(f"{bucket}/run/_SUCCESS")
    assert summary["model_sha256"] == sha  # the file the actors loaded, downloaded once into the cache
    assert all(r["model_sha256"] == sha for r in rows.values() if r["status"] == "ok")
    assert [p.suffix for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.stat().st_size > 100_000]
    report = fs.cat(f"{bucket}/run/_REPORT.html").decode()
    assert "data:image/jpeg;base64," in report and "not_found" in report

    # A rerun is a no-op: nothing processed, the ledger untouched.
    before = sorted(fs.ls(f"{bucket}/run/results"))
    assert run_job(cfg) == 0
    assert sorted(fs.ls(f"{bucket}/run/results")) == before
    assert fs.cat(f"{bucket}/run/_REPORT.html").decode().count("data:image/jpeg;base64,") == \
        report.count("data:image/jpeg;base64,")  # the rerun's report still shows the earlier samples
    again = json.loads(fs.cat(f"{bucket}/run/_SUMMARY.json"))
    assert again["this_run"]["processed"] == 0
    assert again["model_sha256"] == sha  # from the ledger: the rerun loaded no model
    assert again["counts_by_status"] == summary["counts_by_status"]


def test_rerun_is_deterministic_and_retry_errors(ray_local, tmp_path, monkeypatch):
    data = tmp_path / "in"
    manifest = make_dataset(str(data), rows=6)
    # A second manifest with the rows reversed and two good rows left out: other batch neighbours and positions.
    t = pq.read_table(manifest)
    keep = [i for i in reversed(range(t.num_rows)) if i not in (1, 2)]
    other = data / "other.parquet"
    pq.write_table(t.take(keep), str(other))
    cfg_a = JobConfig(manifest=(manifest,), output=str(tmp_path / "a"), **FAST_TINY)
    cfg_b = JobConfig(manifest=(str(other),), output=str(tmp_path / "b"), **FAST_TINY)
    assert run_job(cfg_a) == 0
    assert run_job(cfg_b) == 0
    names = sorted(os.listdir(tmp_path / "b" / "images"))
    assert len(names) == 5  # 4 good rows + the empty-mask row
    regions = {r["id"]: len(r["regions"] or []) for r in read_results(str(tmp_path / "a")).to_pylist()}
    assert regions["img-0002"] == 3  # the demo's row of three marks far apart: three regions, inpainted apart
    for name in names:
        # Same row, same settings, different batch composition: identical bytes.
        assert (tmp_path / "a" / "images" / name).read_bytes() == (tmp_path / "b" / "images" / name).read_bytes()

    # Fix the missing file, then --retry-errors reprocesses error rows only; ids stay unique.
    (data / "images" / "does-not-exist.png").write_bytes((data / "images" / "img-0000.png").read_bytes())
    cfg_r = JobConfig(manifest=(manifest,), output=str(tmp_path / "a"), retry_errors=True, **FAST_TINY)
    # The set of ids left (4 error rows, fewer than the 7 done) in parts of 2 ids (ledger/index.py hands ids out
    # in batches): the read tasks test ids against those parts in Ray's object store.
    monkeypatch.setattr(index_mod, "BATCH_IDS", 2)
    assert run_job(cfg_r) == 0
    res = read_results(str(tmp_path / "a")).to_pylist()
    ids = [r["id"] for r in res]
    assert len(ids) == len(set(ids)) == 6 + 5
    st = {r["id"]: r["status"] for r in res}
    assert st["bad-missing-file"] == "ok"
    assert st["bad-truncated"] == "error"
    s = json.loads((tmp_path / "a" / "_SUMMARY.json").read_text())
    assert s["this_run"]["processed"] == 4  # the four error rows (one now fixed), not the ok ones


def test_duplicate_ids_are_reported_once(ray_local, tmp_path, monkeypatch):
    monkeypatch.setattr(index_mod, "BATCH_IDS", 3)  # in parts: the read tasks skip the ids the manifest settles
    src = tmp_path / "in"
    make_dataset(str(src), rows=4)
    t = pq.read_table(str(src / "manifest.parquet"))
    dup = pa.concat_tables([t, t.slice(0, 2)])
    pq.write_table(dup, str(src / "manifest.parquet"))
    cfg = JobConfig(manifest=(str(src / "manifest.parquet"),), output=str(tmp_path / "o"), **FAST_TINY)
    run_job(cfg)
    res = read_results(str(tmp_path / "o")).to_pylist()
    ids = [r["id"] for r in res]
    assert len(ids) == len(set(ids)) == 9
    dups = {r["id"] for r in res if r["error_kind"] == "duplicate_id"}
    assert dups == {"img-0000", "img-0001"}
    s = json.loads((tmp_path / "o" / "_SUMMARY.json").read_text())
    assert s["duplicate_ids"]["count"] == 2 and s["duplicate_ids"]["examples"]["img-0000"] == 2


def test_cli_help_limit_bad_settings_and_demo(tmp_path, ray_local, capfd):
    """The command line: --help and a bad setting as processes of their own (their exit codes), a config file with
    --limit and the demo through the CLI's `main` on the shared Ray (a process of their own adds only Ray's start:
    the console is tests/job/test_console.py's)."""
    h = run_cli("run", "--help")
    assert h.returncode == 0
    for opt in ("--manifest", "--weights", "--sampler", "--max-error-rate", "--retry-errors", "--columns",
                "--num-actors", "--limit", "--config", "(default: 25)"):
        assert opt in h.stdout
    m = run_cli("run", "--manifest", "x.parquet", "--output", str(tmp_path / "o"), "--steps", "0")
    assert m.returncode == 2 and m.stderr.strip().splitlines()[-1].startswith("rayinpaint: error: --steps")
    assert "Traceback" not in m.stderr

    manifest = make_dataset(str(tmp_path / "in"), rows=6)
    cfgfile = tmp_path / "job.yaml"
    cfgfile.write_text("weights: random:tiny\nsteps: 2\nresolution: 128\nmax-error-rate: 0.5\nbatch_size: 2\n")
    capfd.readouterr()
    code = main(["run", "--manifest", manifest, "--output", str(tmp_path / "lim"), "--config", str(cfgfile),
                 "--limit", "3"])
    assert code == 0, capfd.readouterr().err[-3000:]
    s = json.loads((tmp_path / "lim" / "_SUMMARY.json").read_text())
    assert s["this_run"]["processed"] == 3 and not s["complete"]
    assert s["settings"]["steps"] == 2 and s["settings"]["resolution"] == 128  # from the config file
    assert not (tmp_path / "lim" / "_SUCCESS").exists()

    capfd.readouterr()
    code = main(["demo", "--output", str(tmp_path / "demo"), "--rows", "6"])
    err = capfd.readouterr().err
    assert code == 0, err[-3000:]
    assert "_REPORT.html" in err
    s = json.loads((tmp_path / "demo" / "run" / "_SUMMARY.json").read_text())
    assert s["success"] and s["accounted"] == 11


def test_weights_not_matching_the_model_is_one_clear_line(tmp_path):
    manifest = make_dataset(str(tmp_path / "in"), rows=2)
    weights = tmp_path / "tiny.safetensors"
    write_tiny_checkpoint(weights)
    r = run_cli("run", "--manifest", manifest, "--output", str(tmp_path / "o"), "--weights", str(weights))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "wrong shapes" in last and "cond_stage_model.model.ln_final.bias" in last and "--model-config" in last
    assert not (tmp_path / "o" / "results").exists()  # nothing started


def test_missing_default_weights_is_one_clear_line(tmp_path):
    manifest = make_dataset(str(tmp_path / "in"), rows=2)
    r = run_cli("run", "--manifest", manifest, "--output", str(tmp_path / "o"), "--weights",
                str(tmp_path / "nope.safetensors"))
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("rayinpaint: error:") and "--weights" in last and "Traceback" not in r.stderr


def test_worker_crash_rows_are_accounted_for_and_retryable(tmp_path):
    """A row that kills its model worker every time ends as a `worker_crash` error row; every other row,
    including the one that shared its batch, completes normally; `--retry-errors` later completes the crashed
    row once the cause is gone."""
    manifest = make_dataset(str(tmp_path / "in"), rows=6)
    out = tmp_path / "o"
    args = ["run", "--manifest", manifest, "--output", str(out), "--weights", "random:tiny", "--steps", "2",
            "--resolution", "128", "--batch-size", "2", "--max-error-rate", "1.0", "--max-crash-retries", "1"]
    r = run_cli(*args, env={"RAYINPAINT_TEST_CRASH_IDS": "img-0002", "PYTHONPATH": faulthooks_pythonpath()},
                timeout=500)
    assert r.returncode == 0, r.stderr[-3000:]
    res = {x["id"]: x for x in read_results(str(out)).to_pylist()}
    assert len(res) == 11
    assert res["img-0002"]["status"] == "error" and res["img-0002"]["error_kind"] == "worker_crash"
    assert "died" in res["img-0002"]["error"]
    assert all(res[f"img-{i:04d}"]["status"] == "ok" for i in range(6) if i != 2)
    assert all(res[rid]["error_kind"] == kind for rid, kind in BAD.items())

    r = run_cli(*args, "--retry-errors", timeout=500)
    assert r.returncode == 0, r.stderr[-3000:]
    res = read_results(str(out)).to_pylist()
    assert len(res) == len({x["id"] for x in res}) == 11
    st = {x["id"]: x["status"] for x in res}
    assert all(st[f"img-{i:04d}"] == "ok" for i in range(6))
