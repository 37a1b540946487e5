"""The settings fingerprint: what an output's pixels were made with, so a rerun never mixes settings silently.

Every setting that changes a row's pixels (the model's identity, sampler, steps, guidance, strength, eta, Karras
spacing, resolution, mask and paste-back settings, the mask detector and its settings, default prompts, job seed,
output image format) is recorded in `{output}/_SETTINGS.json` with a short hash of them all, and every results row
carries that hash (`settings_fingerprint`). A rerun whose fingerprint differs from the recorded one stops before any work with one
line naming the settings that differ; `--reprocess` instead moves the results recorded under other settings to
`{output}/_superseded/<their fingerprint>/` and redoes those rows, so each id still has exactly one row.

Settings that change only speed or bookkeeping (batch size, dtype, actors, limits, storage options) are not part
of it: a different batch size or dtype can change pixels by floating-point rounding only (README).
"""

from __future__ import annotations

import hashlib
import json
import logging

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayinpaint.io.errors import SettingsError, redact_uri
from rayinpaint.io.storage import filesystem, protocol_of, write_bytes

from .layout import DONE_STATUSES, SUPERSEDED, Layout

log = logging.getLogger("rayinpaint.ledger")

PIXEL_SETTINGS = ("model_config", "sampler", "karras", "eta", "steps", "guidance", "strength", "resolution",
                  "mask_threshold", "mask_invert", "mask_dilate", "feather", "context", "min_context",
                  "max_regions", "max_resolution",
                  "resize_mask", "prompt", "negative_prompt", "seed", "format", "quality", "lossless")


def model_identity(cfg, storage) -> str:
    """The weights as cheaply identified on the driver: the sha256 given with --weights-sha256, the sha256 of a
    local file (memoised per node, so the actors' own check costs nothing more), else the object's URI, size and
    ETag (hashing a remote 5 GB file on the driver would mean downloading it)."""
    w = cfg.weights
    if w.startswith("random:"):
        return w
    if cfg.weights_sha256:
        return f"sha256:{cfg.weights_sha256.lower()}"
    fs, path = filesystem(w, storage)
    if protocol_of(w) in ("file", "local") and fs.isfile(path):
        from rayinpaint.model.fetch import local_sha256

        return f"sha256:{local_sha256(path, cfg.weights_cache)}"
    info = fs.info(path)
    tag = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
    return f"{redact_uri(w)} size={info.get('size')} etag={str(tag).strip(chr(34))}"


def pixel_settings(cfg, model: str) -> dict:
    return {"model": model, **{name: getattr(cfg, name) for name in PIXEL_SETTINGS}, **detector_settings(cfg)}


def detector_settings(cfg) -> dict:
    """The mask detector's part (--mask-from): which detector, its model file's digest, threshold, input size and how
    its masks join the manifest's. Absent without --mask-from, so the fingerprints of outputs made before detectors
    existed do not change."""
    detect = cfg.detect_settings()
    if detect is None:
        return {}
    from rayinpaint.detect import detector_identity

    return {"mask_combine": cfg.mask_combine, "detector": detector_identity(detect)}


def fingerprint_of(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def differences(old: dict, new: dict) -> list[str]:
    """'name old -> new' for each setting that differs (values shortened to stay one line)."""
    def show(v):
        text = repr(v)
        return text if len(text) <= 40 else text[:37] + "..."

    return [f"{k} {show(old.get(k))} -> {show(new.get(k))}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]


def settle_settings(cfg, storage, ledger) -> str:
    """Check this run's settings against the output's recorded ones; returns this run's fingerprint.

    Raises SettingsError (exit 2, nothing started) when the output holds rows made with other settings, unless
    --reprocess, which moves those rows aside first. Records this run's settings before any work."""
    settings = pixel_settings(cfg, model_identity(cfg, storage))
    fp = fingerprint_of(settings)
    out = Layout(cfg.output)  # the output being run (a caller may check another output's results)
    root = out.root
    recorded = _read_recorded(out.settings, storage)
    files = ledger.paths()
    old_fp = recorded.get("fingerprint") if recorded else (_newest_row_fingerprint(ledger) if files else None)
    if files and old_fp and old_fp != fp:
        if not cfg.reprocess:
            what = "; ".join(differences(recorded.get("settings", {}), settings)) if recorded else \
                "the recorded fingerprint differs"
            raise SettingsError(
                f"--output {redact_uri(root)} holds results made with other settings ({what}); nothing was "
                f"started. Use a new --output, or add --reprocess to redo every row under these settings (the "
                f"earlier rows are replaced, and kept under {SUPERSEDED}/)")
    if files and cfg.reprocess:
        supersede(ledger, files, fp, storage)
    doc = {"fingerprint": fp, "settings": settings}
    write_bytes(out.settings, (json.dumps(doc, indent=2, default=str) + "\n").encode(), storage)
    return fp


def _stale_fingerprint(fs, path: str, fp: str) -> str | None:
    """The other fingerprint a file's rows were made under ("unrecorded" for model rows without one), or None
    when every row of it is current or carries no model result (manifest-settled and worker-crash rows)."""
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        t = pf.read(columns=[c for c in ("status", "settings_fingerprint") if c in pf.schema_arrow.names])
    if "settings_fingerprint" not in t.column_names:
        t = t.append_column("settings_fingerprint", pa.nulls(t.num_rows, pa.string()))
    fps = t.column("settings_fingerprint")
    other = [v for v in pc.unique(pc.drop_null(fps)).to_pylist() if v != fp]
    if other:
        return other[0]
    done = pc.is_in(t.column("status"), value_set=pa.array(DONE_STATUSES))
    return "unrecorded" if pc.any(pc.and_(pc.is_null(fps), done)).as_py() else None


def _newest_row_fingerprint(ledger) -> str | None:
    """The fingerprint of the newest rows, for an output whose _SETTINGS.json was lost (None: rows made before
    fingerprints existed)."""
    try:
        return ledger.first_value("settings_fingerprint")
    except Exception:  # noqa: BLE001 - files written before the column existed cannot name one
        return None


def _read_recorded(uri: str, storage) -> dict | None:
    fs, path = filesystem(uri, storage)
    try:
        return json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None


def supersede(ledger, files: list, fp: str, storage) -> int:
    """Move every results file holding rows made under other settings (another fingerprint, or a model row with
    none: written before fingerprints existed) to `_superseded/<fingerprint>/`; returns the files moved. Rows the
    manifest alone settles (duplicate or missing ids) carry no fingerprint and stay."""
    moved = 0
    for path in files:
        stale = _stale_fingerprint(ledger.fs, path, fp)
        if stale is None:
            continue
        name = path.rstrip("/").rsplit("/", 1)[-1]
        _, folder = filesystem(ledger.layout.superseded(stale), storage)
        try:
            ledger.fs.makedirs(folder, exist_ok=True)
        except Exception:  # noqa: BLE001 - object stores have no folders
            pass
        ledger.fs.copy(path, f"{folder}/{name}")  # copy, then remove: a crash in between leaves a copy, no loss
        ledger.fs.rm(path)
        moved += 1
    log.info("--reprocess: moved %d results file(s) made under other settings to %s/", moved, SUPERSEDED)
    return moved

