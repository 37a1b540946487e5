"""The model pool is checked against the cluster before streaming: a pool that cannot be placed (and that no
autoscaler can make room for) is one line within seconds, not a silent wait."""

from __future__ import annotations

import time

import pytest

from rayinpaint.jobs.config import JobConfig
from rayinpaint.jobs.demo import make_dataset
from rayinpaint.jobs.inpaint import run_job
from rayinpaint.jobs.placement import PoolDoesNotFit, could_autoscale, shortfall

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


def test_pool_that_cannot_be_placed_on_a_two_node_cluster_stops_within_seconds(tmp_path):
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
