"""The job on a simulated multi-node cluster (ray.cluster_utils.Cluster) with fake GPU resources."""

from __future__ import annotations

import json

import pytest

from rayinpaint.jobs.config import JobConfig
from rayinpaint.bench.demo import make_dataset
from rayinpaint.jobs.inpaint import run_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # a simulated two-node Ray cluster


def test_two_nodes_with_fake_gpus_both_get_work(tmp_path, no_ray):
    from ray.cluster_utils import Cluster

    import ray

    cluster = Cluster()
    cluster.add_node(num_cpus=2, num_gpus=0)  # head: CPU stages only
    cluster.add_node(num_cpus=1, num_gpus=1)  # two "GPU" nodes (fake resource; the actors run on CPU)
    cluster.add_node(num_cpus=1, num_gpus=1)
    try:
        manifest = make_dataset(str(tmp_path / "in"), rows=16)
        cfg = JobConfig(manifest=(manifest,), output=str(tmp_path / "o"), address=cluster.address,
                        num_gpus_per_actor=1, weights="random:tiny", steps=2, resolution=128, batch_size=1,
                        max_error_rate=0.5)
        ray.init(address=cluster.address)
        assert run_job(cfg) == 0
        s = json.loads((tmp_path / "o" / "_SUMMARY.json").read_text())
        actors = s["this_run"]["rows_by_actor"]
        nodes = {a.split(":")[0] for a in actors}
        assert len(actors) == 2 and len(nodes) == 2, actors
        assert all(n > 0 for n in actors.values())
    finally:
        ray.shutdown()
        cluster.shutdown()
