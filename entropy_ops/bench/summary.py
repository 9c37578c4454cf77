"""The SPEC §4 targets, checked on this run's rows.

CPU: the ``cpu`` backend on the headline shape ``[512, 151936]`` >= 10x eager and >= 4x
``torch.compile`` (SPEC states it for forward entropy; other headline rows are held to the same
bar for information). GPU: forward >= 90% and backward (the ``bwd`` rows) >= 85% of the measured
copy bandwidth at ``[8192, 151936]``.
"""
from typing import List

from .cases import CPU_HEADLINE, GPU_HEADLINE
from .table import Row

CPU_TARGETS = (("eager", 10.0), ("compile", 4.0))
GPU_TARGETS = {"fwd": 90.0, "bwd": 85.0}


def _verdict(value: float, target: float, unit: str) -> str:
    if value >= target:
        return f"MET ({value:.2f}{unit} >= {target:g}{unit})"
    return f"MISSED by {target - value:.2f}{unit} ({value:.2f}{unit} < {target:g}{unit})"


def _groups(rows: List[Row], shape: str):
    keys = []
    for r in rows:
        if r.shape == shape and (r.op, r.direction, r.dtype) not in keys:
            keys.append((r.op, r.direction, r.dtype))
    for key in keys:
        yield key, {r.impl: r for r in rows if (r.op, r.direction, r.dtype) == key and r.shape == shape}


def cpu_summary(rows: List[Row]) -> List[str]:
    """The headline shape's rows; without it in the run, every shape's (marked as not headline)."""
    headline = "x".join(map(str, CPU_HEADLINE))
    shapes = [headline] if any(r.shape == headline for r in rows) else list(dict.fromkeys(r.shape for r in rows))
    lines = [] if shapes == [headline] else [f"(no {headline} case in this run: the targets apply to it only)"]
    for shape in shapes:
        lines += _cpu_lines(rows, shape)
    return lines


def _cpu_lines(rows: List[Row], shape: str) -> List[str]:
    lines = []
    for (op, direction, dtype), by_impl in _groups(rows, shape):
        name = f"{op} {direction} {shape} {dtype}"
        cpu = by_impl.get("cpu")
        if cpu is None or cpu.time_ms is None:
            lines.append(f"{name}: cpu backend not measured ({cpu.note if cpu else 'not in --impls'})")
            continue
        for base, target in CPU_TARGETS:
            other = by_impl.get(base)
            if other is None or other.time_ms is None:
                lines.append(f"{name}: cpu vs {base}: {base} not measured")
                continue
            ratio = other.time_ms / cpu.time_ms
            lines.append(f"{name}: cpu vs {base:<7} {_verdict(ratio, target, 'x')}")
    return lines


def gpu_summary(rows: List[Row]) -> List[str]:
    shape = "x".join(map(str, GPU_HEADLINE))
    lines = []
    for (op, direction, dtype), by_impl in _groups(rows, shape):
        for impl in ("triton", "cuda"):
            r = by_impl.get(impl)
            if r is not None and r.pct_bw is not None and direction in GPU_TARGETS:
                verdict = _verdict(r.pct_bw, GPU_TARGETS[direction], "%")
                lines.append(f"{op} {direction} {shape} {dtype}: {impl} % of copy bandwidth {verdict}")
    return lines or [f"no GPU backend row at the headline case ({shape}) in this run"]
