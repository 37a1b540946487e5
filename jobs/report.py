"""`_SUMMARY.json` and `_REPORT.html`: what a person (or a scheduler) checks before trusting a run."""

from __future__ import annotations

import base64
import html
import json
import platform
import urllib.parse
import time

from rayinpaint.io.results import DONE_STATUSES, MANIFEST

from .tally import unchanged_warning
from .cards import image_path, mask_path


def package_versions(packages) -> dict:
    """{distribution name: installed version, or None when it is not installed}."""
    import importlib.metadata as md

    out = {}
    for pkg in packages:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def versions() -> dict:
    return {"python": platform.python_version(),
            **package_versions(("ray-inpaint", "ray", "torch", "open_clip_torch", "pyarrow", "fsspec", "s3fs",
                                "pillow", "numpy"))}


def error_examples(outcome, tally, recorded: dict | None = None) -> dict:
    """{error kind: {"ids": a few ids, "message": one message}} for every kind in the output: ids and messages
    from the results rows (`recorded`, ledger/overview.py) or this run's rows, duplicated ids from the manifest,
    other kinds named with no example."""
    examples = {k: dict(v) for k, v in (recorded or {}).items()}
    for k, v in tally.examples.items():
        examples.setdefault(k, dict(v))
    for k in outcome.by_kind:
        examples.setdefault(k, {"ids": [], "message": None})
    if not examples.get("duplicate_id", {}).get("ids") and outcome.duplicates:
        examples["duplicate_id"] = {"ids": sorted(outcome.duplicates)[:5],
                                    "message": "id appears more than once in the manifest"}
    return examples


def build_summary(cfg, outcome, tally, *, elapsed: float, started: float, model_sha256: str | None,
                  whole: dict | None = None) -> dict:
    """`outcome`: accounting.Outcome (the output as a whole); `tally`: accounting.RunTally (this run); `whole`:
    overview.describe_output (runs, rates, stage timings, error examples, mask sizes of the whole output).
    Top-level rates and times describe the output as a whole; `this_run` holds this run's part."""
    whole = whole or {}
    merged = sum(n - 1 for n in outcome.duplicates.values())
    written = sum(tally.by_status.get(s, 0) for s in DONE_STATUSES)
    this_run = {**tally.this_run(), "elapsed_s": round(elapsed, 3),
                "rows_per_s": round(tally.processed / elapsed, 4) if elapsed > 0 else None,
                "images_per_s": round(written / elapsed, 4) if elapsed > 0 else None,
                "regions_per_s": round(tally.regions / elapsed, 4) if elapsed > 0 else None}
    return {
        "success": outcome.success,
        "complete": outcome.complete,
        # manifest_rows == accounted + duplicate_rows_merged once complete: each duplicated id is one error row.
        "manifest_rows": outcome.unique_ids + merged,
        "unique_ids": outcome.unique_ids,
        "accounted": sum(outcome.by_status.values()),
        "duplicate_rows_merged": merged,
        "prompts_truncated": outcome.prompts_truncated,
        "counts_by_status": dict(sorted(outcome.by_status.items())),
        "errors_by_kind": dict(sorted(outcome.by_kind.items(), key=lambda kv: -kv[1])),
        "error_examples": error_examples(outcome, tally, whole.get("error_examples")),
        "error_rate": outcome.error_rate,
        "max_error_rate": cfg.max_error_rate,
        "unchanged_rate": round(outcome.unchanged_rate, 6),
        "max_unchanged_rate": cfg.max_unchanged_rate,
        "unchanged_examples": list(outcome.unchanged_examples),
        "warnings": [w for w in (unchanged_warning(outcome, cfg),) if w],
        "duplicate_ids": {"count": len(outcome.duplicates),
                          "examples": dict(list(sorted(outcome.duplicates.items()))[:20])},
        "this_run": this_run,
        # The output as a whole: wall-clock seconds of every run that processed rows, and rates over them.
        "elapsed_s": whole.get("processing_s", this_run["elapsed_s"]),
        "rows_per_s": whole.get("rows_per_s", this_run["rows_per_s"]),
        "images_per_s": whole.get("images_per_s", this_run["images_per_s"]),
        "regions": whole.get("regions", this_run["regions"]),
        "regions_per_s": whole.get("regions_per_s", this_run["regions_per_s"]),
        "runs": {k: whole[k] for k in ("runs", "runs_that_processed_rows", "rows_processed") if k in whole},
        "stage_timings_s": whole.get("stage_timings_s", {}),
        "mask_area": whole.get("mask_area", {}),
        "mask_sources": whole.get("mask_sources", {}),
        # images written by format (png, jpeg, webp, jpeg-transplant): rows, total bytes and bytes per row
        "output_bytes": whole.get("output_bytes", {}),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model_sha256": model_sha256,
        "settings": cfg.public_dict(),
        "versions": versions(),
    }


