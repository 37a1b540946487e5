"""What `rayinpaint bench` measures with: timed calls between device synchronisations, peak memory, the matmul
ceiling that achieved FLOP/s are compared with, and the steady rate of a finished job from its results shards.
"""

from __future__ import annotations

import gc
import glob
import os
import statistics
import time


def _sync(device) -> None:
    from rayinpaint.model.speed import synchronize

    synchronize(device)


def time_calls(call, device, warmup: int, iters: int) -> dict:
    """Run `call` warmup times untimed, then iters times each between synchronisations. Seconds per call,
    their median, and the peak memory over the timed calls."""
    import torch

    for _ in range(warmup):
        call()
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(max(1, iters)):
        _sync(device)
        t0 = time.perf_counter()
        call()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {"s_per_batch_median": statistics.median(times), "s_per_batch": times, **peak_memory(device)}


def peak_memory(device) -> dict:
    """CUDA: the most bytes the caching allocator held since the last reset (reserved: it includes the memory
    pools of CUDA graphs, whose replays allocate nothing), and the most in live tensors (allocated).
    CPU: the process's peak resident set (over its lifetime)."""
    import torch

    if device.type == "cuda":
        return {"peak_memory_bytes": int(torch.cuda.max_memory_reserved()), "peak_memory_kind": "cuda_max_reserved",
                "peak_allocated_bytes": int(torch.cuda.max_memory_allocated())}
    import resource

    return {"peak_memory_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
            "peak_memory_kind": "cpu_max_rss"}


def matmul_ceiling(device, n: int | None = None, samples: int = 5) -> dict:
    """TFLOP/s of a large square matmul timed here: bf16 on CUDA (the tensor-core ceiling), fp32 on CPU."""
    import torch

    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    n = n or (8192 if cuda else 1024)
    inner = 20 if cuda else 3
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    per = []
    for _ in range(samples):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            a @ b
        _sync(device)
        per.append((time.perf_counter() - t0) / inner)
    s = statistics.median(per)
    return {"tflops": 2 * n**3 / s / 1e12, "dtype": str(dtype).replace("torch.", ""), "n": n, "s_per_matmul": s}


def release_memory() -> None:
    """Drop compiled code, CUDA graphs and cached blocks, so the next measurement starts clean."""
    import torch

    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def steady_rate(results_dir: str) -> float | None:
    """ok rows per second between the first and the last results shard written (each shard is written as its
    batch finishes): the job's rate after start-up, model loading and the first batch's warm-up."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    shards = []
    for path in glob.glob(os.path.join(results_dir, "*.parquet")):
        status = pq.read_table(path, columns=["status"]).column("status")
        shards.append((os.path.getmtime(path), int(pc.sum(pc.equal(status, "ok")).as_py() or 0)))
    shards.sort()
    span = shards[-1][0] - shards[0][0] if len(shards) > 1 else 0.0
    rows = sum(n for _, n in shards[1:])
    return rows / span if span > 0 and rows else None


__all__ = ["time_calls", "peak_memory", "matmul_ceiling", "release_memory", "steady_rate"]


def median_ms(fn, repeat: int) -> tuple[float, object]:
    """The median of `repeat` calls of `fn` in milliseconds (one decimal), and the last call's result: the CPU
    benchmarks' timer (no device to synchronise)."""
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return round(1000 * statistics.median(times), 1), out
