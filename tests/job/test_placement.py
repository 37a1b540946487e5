"""The model pool is checked against the cluster before streaming: a pool that cannot be placed (and that no
autoscaler can make room for) is one line within seconds, not a silent wait."""

from __future__ import annotations

import logging
import time

import pytest

from rayinpaint.jobs.config import JobConfig
from rayinpaint.bench.demo import make_dataset
from rayinpaint.jobs.inpaint import run_job
from rayinpaint.jobs import placement
from rayinpaint.jobs.placement import (UNKNOWN_MAX, PoolDoesNotFit, PoolNotReady, autoscaler_activity,
                                       autoscaler_types, could_autoscale, shortfall)

pytestmark = pytest.mark.timeout(300)

CPU2 = {"CPU": 2.0}
GPU_NODE = {"CPU": 4.0, "GPU": 1.0}


def test_shortfall_packs_actors_on_nodes_and_keeps_a_cpu_for_the_data_stages():
    assert shortfall(1, 0.0, 1.0, [CPU2]) is None                     # one CPU actor, one CPU left for tasks
    assert "hold every CPU" in shortfall(2, 0.0, 1.0, [CPU2])         # two CPU actors leave no task slot
    assert "hold every CPU" in shortfall(2, 0.0, 1.0, [{"CPU": 1.0}, {"CPU": 1.0}])
    assert shortfall(2, 0.0, 1.0, [{"CPU": 1.0}, {"CPU": 2.0}]) is None
    assert "only 0 of 2" in shortfall(2, 1.0, 1.0, [CPU2, CPU2])      # GPU actors on a CPU-only cluster
    assert "only 1 of 2" in shortfall(2, 1.0, 1.0, [GPU_NODE, CPU2])
    assert shortfall(2, 1.0, 1.0, [GPU_NODE, GPU_NODE]) is None
    assert shortfall(2, 0.5, 1.0, [GPU_NODE]) is None                  # fractions share one GPU
    # An actor lives on one node: 2 GPUs in total, but no node with 2.
    assert "only 0 of 1" in shortfall(1, 2.0, 1.0, [GPU_NODE, GPU_NODE])


def test_could_autoscale_compares_with_the_autoscalers_maximum():
    assert not could_autoscale(2, 1.0, 1.0, None)                      # no autoscaler
    assert could_autoscale(2, 1.0, 1.0, {"CPU": 10, "GPU": 8})
    assert not could_autoscale(9, 1.0, 1.0, {"CPU": 100, "GPU": 8})
    assert not could_autoscale(2, 0.0, 1.0, {"CPU": 2})                # the task slot counts too
    assert could_autoscale(8, 1.0, 1.0, UNKNOWN_MAX)                   # an autoscaler that did not say how far


# What Ray 2.60's autoscaler (monitor.py) writes to the GCS KV (`__autoscaling_status`), as seen on a local
# cluster started with `ray start --head --autoscaling-config` (Ray's fake multi-node provider) while 2 GPU
# actors waited: its own node types, and what it launches.
AUTOSCALER_REPORT = {"active_nodes": {}, "idle_nodes": None, "pending_nodes": [],
                     "pending_launches": {"gpu_worker": 2}, "failed_nodes": [],
                     "node_type_mapping": {"fffffffffffffffffffffffffffffffffffffffffffffffffff00000":
                                           "ray.head.default"}, "legacy": True}


def test_an_autoscaler_is_told_from_a_fixed_clusters_read_only_one():
    assert autoscaler_types(AUTOSCALER_REPORT) == {"ray.head.default"}
    # A fixed cluster's monitor (no --autoscaling-config) names each node `node_<id>` (read-only provider).
    assert autoscaler_types({"node_type_mapping": {"10.0.0.1": "node_3f2a", "10.0.0.2": "node_77b1"}}) == set()
    assert autoscaler_types(None) == set()
    assert autoscaler_activity(AUTOSCALER_REPORT) == "autoscaler: launching 2 gpu_worker node(s)"
    assert "has not reported" in autoscaler_activity(None)
    quiet = {**AUTOSCALER_REPORT, "pending_launches": {}, "failed_nodes": [["10.0.0.3", "gpu_worker"]]}
    assert autoscaler_activity(quiet) == "autoscaler: 1 node(s) failed to start"


