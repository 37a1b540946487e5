"""Shared fixtures: a real S3 endpoint on loopback (moto server), fresh buckets, GPU skipping."""

from __future__ import annotations

import os
import sys
import uuid

import pytest

_DUMMY_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_server():
    """moto in server mode on 127.0.0.1 with a free port; yields the endpoint URL.

    Dummy credentials are put in the environment for the whole session (and restored after),
    so s3fs/botocore sign requests exactly as in production, against the loopback server.
    """
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in _DUMMY_AWS}
    os.environ.update(_DUMMY_AWS)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, uniquely named bucket; yields (bucket_name, StorageOptions for the server)."""
    import boto3

    from rayinpaint.io.storage import StorageOptions

    name = f"test-{uuid.uuid4().hex[:16]}"
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket=name)
    opts = StorageOptions(endpoint_url=s3_server, region="us-east-1")
    yield name, opts


@pytest.fixture
def ray_local(s3_server):
    """A local Ray (2 CPUs) shared by every test that asks for it: the first one starts it, the next ones find it
    running (starting Ray costs 5-10 s on two cores), the session's end shuts it down. It starts after s3_server,
    so its workers inherit the loopback endpoint's AWS_* variables. A test that needs Ray stopped (its own
    cluster, a job that must start Ray itself) takes `no_ray`."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray


@pytest.fixture(autouse=True)
def _shared_ray_only_where_asked(request):
    """A slow test that does not take ray_local (it starts a Ray of its own, in a subprocess or a cluster, or
    builds the full-size model) runs with the shared Ray shut down: a job subprocess could find and join it
    instead of starting its own, and its idle processes take CPU from the test."""
    if "slow" in request.keywords and "ray_local" not in request.fixturenames:
        _stop_shared_ray()
    yield


def _stop_shared_ray() -> None:
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def no_ray():
    """No Ray in this process: the shared one (ray_local) is shut down; the next test that wants it restarts it."""
    _stop_shared_ray()
    yield


@pytest.fixture
def memfs_root():
    """A unique memory:// folder, cleaned up afterwards."""
    import fsspec

    root = f"memory://t-{uuid.uuid4().hex[:12]}"
    yield root
    fs = fsspec.filesystem("memory")
    path = root[len("memory://"):]
    if fs.exists(path):
        fs.rm(path, recursive=True)


def pytest_collection_modifyitems(config, items):
    """Skip tests marked `gpu` unless torch sees a CUDA device (torch imported lazily)."""
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    try:
        import torch

        available = bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no torch or a broken install: no GPU tests
        available = False
    if available:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is false)")
    for item in gpu_items:
        item.add_marker(skip)


# ---- reliability evidence ---------------------------------------------------------------------------
# Tests of bad input, faults, load and security record what they tried and what happened through the
# `reliability` fixture. At the end of the session the records are written as JSON to
# $RAYINPAINT_RELIABILITY_JSON (when set); `python tests/reliability_table.py FILE` turns them into the
# table in RELIABILITY.md. Only tests that passed contribute their records.

_RELIABILITY: list[dict] = []


class _Recorder:
    def __init__(self, test_id: str):
        self.test_id = test_id
        self.rows: list[dict] = []

    def record(self, area: str, kind: str, count: int, outcome: str) -> None:
        """area: 'bad input', 'fault', 'load', 'security'; kind: what was tried; count: how many times
        (rows, requests, kills...); outcome: what the test asserted happened (one short sentence)."""
        self.rows.append({"area": area, "kind": kind, "count": int(count), "outcome": outcome,
                          "test": self.test_id})


@pytest.fixture
def reliability(request):
    rec = _Recorder(request.node.nodeid)
    yield rec
    rep = getattr(request.node, "_rep_call", None)
    if rep is not None and rep.passed:
        _RELIABILITY.extend(rec.rows)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item._rep_call = rep


def pytest_sessionfinish(session, exitstatus):
    _stop_shared_ray()
    path = os.environ.get("RAYINPAINT_RELIABILITY_JSON")
    if path and _RELIABILITY:
        import json

        with open(path, "w") as f:
            json.dump(_RELIABILITY, f, indent=1)
