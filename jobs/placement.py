"""Will the model pool fit? Checked on the driver before streaming, so a pool the cluster can never place is one
line within seconds instead of a silent wait.

The pool is `actors` x (GPUs, CPUs per actor), and the data stages (read, prepare, finish) need at least one
more CPU: with every CPU held by an actor they never run and the job waits at 0 rows forever. Actors are packed
onto the nodes as Ray would have to place them (an actor lives on one node). When they do not fit now:

- a cluster with an autoscaler that could grow to fit them is waited for, a line every ~30 s saying what for
  and what the autoscaler is doing, up to `--wait-for-actors` seconds; when the pool has not started by then,
  `PoolNotReady` (one line, exit 2) instead of Ray's traceback;
- otherwise the job stops: `PoolDoesNotFit` (exit 2, nothing was processed).

Is there an autoscaler, and how far can it grow? Where the cluster publishes its autoscaling config in the GCS
(`ray._private.state.state.get_max_resources_from_cluster_config`), its maximum decides. Ray 2.60's own
autoscaler (`ray up`, KubeRay) does not publish it: there the autoscaler's status (`ray status`'s source, in the
GCS KV) tells whether it has node types of its own; a fixed cluster's read-only autoscaler names every node
`node_<id>`. Its maximum is then unknown, so the pool is waited for, bounded by `--wait-for-actors`.
"""

from __future__ import annotations

import json
import logging
import time

from rayinpaint.io.errors import SettingsError

log = logging.getLogger("rayinpaint.job")

REPORT_EVERY_S = 30.0
POLL_S = 2.0          # how often the wait looks at the cluster's nodes
_last_pool = [(0, 0.0, 0.0)]  # (actors, GPUs, CPUs) of the pool check_pool last checked
_TASK_CPUS = 1.0  # the CPU slot the read/prepare/finish tasks need beside the pool


UNKNOWN_MAX = {"unknown": True}  # an autoscaler that did not publish its maximum resources


class PoolDoesNotFit(SettingsError):
    """The model pool (plus one CPU for the data stages) cannot be placed on this cluster. Exit code 2."""


class PoolNotReady(SettingsError):
    """The pool was waited for (an autoscaler could grow the cluster) but had not started within
    `--wait-for-actors`. Exit code 2."""


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
    """The autoscaler's configured maximum could hold the pool and a task slot (None: no autoscaler;
    UNKNOWN_MAX: an autoscaler whose maximum is not known, given the benefit of the doubt)."""
    if not max_resources:
        return False
    if max_resources is UNKNOWN_MAX:
        return True
    return (actors * gpus <= max_resources.get("GPU", 0)
            and actors * cpus + _TASK_CPUS <= max_resources.get("CPU", 0))


def cluster_nodes() -> list[dict]:
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def autoscaler_limits() -> dict | None:
    """The most resources the cluster's autoscaler may add up to; UNKNOWN_MAX for an autoscaler that does not
    publish it; None where there is none (a local Ray, a fixed cluster of `ray start` nodes)."""
    try:
        from ray._private.state import state

        published = state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 - a Ray without this record: look at the autoscaler's status instead
        published = None
    if published:
        return published
    return UNKNOWN_MAX if autoscaler_types(autoscaler_report()) else None


def autoscaler_report() -> dict | None:
    """The autoscaler's last status report (what `ray status` shows), or None when none was written."""
    try:
        import ray._private.ray_constants as rc
        from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_initialized

        raw = _internal_kv_get(rc.DEBUG_AUTOSCALING_STATUS) if _internal_kv_initialized() else None
        return json.loads(raw).get("autoscaler_report") if raw else None
    except Exception:  # noqa: BLE001 - no status: behave as without an autoscaler
        return None


def autoscaler_types(report: dict | None) -> set:
    """The node types the autoscaler knows, other than the anonymous `node_<id>` types of a fixed cluster."""
    mapping = (report or {}).get("node_type_mapping") or {}
    return {t for t in mapping.values() if t and not str(t).startswith("node_")}


