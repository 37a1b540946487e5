"""An object store that does not answer is named before any work, within seconds, with the endpoint tried and
how to name another one (jobs/preflight.py check_reachable), not after the storage client's whole retry budget."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time

import pytest
from botocore.exceptions import EndpointConnectionError

from helpers_job import cli_cmd
from rayinpaint.io.storage import StorageOptions
from rayinpaint.jobs.preflight import PROBE_ATTEMPTS, PROBE_TIMEOUT_S, unreachable_hint


@pytest.fixture
def silent_endpoint():
    """A TCP endpoint on loopback that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held, stop = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                pass

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    for c in held:
        c.close()
    server.close()


@pytest.mark.slow  # the command line in subprocesses, waiting out the probe's timeouts (about 18 s)
def test_a_store_that_never_answers_is_one_line_naming_the_endpoint(tmp_path, silent_endpoint):
    """The output on the silent store, then the manifest: two runs at once (each only waits on its sockets)."""
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    runs = {}
    for which in ("output", "manifest"):
        out = "s3://bucket/out" if which == "output" else str(tmp_path / "out")
        cmd = cli_cmd("run", "--manifest", "s3://bucket/manifest/", "--output", out, "--endpoint-url",
                      silent_endpoint, "--weights", "random:tiny")
        runs[which] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    t0 = time.perf_counter()
    try:
        for which, proc in runs.items():
            _, err = proc.communicate(timeout=300)
            took = time.perf_counter() - t0
            last = err.strip().splitlines()[-1]
            assert proc.returncode == 4 and "Traceback" not in err, err[-2000:]
            assert last.startswith(f"rayinpaint: error: --{which} s3://bucket/"), last
            assert f"the object store at {silent_endpoint} did not answer; check --endpoint-url" in last, last
            # a bound, not a benchmark: two attempts of connect + read timeouts, plus the process's start
            assert took < 4 * PROBE_ATTEMPTS * PROBE_TIMEOUT_S + 30, took
    finally:
        for proc in runs.values():  # the other run, when one failed
            proc.kill()
            proc.wait()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing written


def test_without_an_endpoint_the_line_says_aws_was_tried_and_how_to_name_another():
    e = EndpointConnectionError(endpoint_url="https://bucket.s3.amazonaws.com/out")
    hint = unreachable_hint("s3://bucket/out", StorageOptions(region="eu-west-1"), e)
    assert "AWS S3's own endpoint (https://s3.eu-west-1.amazonaws.com, no --endpoint-url given)" in hint
    assert "pass --endpoint-url URL or set AWS_ENDPOINT_URL" in hint
    assert unreachable_hint("/local/out", StorageOptions(), e) is None
    assert unreachable_hint("s3://bucket/out", StorageOptions(), PermissionError("denied")) is None
