"""How many CPU tasks each CPU stage may run at once, and how many rows a CPU-stage block holds.

Kept apart from pipeline.py so the arithmetic is testable without Ray (tests/job/test_sizing.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# CPUs per actor assumed while the cluster has none yet (an autoscaling cluster starting from zero workers): the
# smallest GPU worker in cluster.yaml (g5.xlarge / g6e.xlarge: 4 vCPUs, 1 GPU).
ASSUMED_CPUS_PER_ACTOR = 4.0
# Prepare's cost per row against finish's with a text detector in prepare (--mask-from), for the workload the job is
# sized for: 12-MP JPEG photos written with --format auto. Measured (`rayinpaint bench --cpu-stages`, one core, README
# "Masks from detectors"): prepare 185 ms + text detection 641 ms against finish 403 ms per row, about 2 to 1.
DETECT_PREPARE_WEIGHT = 2.0
# Rows per block for the CPU stages: at least this many, a whole number of model batches.
MIN_CPU_BLOCK_ROWS = 8


@dataclass(frozen=True)
class StageSizes:
    prepare: int      # prepare tasks in flight at most
    finish: int       # finish tasks in flight at most
    free: int = 0     # CPUs the actors leave (the caps apply only when prepare + finish fit in them)

    @property
    def fit(self) -> bool:
        """Whether the free CPUs hold a whole one for every task of each stage at once."""
        return self.prepare + self.finish <= self.free

    def detector_actors(self, retry_pass: bool = False) -> tuple[int, float]:
        """(detector actors, CPUs each) when prepare runs in detector actors (--mask-from). An actor holds its CPU for
        the whole pass: where the CPUs fit, prepare's share in actors of one CPU each; where they do not (a 2-CPU
        machine, a crash-retry pass), one actor asking none, sharing the free CPU. Ray Data's read tasks ask a whole
        CPU, and an actor holding half of a laptop's one free CPU left them none for ever (the pass hung before its
        first row)."""
        return (self.prepare, 1.0) if self.fit and not retry_pass else (1, 0.0)


def stage_sizes(cluster_cpus: float, n_actors: int, cpus_per_actor: float, prepare_weight: float = 1.0) -> StageSizes:
    """Caps on the prepare and finish tasks in flight (`TaskPoolStrategy(size=...)`), from the CPUs the model
    actors leave free.

    Why: Ray Data 2.60 starts a task-pool stage's tasks whenever a CPU slot and the stage's share of the object
    store allow, upstream first. Left uncapped, prepare (every block of the manifest ready for it) takes every
    CPU slot the actors leave, so finish starts late, model outputs wait in the object store, and on a cluster
    short of CPUs the actors wait for prepared blocks (measured before: prepare drained every block before finish
    ran; 3 of 8 actors never got a batch). With caps, each stage keeps its share: the free CPUs (the cluster's CPUs
    minus the actors' own; `ASSUMED_CPUS_PER_ACTOR` per actor while the cluster has no CPU yet) are split
    between the two, finish taking the larger half (it reads and decodes the original again, pastes back and
    encodes the full-size output: on 12-MP photos the heavier stage per row), each at least 1. Caps limit
    tasks in flight only; Ray still places them wherever CPUs are free. `prepare_weight`: prepare's cost per row
    against finish's; a detector in prepare (--mask-from) makes it the heavier stage (DETECT_PREPARE_WEIGHT).
    """
    n_actors = max(1, int(n_actors))
    if cluster_cpus <= 0:
        cluster_cpus = ASSUMED_CPUS_PER_ACTOR * n_actors
    free = max(0, int(math.floor(cluster_cpus - n_actors * cpus_per_actor + 1e-9)))
    finish = max(1, math.ceil(free / (1.0 + prepare_weight) - 1e-9))
    return StageSizes(prepare=max(1, free - finish), finish=finish, free=free)


def cpu_block_rows(batch_size: int, retry_pass: bool) -> int:
    """Rows per block from read to the model stage: a whole number of model batches, at least
    `MIN_CPU_BLOCK_ROWS` rows, so that small batches do not cost a Ray task (and its scheduling, a few ms) per
    batch in prepare; the model actor runs a block as consecutive fixed-shape batches, so a row's output does not
    depend on the block it is in. Crash-retry passes keep one row per block: a row that kills its worker takes
    down only itself."""
    if retry_pass:
        return 1
    batch_size = max(1, int(batch_size))
    return batch_size * max(1, math.ceil(MIN_CPU_BLOCK_ROWS / batch_size))
