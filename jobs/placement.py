"""Will the model pool fit? Checked on the driver before streaming, so a pool the cluster can never place is one
line within seconds instead of a silent wait.

The pool is `actors` x (GPUs, CPUs per actor), and the data stages (read, prepare, finish) need at least one
more CPU: with every CPU held by an actor they never run and the job waits at 0 rows forever. Actors are packed
onto the nodes as Ray would have to place them (an actor lives on one node). When they do not fit now:

- a cluster with an autoscaler that could grow to fit them (its configured maximum resources) is waited for, a
  line every ~30 s saying what for, up to `--wait-for-actors` seconds;
- otherwise the job stops: `PoolDoesNotFit` (exit 2, nothing was processed).
"""

from __future__ import annotations

import logging
import threading
import time

from rayinpaint.io.errors import SettingsError

log = logging.getLogger("rayinpaint.job")

REPORT_EVERY_S = 30.0
_TASK_CPUS = 1.0  # the CPU slot the read/prepare/finish tasks need beside the pool


class PoolDoesNotFit(SettingsError):
    """The model pool (plus one CPU for the data stages) cannot be placed on this cluster. Exit code 2."""


def shortfall(actors: int, gpus: float, cpus: float, nodes: list[dict]) -> str | None:
    """Why `actors` x (gpus, cpus) plus one CPU task slot cannot be placed on `nodes` (each {"CPU": n, "GPU":
    n} of total resources), or None when they fit. First-fit on the nodes with the most free resources."""
    free = [{"CPU": float(n.get("CPU", 0)), "GPU": float(n.get("GPU", 0))} for n in nodes]
    for placed in range(actors):
        fits = [n for n in free if n["CPU"] >= cpus and n["GPU"] >= gpus]
        if not fits:
            return (f"only {placed} of {actors} model actor(s) of {gpus:g} GPU and {cpus:g} CPU each fit on the "
                    f"cluster's nodes ({_describe(nodes)})")
        node = max(fits, key=lambda n: (n["GPU"] - gpus, n["CPU"]))
        node["CPU"] -= cpus
        node["GPU"] -= gpus
    left = sum(n["CPU"] for n in free)
    if left < _TASK_CPUS:
        return (f"{actors} model actor(s) of {cpus:g} CPU each hold every CPU of the cluster ({_describe(nodes)}), "
                f"leaving none for reading, preparing and writing rows")
    return None


def _describe(nodes: list[dict]) -> str:
    return "; ".join(f"node {i + 1}: {n.get('CPU', 0):g} CPU, {n.get('GPU', 0):g} GPU" for i, n in enumerate(nodes))


def could_autoscale(actors: int, gpus: float, cpus: float, max_resources: dict | None) -> bool:
    """The autoscaler's configured maximum could hold the pool and a task slot (None: no autoscaler)."""
    if not max_resources:
        return False
    return (actors * gpus <= max_resources.get("GPU", 0)
            and actors * cpus + _TASK_CPUS <= max_resources.get("CPU", 0))


def cluster_nodes() -> list[dict]:
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def autoscaler_limits() -> dict | None:
    """The most resources the cluster's autoscaler may add up to, or None where there is none (a local Ray, a
    fixed cluster of `ray start` nodes). Ray reports the autoscaler's node types through the GCS."""
    try:
        from ray._private.state import state

        return state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 - a Ray without this record: behave as without an autoscaler
        return None


def check_pool(actors: int, gpus: float, cpus: float, wait_s: float) -> None:
    """Raise PoolDoesNotFit, or return: at once when the pool fits now, else after starting the reporter."""
    why = shortfall(actors, gpus, cpus, cluster_nodes())
    if why is None:
        return
    hint = ("use fewer --num-actors, --num-gpus-per-actor 0 to run the model on CPUs (leaving a CPU free), or "
            "add nodes")
    if not could_autoscale(actors, gpus, cpus, autoscaler_limits()):
        raise PoolDoesNotFit(f"the model pool cannot be placed: {why}, and no autoscaler can add what is missing; "
                             f"{hint}")
    log.info("the model pool does not fit yet (%s); waiting up to %ds (--wait-for-actors) for the autoscaler",
             why, wait_s)
    threading.Thread(target=_report_waiting, args=(actors, gpus, cpus, wait_s), daemon=True,
                     name="rayinpaint-placement").start()


def _report_waiting(actors: int, gpus: float, cpus: float, wait_s: float) -> None:
    start = time.monotonic()
    while time.monotonic() - start < wait_s:
        time.sleep(REPORT_EVERY_S)
        try:
            why = shortfall(actors, gpus, cpus, cluster_nodes())
        except Exception:  # noqa: BLE001 - Ray shut down: the job is over
            return
        if why is None:
            log.info("the model pool fits now; starting")
            return
        log.info("still waiting for the autoscaler (%ds of %ds): %s", time.monotonic() - start, wait_s, why)
