"""Security through the whole job: credentials never leak, weights never run code, URIs stay on the allow-list.

Secrets are planted everywhere a user might put them (the AWS variables, a --storage-option, a config file,
user:password@ and presigned query strings in manifest URIs), the job runs on a real S3 endpoint on loopback,
and then every byte it produced is searched: its stdout and stderr, every file under the output (Parquet
decoded, not just its compressed bytes), the summary, the report, and Ray's own session logs.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers_io import make_mask_png, make_png
from helpers_job import run_cli
from helpers_model import TouchWhenUnpickled
from rayinpaint.ledger.files import read_results

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # the job in a subprocess

SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "planted-Secret-Key-7f3a9c1e",
    "AWS_SESSION_TOKEN": "planted-Session-Token-b6d2e8",
    "storage option": "planted-Storage-Option-4c1d",
    "config file": "planted-Config-File-9e2b",
    "uri password": "planted-Uri-Password-51ac",
    "presigned signature": "planted-Signature-0d7e",
    "AWS_ACCESS_KEY_ID": "AKIAPLANTEDKEYID0001",
    "storage option key": "AKIAPLANTEDKEYID0002",
}


def job_args(*args, log_level="info") -> list[str]:
    """Command-line arguments of a `run` with the given --log-level."""
    return ["--log-level", log_level, "run", *args]


def all_text_under(root: Path) -> str:
    """Every file's bytes as text, and Parquet files also decoded column by column."""
    out = []
    for p in root.rglob("*"):
        if not p.is_file():
            continue
        data = p.read_bytes()
        out.append(data.decode("utf-8", "replace"))
        if p.suffix == ".parquet":
            out.append(repr(pq.read_table(str(p)).to_pylist()))
    return "\n".join(out)