def autoscaler_activity(report: dict | None) -> str:
    """What the autoscaler is doing, in words, from its status report."""
    if not report:
        return "the autoscaler has not reported yet"
    parts = [f"launching {n} {t} node(s)" for t, n in (report.get("pending_launches") or {}).items()]
    if report.get("pending_nodes"):
        parts.append(f"{len(report['pending_nodes'])} node(s) starting")
    if report.get("failed_nodes"):
        parts.append(f"{len(report['failed_nodes'])} node(s) failed to start")
    return "autoscaler: " + (", ".join(parts) if parts else "no node launch under way (see `ray status`)")


def check_pool(actors: int, gpus: float, cpus: float, wait_s: float) -> None:
    """Raise PoolDoesNotFit or PoolNotReady, or return: at once when the pool fits now, else once the
    autoscaler has added what it lacks."""
    _last_pool[0] = (actors, gpus, cpus)
    why = shortfall(actors, gpus, cpus, cluster_nodes())
    if why is None:
        return
    hint = ("use fewer --num-actors, --num-gpus-per-actor 0 to run the model on CPUs (leaving a CPU free), or "
            "add nodes")
    if not could_autoscale(actors, gpus, cpus, autoscaler_limits()):
        raise PoolDoesNotFit(f"the model pool cannot be placed: {why}, and no autoscaler can add what is missing; "
                             f"{hint}")
    wait_for_nodes(actors, gpus, cpus, wait_s, why)


def wait_for_nodes(actors: int, gpus: float, cpus: float, wait_s: float, why: str) -> None:
    """Ask the autoscaler for the pool's resources (`request_resources`) and wait until they are there, a line
    every REPORT_EVERY_S; PoolNotReady (the request withdrawn, so no node starts for a job that gave up) when
    `wait_s` runs out first."""
    from ray.autoscaler.sdk import request_resources

    log.info("the model pool does not fit yet (%s); asked the autoscaler for it, waiting up to %ds "
             "(--wait-for-actors), a line every %ds; %s", why, wait_s, REPORT_EVERY_S,
             autoscaler_activity(autoscaler_report()))
    request_resources(bundles=[{"CPU": cpus, "GPU": gpus} if gpus else {"CPU": cpus}] * actors)
    start = last = time.monotonic()
    while why is not None:
        now = time.monotonic()
        if now - start >= wait_s:
            request_resources(bundles=[])
            raise PoolNotReady(_not_ready(actors, gpus, cpus, wait_s, why, autoscaler_report()))
        if now - last >= REPORT_EVERY_S:
            last = now
            log.info("still waiting for the autoscaler (%ds of %ds, --wait-for-actors): %s; %s", now - start,
                     wait_s, why, autoscaler_activity(autoscaler_report()))
        time.sleep(min(POLL_S, max(0.0, wait_s - (now - start))))
        why = shortfall(actors, gpus, cpus, cluster_nodes())
    log.info("the model pool fits now (%ds); starting it", time.monotonic() - start)


def _not_ready(actors: int, gpus: float, cpus: float, wait_s: float, why: str, report: dict | None) -> str:
    return (f"the model pool of {actors} actor(s) ({gpus:g} GPU, {cpus:g} CPU each) did not start within "
            f"--wait-for-actors {wait_s:g}s: {why}; {autoscaler_activity(report)}. Nothing more was processed; "
            "raise --wait-for-actors where new nodes take longer to start, or check the autoscaler's node types "
            "and limits (`ray status`); rerun the same command to resume")


def pool_timeout(exc: BaseException, wait_s: float) -> PoolNotReady | None:
    """The one-line error for Ray Data's "Timed out while starting actors" (anywhere in `exc`'s chain: the
    pool's resources were there but its actors had not loaded the model in time) about the pool `check_pool`
    last checked, else None."""
    actors, gpus, cpus = _last_pool[0]
    seen = exc
    while seen is not None and "Timed out while starting actors" not in str(seen):
        seen = seen.__cause__ or seen.__context__
    if seen is None:
        return None
    try:
        why = shortfall(actors, gpus, cpus, cluster_nodes()) or "its actors had not loaded the model"
        report = autoscaler_report()
    except Exception:  # noqa: BLE001 - Ray is gone: say what is known
        why, report = "the cluster could not be asked why", None
    return PoolNotReady(_not_ready(actors, gpus, cpus, wait_s, why, report))
