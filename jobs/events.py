"""What the run's workers report for the progress line: each model actor's state (loading its model, loaded,
running its first batch) and the rows the finish tasks have written to the results.

One small Ray actor (no CPU of its own) holds them, `RunEvents`; workers send it one-way calls (`report`: no
reply awaited, a failure ignored: progress must never stop the job), the driver's progress ticker asks for a
`snapshot` once per tick. The costs: one call per model actor start and per finish task (a finish task writes
8 or more rows), and one per tick; at 100M rows that is a few calls per second at GPU rates.

Times are taken by the events actor when a call arrives, on its own clock, and the snapshot gives ages, so the
nodes' clocks never meet.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

log = logging.getLogger("rayinpaint.job")

LOADING, LOADED, RUNNING = "loading", "loaded", "running"


class RunEvents:
    """The state the progress line is made from (a plain class: `remote_events` makes it a Ray actor)."""

    def __init__(self, clock=time.time):
        self.clock = clock
        self.actors: dict[str, tuple[str, float]] = {}   # actor -> (state, since)
        self.rows = 0                                    # rows written to the results by finish tasks
        self.by_status: Counter = Counter()
        self.regions = 0

    def actor(self, name: str, state: str) -> None:
        """A model actor's state: LOADING (building its model), LOADED, RUNNING (its first batch started)."""
        self.actors[name] = (state, self.clock())

    def written(self, by_status: dict, regions: int) -> None:
        """Rows a finish task wrote to the results (one results file), by status, and their regions."""
        self.by_status.update(by_status)
        self.rows += sum(by_status.values())
        self.regions += regions

    def snapshot(self) -> dict:
        now = self.clock()
        return {"actors": {name: (state, now - since) for name, (state, since) in self.actors.items()},
                "rows": self.rows, "by_status": dict(self.by_status), "regions": self.regions}


def remote_events():
    """A RunEvents actor on the running Ray, using no CPU (the placement check counts the pool's CPUs only)."""
    import ray

    return ray.remote(num_cpus=0, max_restarts=0)(RunEvents).remote()


def report(events, method: str, *args) -> None:
    """A one-way call to the events actor `events` (None: nothing is reported)."""
    if events is None:
        return
    try:
        getattr(events, method).remote(*args)
    except Exception as e:  # noqa: BLE001 - the progress line is not worth a row
        log.debug("progress event %s not sent: %s", method, e)


def poller(events, timeout: float):
    """A function the progress ticker calls once per tick: the events actor's snapshot, or None when it does not
    answer within `timeout` seconds."""
    import ray

    def poll():
        try:
            return ray.get(events.snapshot.remote(), timeout=timeout)
        except Exception:  # noqa: BLE001 - a late or lost answer: the next tick asks again
            return None

    return poll