def test_ray_datas_actor_start_timeout_becomes_one_line(monkeypatch):
    import ray

    from rayinpaint.jobs.raylogs import _below_error_from_ray

    monkeypatch.setattr(placement, "_last_pool", [(2, 1.0, 1.0)])
    monkeypatch.setattr(placement, "cluster_nodes", lambda: [CPU2])
    monkeypatch.setattr(placement, "autoscaler_report", lambda: AUTOSCALER_REPORT)
    timeout = ray.exceptions.GetTimeoutError("Timed out while starting actors. This may mean that ...")
    try:
        try:
            raise timeout
        except Exception as e:
            raise RuntimeError("streaming executor failed") from e
    except RuntimeError as wrapped:
        err = placement.pool_timeout(wrapped, 5)
    assert isinstance(err, PoolNotReady) and "\n" not in str(err)
    assert "did not start within --wait-for-actors 5s" in str(err) and "only 0 of 2" in str(err)
    assert "launching 2 gpu_worker node(s)" in str(err)
    assert placement.pool_timeout(RuntimeError("something else"), 5) is None
    # Ray Data's "internal code" notice and trace about that timeout stay off the console; other errors do not.
    rec = logging.LogRecord("ray.data.exceptions", logging.ERROR, __file__, 1, "Full stack trace:", None,
                            (type(timeout), timeout, None))
    assert not _below_error_from_ray(rec)
    other = logging.LogRecord("ray.data.exceptions", logging.ERROR, __file__, 1, "boom", None, None)
    assert _below_error_from_ray(other)


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.mark.slow  # a simulated Ray cluster
def test_pool_waited_for_an_autoscaler_stops_with_one_line_when_the_bound_runs_out(tmp_path, monkeypatch, no_ray):
    """A real two-node CPU cluster that cannot place 2 GPU actors, told (through the autoscaler's status record,
    as Ray's autoscaler writes it) that an autoscaler with a GPU node type runs: the job asks it for the pool,
    says every REPORT_EVERY_S what it waits for, and stops with PoolNotReady when --wait-for-actors runs out."""
    import ray
    from ray.cluster_utils import Cluster

    monkeypatch.setattr(placement, "autoscaler_report", lambda: AUTOSCALER_REPORT)
    monkeypatch.setattr(placement, "REPORT_EVERY_S", 2.0)
    requested = []
    import ray.autoscaler.sdk as sdk

    real_request = sdk.request_resources
    monkeypatch.setattr(sdk, "request_resources", lambda **kw: (requested.append(kw["bundles"]), real_request(**kw)))
    cluster = Cluster()
    cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=1)
    try:
        manifest = make_dataset(str(tmp_path / "in"), rows=2)
        cfg = JobConfig(manifest=(manifest,), output=str(tmp_path / "o"), address=cluster.address,
                        weights="random:tiny", steps=2, resolution=128, batch_size=2, num_actors=2,
                        num_gpus_per_actor=1.0, wait_for_actors=5)
        t0 = time.monotonic()
        job_log, seen = logging.getLogger("rayinpaint.job"), _Lines()  # the job's own lines, as the console has them
        job_log.addHandler(seen)
        monkeypatch.setattr(job_log, "level", logging.INFO)  # as the CLI sets it (--log-level info)
        try:
            with pytest.raises(PoolNotReady) as ei:
                run_job(cfg)
        finally:
            job_log.removeHandler(seen)
        assert 5 <= time.monotonic() - t0 < 60
        msg = str(ei.value)
        assert "did not start within --wait-for-actors 5s" in msg and "only 0 of 2" in msg, msg
        lines = seen.lines
        assert any("asked the autoscaler for it, waiting up to 5s" in m for m in lines), lines
        assert any(m.startswith("still waiting for the autoscaler") and "launching 2 gpu_worker" in m
                   for m in lines), lines
        assert requested == [[{"CPU": 1.0, "GPU": 1.0}] * 2, []]  # asked for the pool, then withdrawn
        assert not ray.is_initialized()
        assert not list((tmp_path / "o").glob("results/*.parquet"))  # nothing was processed
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.slow  # a simulated two-node Ray cluster
def test_pool_that_cannot_be_placed_on_a_two_node_cluster_stops_within_seconds(tmp_path, no_ray):
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster()
    cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=1)
    try:
        manifest = make_dataset(str(tmp_path / "in"), rows=2)
        base = dict(manifest=(manifest,), address=cluster.address, weights="random:tiny", steps=2, resolution=128,
                    batch_size=2, num_actors=2)
        cases = {"cpu": dict(num_gpus_per_actor=0.0), "gpu": dict(num_gpus_per_actor=1.0)}
        for name, extra in cases.items():
            out = tmp_path / name
            t0 = time.monotonic()
            with pytest.raises(PoolDoesNotFit) as ei:
                run_job(JobConfig(output=str(out), **base, **extra))
            assert time.monotonic() - t0 < 60
            msg = str(ei.value)
            assert "no autoscaler" in msg and "node 1: 1 CPU, 0 GPU; node 2: 1 CPU, 0 GPU" in msg, msg
            assert ("hold every CPU" if name == "cpu" else "only 0 of 2") in msg
            assert not ray.is_initialized()  # the job disconnected from the cluster it joined
            assert not list(out.glob("results/*.parquet"))  # nothing was processed
    finally:
        ray.shutdown()
        cluster.shutdown()
