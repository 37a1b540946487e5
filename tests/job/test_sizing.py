"""jobs/sizing.py: the CPU stages' caps and block size (no Ray)."""

from __future__ import annotations

import pytest

from rayinpaint.jobs.sizing import ASSUMED_CPUS_PER_ACTOR, DETECT_PREPARE_WEIGHT, StageSizes, cpu_block_rows, stage_sizes


@pytest.mark.parametrize("cpus, actors, per, want", [
    (32, 8, 1.0, StageSizes(prepare=12, finish=12)),    # 4 vCPUs per GPU (g5.xlarge x 8): 24 free
    (96, 8, 1.0, StageSizes(prepare=44, finish=44)),    # p4d.24xlarge
    (16, 1, 1.0, StageSizes(prepare=7, finish=8)),      # an odd count: finish takes the larger half
    (2, 1, 1.0, StageSizes(prepare=1, finish=1)),       # 1 free CPU: each stage still gets one task
    (2, 2, 1.0, StageSizes(prepare=1, finish=1)),       # none free: never 0 (the stages would never run)
    (4, 8, 0.5, StageSizes(prepare=1, finish=1)),
])
def test_stage_sizes_split_the_cpus_the_actors_leave(cpus, actors, per, want):
    got = stage_sizes(cpus, actors, per)
    assert (got.prepare, got.finish) == (want.prepare, want.finish)
    # the caps apply only when a task of each stage fits in the free CPUs (jobs/pipeline.py)
    assert (got.prepare + got.finish <= got.free) == (max(0, int(cpus - actors * per)) >= 2)


def test_stage_sizes_before_any_worker_exists():
    """An autoscaling cluster that starts from zero workers: size for the GPU workers the pool will bring."""
    free = 8 * (ASSUMED_CPUS_PER_ACTOR - 1)
    got = stage_sizes(0, 8, 1.0)
    assert got.prepare + got.finish == free and got.finish >= got.prepare


def test_caps_never_exceed_the_free_cpus_when_there_are_two_or_more():
    for cpus in range(2, 200):
        for actors in (1, 2, 4, 8):
            s = stage_sizes(cpus, actors, 1.0)
            free = cpus - actors
            assert s.prepare >= 1 and s.finish >= s.prepare
            if free >= 2:
                assert s.prepare + s.finish == free


@pytest.mark.parametrize("batch, retry, want", [(1, False, 8), (4, False, 8), (3, False, 9), (16, False, 16),
                                                (64, False, 64), (16, True, 1)])
def test_cpu_blocks_are_whole_model_batches(batch, retry, want):
    rows = cpu_block_rows(batch, retry)
    assert rows == want and (retry or rows % batch == 0)


def test_a_detector_in_prepare_gives_prepare_the_larger_share():
    # 8 CPUs, one model actor of 1 CPU: 7 free. Without detection finish takes the larger half (4 of 7); with the
    # detector's weight prepare gets 2 CPUs for each of finish's, each at least 1, never more than the free CPUs.
    assert stage_sizes(8, 1, 1.0) == StageSizes(prepare=3, finish=4, free=7)
    assert stage_sizes(8, 1, 1.0, DETECT_PREPARE_WEIGHT) == StageSizes(prepare=4, finish=3, free=7)
    assert stage_sizes(16, 1, 1.0, DETECT_PREPARE_WEIGHT) == StageSizes(prepare=10, finish=5, free=15)
    assert stage_sizes(2, 1, 1.0, DETECT_PREPARE_WEIGHT) == StageSizes(prepare=1, finish=1, free=1)
    for cpus in range(3, 40):
        s = stage_sizes(cpus, 1, 1.0, DETECT_PREPARE_WEIGHT)
        assert s.prepare + s.finish == s.free and s.prepare >= s.finish >= 1


def test_detector_actors_hold_a_cpu_each_only_where_the_cpus_fit():
    # 8 CPUs, one model actor: prepare's share (4) in actors of one CPU each; a crash-retry pass, or a 2-CPU machine
    # (one free CPU, which Ray Data's whole-CPU read tasks need too), one actor asking none.
    assert stage_sizes(8, 1, 1.0, DETECT_PREPARE_WEIGHT).detector_actors() == (4, 1.0)
    assert stage_sizes(8, 1, 1.0, DETECT_PREPARE_WEIGHT).detector_actors(retry_pass=True) == (1, 0.0)
    assert not stage_sizes(2, 1, 1.0, DETECT_PREPARE_WEIGHT).fit
    assert stage_sizes(2, 1, 1.0, DETECT_PREPARE_WEIGHT).detector_actors() == (1, 0.0)
