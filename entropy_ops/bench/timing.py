"""Medians of wall time, and the machine's copy bandwidth measured the same way.

CPU: ``time.perf_counter`` around each call, after warm-up calls. CUDA: events around each call,
with L2 flushed before it (a 256 MiB write), so a small case is not timed out of cache.
Slow implementations stop after ``min_runs`` once ``budget_s`` of timed runs is spent.
"""
import statistics
import time

import torch

_L2_FLUSH_BYTES = 256 << 20
_flush_buffers = {}


def _flush_l2(device):
    buf = _flush_buffers.get(device)
    if buf is None:
        buf = _flush_buffers[device] = torch.empty(_L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device)
    buf.zero_()


def _run_once_ms(fn, device, setup=None) -> float:
    if setup is not None:
        setup()
    if device == "cuda":
        _flush_l2(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def median_ms(fn, device: str, repeats: int, warmup: int = 1, min_runs: int = 3, budget_s: float = 2.0,
              setup=None) -> float:
    """Median time of ``fn()`` in milliseconds over at most ``repeats`` timed runs; ``setup()``
    runs untimed before each call."""
    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    times = []
    while len(times) < max(repeats, 1):
        times.append(_run_once_ms(fn, device, setup))
        if len(times) >= min_runs and sum(times) > budget_s * 1e3:
            break
    return statistics.median(times)


def copy_bandwidth_gbs(device: str, nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """``dst.copy_(src)`` of ``nbytes`` (>= 1 GB, SPEC §4), counted as 2 x bytes / median time."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device, repeats=repeats, warmup=2, min_runs=repeats, budget_s=0)
    return 2 * nbytes / (ms * 1e-3) / 1e9