def summary_json(summary: dict) -> bytes:
    return (json.dumps(summary, indent=2, sort_keys=False, default=str) + "\n").encode("utf-8")


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
.sheet{display:flex;flex-wrap:wrap;gap:12px}.card{border:1px solid #ddd;padding:6px;font-size:12px;max-width:520px}
.card img{display:block;max-width:100%}.bad{color:#a00}.ok{color:#070}code{font-size:12px}
.card.error{border-color:#d99;background:#fff6f6}.prompt{color:#555;font-style:italic}
.bar{background:#6a9fd8;height:12px;display:inline-block}
.card.sample{max-width:none}.views{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}
figure{margin:0;max-width:100%}.views img{max-width:100%;height:auto}figcaption{color:#555}
"""


def _img(jpeg: bytes, alt: str, cls: str = "") -> str:
    b64 = base64.b64encode(jpeg).decode("ascii")
    return f'<img class="{cls}" src="data:image/jpeg;base64,{b64}" alt="{html.escape(alt)}">'


def _counts(s: dict) -> str:
    e = html.escape
    rows = "".join(f"<tr><td>{e(k)}</td><td>{v}</td></tr>" for k, v in s["counts_by_status"].items())
    dup = s["duplicate_ids"]
    return (f"<h2>Counts</h2><table><tr><th>status</th><th>rows</th></tr>{rows}</table>"
            f"<p>Duplicate ids in the manifest: {dup['count']}. Prompts longer than the text encoder's 77 tokens "
            f"(cut to fit): {s.get('prompts_truncated', 0)}.</p>")


def _throughput(s: dict) -> str:
    """Rates over the whole output, this run's part, and per-stage timings of ok rows."""
    runs, this = s.get("runs", {}), s["this_run"]
    rate = (f"<p>Throughput over the output: {s.get('rows_per_s')} rows/s, {s.get('images_per_s')} images/s, "
            f"{s.get('regions_per_s')} regions/s ({s.get('regions')} regions inpainted), "
            f"{s.get('elapsed_s')} s of processing in {runs.get('runs_that_processed_rows', '?')} of "
            f"{runs.get('runs', '?')} run(s). This run: {this.get('processed', 0)} rows in {this.get('elapsed_s')} s "
            f"({this.get('rows_per_s')} rows/s).</p>")
    stages = s.get("stage_timings_s") or {}
    if not stages:
        return "<h2>Throughput</h2>" + rate
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{v['rows']}</td><td>{v['mean']:.4f}</td><td>{v['p50']:.4f}"
                   f"</td><td>{v['p95']:.4f}</td></tr>" for k, v in stages.items())
    return ("<h2>Throughput</h2>" + rate + "<p>Seconds per row and stage (ok rows):</p><table><tr><th>stage</th>"
            "<th>rows</th><th>mean</th><th>p50</th><th>p95</th></tr>" + body + "</table>")


def _mask_area(s: dict) -> str:
    bins = s.get("mask_area") or {}
    total = sum(bins.values())
    if not total:
        return ""
    body = "".join(f'<tr><td>{html.escape(k)}</td><td>{n}</td><td><span class="bar" style="width:{300 * n // total}px">'
                   f"</span></td></tr>" for k, n in bins.items())
    return ("<h2>Mask sizes</h2><p>Rows by the share of the image repainted (after dilation; unchanged rows have "
            "an empty mask). A run whose rows all sit in the first bin repainted nothing.</p>"
            "<table><tr><th>repainted share</th><th>rows</th><th></th></tr>" + body + "</table>" + _mask_sources(s))


def _mask_sources(s: dict) -> str:
    """Rows per mask source (the manifest, a detector, both) with their mask sizes; this run's detected areas."""
    e, sources = html.escape, s.get("mask_sources") or {}
    if not sources:
        return ""
    labels = list(next(iter(sources.values()))["mask_area"])
    body = "".join(f"<tr><td><code>{e(name)}</code></td><td>{v['rows']}</td>"
                   + "".join(f"<td>{v['mask_area'].get(k, 0)}</td>" for k in labels) + "</tr>"
                   for name, v in sources.items())
    this = s.get("this_run") or {}
    detected = this.get("detected_area")
    found = ("<p>This run's detected masks, before dilation, by the share of the image they cover: "
             + ", ".join(f"{e(k)}: {n}" for k, n in detected.items())
             + f"; the detector took {this.get('detect_s_per_row')} CPU s a row (part of prepare).</p>") \
        if detected else ""
    return ("<h3>Mask sources</h3><p>Rows done per mask source (<code>manifest</code>; a detector of --mask-from; "
            "<code>union</code>: both), by repainted share.</p><table><tr><th>source</th><th>rows</th>"
            + "".join(f"<th>{e(k)}</th>" for k in labels) + "</tr>" + body + "</table>" + found)


def _errors(s: dict) -> str:
    """One table of error kinds: rows, example ids and the reason (one message of that kind)."""
    e = html.escape
    if not s["errors_by_kind"]:
        return "<h2>Errors by kind</h2><p>No errors.</p>"
    table = ""
    for k, n in s["errors_by_kind"].items():
        ex = s["error_examples"].get(k, {})
        ids = ", ".join(e(str(i)) for i in ex.get("ids", []))
        table += (f'<tr class="error-kind"><td><code>{e(k)}</code></td><td>{n}</td><td>{ids}</td>'
                  f"<td>{e(ex.get('message') or 'no message recorded')}</td></tr>")
    return ("<h2>Errors by kind</h2><table><tr><th>kind</th><th>rows</th><th>example ids</th><th>example message"
            "</th></tr>" + table + "</table>")


def _setting_value(v) -> str:
    """A setting as the command line spells it: lists comma-separated, unset as a dash."""
    if v is None or v == [] or v == ():
        return "-"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    if isinstance(v, dict):
        return ", ".join(f"{k}={x}" for k, x in v.items()) or "-"
    return str(v)


def _settings(settings: dict) -> str:
    """The run's settings as a table of option and value (the option named as on the command line)."""
    e = html.escape
    rows = "".join(f'<tr><td><code>--{e(k.replace("_", "-"))}</code></td><td>{e(_setting_value(v))}</td></tr>'
                   for k, v in settings.items())
    return f'<h2>Settings</h2><table class="settings"><tr><th>option</th><th>value</th></tr>{rows}</table>'


def _samples(previews: list, cards: dict) -> str:
    """One card per sample row: the full view (input | mask outline | output) and, next to it, the zoom on the
    repainted area; below them the id, status, a relative link to the full-size output and the prompt."""
    e = html.escape
    out = ""
    for name, status, jpeg in previews:
        c = cards.get(name, {})
        link = c.get("output_uri")
        href = urllib.parse.quote(image_path(link)) if link else None
        regions = c.get("regions") or []
        zoom = (f'<figure>{_img(c["zoom"], "zoom", "zoom")}<figcaption>zoom on the repainted area: input, output'
                "</figcaption></figure>" if c.get("zoom") else "")
        out += (f'<div class="card sample"><div class="views"><figure>{_img(jpeg, name)}<figcaption>input, mask '
                f"outline (red) and region windows (yellow), output</figcaption></figure>{zoom}</div>"
                f'<div><b>{e(str(c.get("id", name)))}</b> &middot; {e(status)}'
                + (f' &middot; <a href="{e(href)}">full size</a>' if href else "")
                + (f' &middot; {c["mask_pixels"]} px repainted' if c.get("mask_pixels") else "") + "</div>"
                + _mask_line(c, status)
                + (f'<div>{len(regions)} region(s): ' + ", ".join(
                    f'{list(r["window"])} at {r["resolution"]} px' for r in regions) + "</div>" if regions else "")
                + (f'<div class="prompt">prompt: {e(c.get("prompt") or "(none)")}</div>' if c else "")
                + "</div><!-- /card -->")
    return out or "<p>No samples.</p>"


def _mask_line(card: dict, status: str) -> str:
    """Where the card's mask came from and, for a detector's mask, a link to it (under masks/)."""
    source, uri = card.get("mask_source"), card.get("mask_uri")
    if not source:
        return ""
    e = html.escape
    written = bool(uri) and source != MANIFEST  # under {output}/masks/; a row's own mask is the manifest's URI
    link = f' &middot; <a href="{e(urllib.parse.quote(mask_path(uri)))}">mask</a>' if written else ""
    shown = "" if source == MANIFEST else " (detected: outline in cyan)" if written else \
        " (the detector found nothing)" if status == "unchanged" else ""
    return f"<div>mask source: <code>{e(source)}</code>{shown}{link}</div>"


def report_html(summary: dict, previews: list[tuple[str, str, bytes]], cards: dict | None = None) -> bytes:
    """previews: (output name (the id, or its hash when unsafe as a file name), status,
    jpeg bytes of input | mask outline | output); cards: cards.card_details (prompt, link, zoom) by output name."""
    e = html.escape
    s = summary
    ok = s["success"]
    warnings = "".join(f'<p class="bad warn"><b>Warning:</b> {e(w)}</p>' for w in s.get("warnings", []))
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>ray-inpaint report</title>
<style>{_CSS}</style></head><body>
<h1>ray-inpaint run report</h1>
<p class="{'ok' if ok else 'bad'}"><b>{'SUCCESS' if ok else 'NOT SUCCESSFUL'}</b>:
error rate {s['error_rate']:.4f} (limit {s['max_error_rate']}), unchanged rate {s['unchanged_rate']:.4f}
(limit {s['max_unchanged_rate']}, exclusive), {'complete' if s['complete'] else 'INCOMPLETE'},
{s['accounted']} of {s['unique_ids']} ids accounted for; finished {e(s['finished_utc'])}; model sha256
<code>{e(str(s['model_sha256']))}</code>.</p>
{warnings}{_counts(s)}{_throughput(s)}{_mask_area(s)}{_errors(s)}
<h2>Sample rows</h2><p>Each card: input, mask outline (red; a detector's own mask in cyan) and each region's window
(yellow), output; next
to them a zoom on the repainted
area from the full-size images; below them a link to the full-size output and the prompt.</p>
<div class="sheet">{_samples(previews, cards or {})}</div>
{_settings(s["settings"])}
</body></html>
"""
    return doc.encode("utf-8")
