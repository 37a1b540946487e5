"""Honest outcomes of whole runs: 0/1 masks repaint, an output in which no row was repainted is not a success,
and mostly-unchanged outputs are called out in the summary, the report and the console."""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers_job import FAST_TINY, run_cli
from rayinpaint.jobs.tally import Outcome, unchanged_warning
from rayinpaint.jobs.config import JobConfig
from rayinpaint.jobs.inpaint import run_job
from rayinpaint.ledger.files import read_results

pytestmark = pytest.mark.timeout(600)


def write_rows(folder, masks: dict) -> str:
    """One 64x48 image per id with the given uint8 mask array saved as a PNG; returns the manifest path."""
    (folder / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    recs = []
    for rid, mask in masks.items():
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / "img" / f"{rid}.png")
        Image.fromarray(mask).save(folder / "img" / f"{rid}-mask.png")
        recs.append({"id": rid, "image": f"img/{rid}.png", "mask": f"img/{rid}-mask.png"})
    path = str(folder / "manifest.parquet")
    pq.write_table(pa.Table.from_pylist(recs), path)
    return path


def boolean_mask(on: bool = True) -> np.ndarray:
    m = np.zeros((48, 64), bool)
    m[10:30, 20:40] = on
    return m.astype(np.uint8)  # 0/1 values, as Image.fromarray(mask.astype(uint8)) writes them


@pytest.mark.slow  # a local Ray cluster
def test_zero_one_masks_repaint_and_all_unchanged_is_not_a_success(ray_local, tmp_path, caplog):
    manifest = write_rows(tmp_path / "a", {f"r{i}": boolean_mask() for i in range(3)})
    out = tmp_path / "out-01"
    assert run_job(JobConfig(manifest=(manifest,), output=str(out), **FAST_TINY)) == 0
    rows = read_results(str(out)).to_pylist()
    assert {r["status"] for r in rows} == {"ok"} and all(r["mask_pixels"] >= 400 for r in rows)
    assert (out / "_SUCCESS").exists()

    black = write_rows(tmp_path / "b", {f"k{i}": np.zeros((48, 64), np.uint8) for i in range(3)})
    out = tmp_path / "out-black"
    with caplog.at_level(logging.WARNING, logger="rayinpaint.job"):
        assert run_job(JobConfig(manifest=(black,), output=str(out), **FAST_TINY)) == 1
    assert {r["status"] for r in read_results(str(out)).to_pylist()} == {"unchanged"}
    assert not (out / "_SUCCESS").exists()
    s = json.loads((out / "_SUMMARY.json").read_text())
    assert not s["success"] and s["unchanged_rate"] == 1.0 and s["unchanged_examples"] == ["k0", "k1", "k2"]
    assert len(s["warnings"]) == 1 and "--mask-threshold" in s["warnings"][0] and "k0" in s["warnings"][0]
    report = (out / "_REPORT.html").read_text()
    assert "NOT SUCCESSFUL" in report and "Warning:" in report and "--mask-invert" in report
    assert any("are `unchanged`" in r.getMessage() for r in caplog.records)

    # Detector-style outputs (most images have nothing to remove) pass when the bound allows it: above 1 never fails.
    again = JobConfig(manifest=(black,), output=str(out), max_unchanged_rate=1.5, **FAST_TINY)
    assert run_job(again) == 0 and (out / "_SUCCESS").exists()


def _outcome(ok: int, unchanged: int, error: int = 0, limit: float = 1.0) -> Outcome:
    return Outcome(by_status={"ok": ok, "unchanged": unchanged, "error": error}, by_kind={}, unique_ids=ok + unchanged
                   + error, accounted=ok + unchanged + error, duplicates={}, prompts_truncated=0, max_error_rate=1.0,
                   max_unchanged_rate=limit, unchanged_examples=("u1", "u2"))