def test_planted_credentials_never_appear_in_any_output(s3_bucket, tmp_path, reliability):
    import s3fs

    bucket, opts = s3_bucket
    fs = s3fs.S3FileSystem(**opts.fsspec_kwargs("s3"))
    fs.pipe(f"{bucket}/in/a.png", make_png(64, 48))
    fs.pipe(f"{bucket}/in/m.png", make_mask_png(64, 48, [(10, 10, 30, 30)]))
    rows = [
        {"id": "good", "image": f"s3://{bucket}/in/a.png", "mask": f"s3://{bucket}/in/m.png"},
        {"id": "userinfo", "image": f"s3://AKIAPLANTED:{SECRETS['uri password']}@{bucket}/in/a.png",
         "mask": f"s3://{bucket}/in/m.png"},
        {"id": "presigned", "image": f"https://127.0.0.1:9/{bucket}/in/a.png?X-Amz-Signature="
                                     f"{SECRETS['presigned signature']}&X-Amz-Credential=x",
         "mask": f"s3://{bucket}/in/m.png"},
        {"id": "presigned-allowed", "image": f"http://127.0.0.1:9/a.png?X-Amz-Signature={SECRETS['presigned signature']}",
         "mask": f"s3://{bucket}/in/m.png"},
    ]
    with fs.open(f"{bucket}/in/manifest.parquet", "wb") as f:
        pq.write_table(pa.Table.from_pylist(rows), f)
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"storage_option: ['token={SECRETS['config file']}']\n")  # overridden by the command line
    ray_tmp = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))  # short: Ray's socket paths live here
    env = {**os.environ, "AWS_ACCESS_KEY_ID": SECRETS["AWS_ACCESS_KEY_ID"],
           "AWS_SECRET_ACCESS_KEY": SECRETS["AWS_SECRET_ACCESS_KEY"],
           "AWS_SESSION_TOKEN": SECRETS["AWS_SESSION_TOKEN"], "RAY_TMPDIR": str(ray_tmp)}
    out = f"s3://{bucket}/run"
    r = run_cli(*job_args("--manifest", f"s3://{bucket}/in/manifest.parquet", "--output", out,
                          "--config", str(cfg), "--endpoint-url", opts.endpoint_url,
                          "--storage-option", f"key={SECRETS['storage option key']}",
                          "--storage-option", f"secret={SECRETS['storage option']}",
                          # http is allowed for this run so that the presigned URL is really fetched
                          # (and fails: nothing listens on port 9); https stays refused.
                          "--allowed-schemes", "s3,http",
                          "--weights", "random:tiny", "--steps", "1", "--resolution", "64",
                          "--max-error-rate", "1", log_level="debug"),
                timeout=500, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    # --log-level debug is the job's debug: the storage clients' wire logs (every request and its headers)
    # stay off the console unless -v
    assert not [line for line in r.stderr.splitlines() if " DEBUG botocore" in line or " DEBUG s3fs" in line
                or " DEBUG urllib3" in line or " DEBUG aiobotocore" in line], r.stderr[-3000:]
    local = tmp_path / "fetched"
    fs.get(f"{bucket}/run", str(local), recursive=True)
    res = {x["id"]: x for x in read_results(str(local)).to_pylist()}
    assert res["good"]["status"] == "ok"
    assert res["presigned"]["error_kind"] == "uri_not_allowed"
    assert res["presigned-allowed"]["status"] == "error" and "X-Amz-Signature" not in res["presigned-allowed"]["error"]
    assert res["userinfo"]["error_kind"] == "uri_not_allowed" and "credentials inside a URI" in res["userinfo"]["error"]

    places = {"stdout": r.stdout, "stderr": r.stderr, "output files": all_text_under(local),
              "Ray session logs": all_text_under(ray_tmp)}
    assert len(places["Ray session logs"]) > 10_000  # the logs were really there to search
    assert "X-Amz-Signature=***" not in places["output files"]  # the query string is dropped whole
    for where, text in places.items():
        for what, secret in SECRETS.items():
            assert secret not in text, f"the planted {what} appears in {where}"
    reliability.record("security", "planted credentials (AWS variables, storage option, config file, "
                       "URI user:password, presigned signature)", len(SECRETS),
                       "absent from stdout, stderr, every output file (Parquet decoded) and Ray's logs")


def test_malicious_pickle_weights_never_run(tmp_path, reliability):
    import torch

    from rayinpaint.bench.demo import make_dataset

    marker = tmp_path / "pwned"
    weights = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": TouchWhenUnpickled(str(marker))}, weights)
    raw = tmp_path / "raw.pkl.ckpt"
    raw.write_bytes(pickle.dumps(TouchWhenUnpickled(str(marker))))
    manifest = make_dataset(str(tmp_path / "in"), rows=2)
    for w in (weights, raw):
        r = run_cli(*job_args("--manifest", manifest, "--output", str(tmp_path / "out"), "--weights", str(w),
                              "--model-config", "tiny", "--steps", "1", "--resolution", "64"), timeout=300)
        assert r.returncode == 2, r.stderr[-3000:]
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("rayinpaint: error:") and "refused to unpickle" in last or "cannot read" in last, last
        assert "weights_only=False" not in last
        assert not marker.exists(), "the pickle's payload ran"
    assert not list((tmp_path / "out").glob("results/*.parquet"))
    reliability.record("security", "malicious pickle checkpoint (.ckpt, zip and raw pickle)", 2,
                       "refused before any row; exit 2 with one line; the payload never ran")


def test_credentials_in_log_lines_are_redacted_at_any_level(monkeypatch, caplog):
    """What the console shows passes jobs/logsafe.py's Redact: credential variables, storage-option credentials,
    access key ids and the signed parts of headers and URLs become ***."""
    import logging

    from rayinpaint.jobs.logsafe import Redact, storage_secrets

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRETS["AWS_SECRET_ACCESS_KEY"])
    redact = Redact(storage_secrets([f"secret={SECRETS['storage option']}", "region=us-east-1", "key=short"]))
    log = logging.getLogger("rayinpaint.test.redact")
    handler = logging.StreamHandler()
    handler.addFilter(redact)
    caplog.handler.addFilter(redact)
    lines = [
        ("secret %s here", SECRETS["AWS_SECRET_ACCESS_KEY"]),
        ("option %s", SECRETS["storage option"]),
        ("{'Authorization': b'AWS4-HMAC-SHA256 Credential=%s/20261207/us-east-1/s3/aws4_request, "
         "SignedHeaders=host, Signature=0123abcd'}", SECRETS["AWS_ACCESS_KEY_ID"]),
        ("https://b.s3.amazonaws.com/k?X-Amz-Credential=%s%%2F2026&X-Amz-Signature=deadbeef", "ASIAABCDEFGHIJKLMNOP"),
        ("{'X-Amz-Security-Token': '%s'}", SECRETS["AWS_SESSION_TOKEN"]),
    ]
    with caplog.at_level(logging.DEBUG, logger="rayinpaint.test.redact"):
        for msg, arg in lines:
            log.debug(msg, arg)
    text = caplog.text
    for secret in (*SECRETS.values(), "ASIAABCDEFGHIJKLMNOP", "0123abcd", "deadbeef"):
        assert secret not in text, secret
    assert text.count("***") >= len(lines) and storage_secrets(["region=us-east-1"]) == []