def test_unchanged_rate_bound_and_warning():
    cfg = JobConfig(manifest=("m",), output="o")
    assert not _outcome(0, 5).success                       # nothing repainted: not a success at the default
    assert _outcome(1, 9).success                            # 90% unchanged: a success, with a warning
    assert unchanged_warning(_outcome(1, 9), cfg).startswith("9 of 10 row(s) (90%)")
    assert "u1, u2" in unchanged_warning(_outcome(1, 9), cfg)
    assert unchanged_warning(_outcome(5, 5), cfg) is None     # half is not "more than half"
    assert not _outcome(1, 3, limit=0.75).success and _outcome(2, 3, limit=0.75).success  # exclusive bound
    assert _outcome(0, 0, error=2).unchanged_rate == 0.0     # errors are the error rate's business


@pytest.mark.slow  # a local Ray cluster, then the command line in a subprocess
def test_rerun_with_other_settings_stops_or_reprocesses_every_row(ray_local, tmp_path):
    manifest = write_rows(tmp_path / "in", {f"s{i}": boolean_mask() * 255 for i in range(3)})
    out = tmp_path / "out"
    first = JobConfig(manifest=(manifest,), output=str(out), **FAST_TINY)
    assert run_job(first) == 0
    recorded = json.loads((out / "_SETTINGS.json").read_text())
    rows = read_results(str(out)).to_pylist()
    assert {r["settings_fingerprint"] for r in rows} == {recorded["fingerprint"]}

    # Other pixel settings: exit 2 before any work, one line naming what differs and the ways out.
    args = ["run", "--manifest", manifest, "--output", str(out), "--weights", "random:tiny", "--resolution", "128",
            "--batch-size", "4", "--mask-dilate", "4", "--feather", "4", "--max-error-rate", "0.5"]
    r = run_cli(*args, "--steps", "3", "--sampler", "euler", "--prompt", "a wall", timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("rayinpaint: error: --output") and "Traceback" not in r.stderr
    for part in ("steps 2 -> 3", "sampler 'dpmpp_2m' -> 'euler'", "prompt '' -> 'a wall'", "--reprocess",
                 "new --output"):
        assert part in line, line
    assert json.loads((out / "_SETTINGS.json").read_text()) == recorded  # nothing was changed
    # Speed-only settings (batch size) are not pixel settings: the same command resumes with nothing to do.
    assert run_job(JobConfig(manifest=(manifest,), output=str(out), **{**FAST_TINY, "batch_size": 2})) == 0
    assert json.loads((out / "_SUMMARY.json").read_text())["this_run"]["processed"] == 0

    # --reprocess redoes every row under the new settings: one row per id, all of them new; the old rows kept aside.
    second = JobConfig(manifest=(manifest,), output=str(out), reprocess=True,
                       **{**FAST_TINY, "steps": 3, "sampler": "euler", "prompt": "a wall"})
    assert run_job(second) == 0
    rows = read_results(str(out)).to_pylist()
    new_fp = json.loads((out / "_SETTINGS.json").read_text())["fingerprint"]
    assert new_fp != recorded["fingerprint"] and sorted(r["id"] for r in rows) == ["s0", "s1", "s2"]
    assert all((r["settings_fingerprint"], r["steps"], r["sampler"], r["prompt"]) == (new_fp, 3, "euler", "a wall")
               for r in rows), rows
    assert list((out / "_superseded" / recorded["fingerprint"]).glob("part-*.parquet"))
    s = json.loads((out / "_SUMMARY.json").read_text())
    assert s["settings"]["steps"] == 3 and s["settings_fingerprint"] == new_fp and s["this_run"]["processed"] == 3


@pytest.mark.slow  # a local Ray cluster
def test_summary_and_report_of_a_resume_describe_the_whole_output(ray_local, tmp_path):
    from helpers_job import BAD
    from rayinpaint.bench.demo import make_dataset

    manifest = make_dataset(str(tmp_path / "in"), rows=4)
    out = tmp_path / "out"
    cfg = JobConfig(manifest=(manifest,), output=str(out), **FAST_TINY)
    assert run_job(cfg) == 0
    first = json.loads((out / "_SUMMARY.json").read_text())
    assert run_job(cfg) == 0  # a resume with nothing left to do
    s = json.loads((out / "_SUMMARY.json").read_text())
    assert s["this_run"]["processed"] == 0 and s["this_run"]["rows_per_s"] == 0.0
    # Rates and times are the output's: the first run's, not the empty resume's.
    assert s["rows_per_s"] == first["rows_per_s"] > 0 and s["elapsed_s"] == first["elapsed_s"] > 0
    assert s["runs"] == {"runs": 2, "runs_that_processed_rows": 1, "rows_processed": 9}
    # Error examples come from the results: every kind with its ids and message, after a resume too.
    for rid, kind in BAD.items():
        assert rid in s["error_examples"][kind]["ids"] and s["error_examples"][kind]["message"], kind
    rows = read_results(str(out)).to_pylist()
    inpaint = sorted(r["timings"]["inpaint"] for r in rows if r["status"] == "ok")
    assert s["stage_timings_s"]["inpaint"]["rows"] == len(inpaint) == 4
    assert abs(s["stage_timings_s"]["inpaint"]["p50"] - float(np.median(inpaint))) < 1e-4
    # Mask sizes: 4 ok rows binned by their repainted share, the empty-mask row in the first bin.
    assert sum(s["mask_area"].values()) == 5 and s["mask_area"]["0 (empty)"] == 1
    shares = [r["mask_pixels"] / (r["width"] * r["height"]) for r in rows if r["status"] == "ok"]
    assert s["mask_area"]["over 50%"] == sum(x > 0.5 for x in shares)
    report = (out / "_REPORT.html").read_text()
    assert "bad-missing-file" in report and "not_found" in report
    check_report(report, out, rows)


def check_report(report: str, out, rows: list) -> None:
    """What QA needs in _REPORT.html: throughput and stage timings, mask sizes, one error table with each kind's reason,
    and sample cards with the prompt, a working link to the full-size output and a zoom on the mask area next to
    the full view; every link in the report is relative and names a file that exists."""
    import html
    import re
    import urllib.parse

    assert "Throughput over the output" in report and "<td>inpaint</td>" in report
    assert "Mask sizes" in report and '<td>0 (empty)</td><td>1</td>' in report
    errors = re.findall(r'<tr class="error-kind"><td><code>(\w+)</code></td>', report)
    assert sorted(errors) == sorted({r["error_kind"] for r in rows if r["status"] == "error"})
    for kind in errors:
        message = next(r["error"] for r in rows if r["error_kind"] == kind)
        assert html.escape(message) in report, kind  # the reason, not only the kind
    links = re.findall(r'href="([^"]*)"', report)
    for link in links:
        target = urllib.parse.unquote(html.unescape(link))
        assert "://" not in target and not target.startswith("/") and (out / target).is_file(), link
    cards = re.findall(r'<div class="card sample">(.*?)<!-- /card -->', report, flags=re.S)
    assert cards, "no sample cards"
    by_id = {r["id"]: r for r in rows}
    zooms = 0
    for card in cards:
        rid = html.unescape(re.search(r"<b>(.*?)</b>", card).group(1))
        row = by_id[rid]
        assert f"prompt: {html.escape(row['prompt'] or '(none)')}" in card
        link = urllib.parse.unquote(html.unescape(re.search(r'<a href="(images/[^"]+)">full size</a>', card).group(1)))
        assert link in links and row["output_uri"].endswith("/" + link[len("images/"):])
        views = re.search(r'<div class="views">(.*?)</div>', card, flags=re.S).group(1)
        zooms += 'class="zoom"' in views  # the zoom sits in the same row of views as the full view
        if row["regions"]:  # each region's window, as the results row records it
            windows = ", ".join(f'{list(r["window"])} at {r["resolution"]} px' for r in row["regions"])
            assert f"{len(row['regions'])} region(s): {windows}" in card
    assert zooms == sum(1 for c in cards if "&middot; ok" in c) > 0  # every repainted sample has its zoom
