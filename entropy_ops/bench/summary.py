"""The SPEC §4 targets, checked on this run's rows.

CPU: the ``cpu`` backend on the headline shape ``[512, 151936]`` bf16, forward ``entropy`` >= 10x
eager and >= 4x ``torch.compile``. ``top_p_entropy`` (CPU and GPU backends): <= 4x the same
backend's ``entropy`` and >= 10x faster than SIREN's top-k + sort (the ``topk`` baseline; the
full-sort eager way is printed beside it). GPU: bf16 ``entropy`` and ``logprobs_and_entropy`` forward
>= 90% and backward (the ``bwd`` rows) >= 85% of the measured copy bandwidth at ``[8192, 151936]``.
Rows SPEC sets no target for (other ops, directions or dtypes) print their ratio, marked
"no target", never MET or MISSED.
"""
from typing import List

from .cases import CPU_HEADLINE, GPU_HEADLINE
from .table import Row

CPU_TARGETS = (("eager", 10.0), ("compile", 4.0))
CPU_TARGET_OPS = {("entropy", "fwd")}  # (op, direction) SPEC §4 sets the CPU bar for, at bf16
GPU_TARGETS = {"fwd": 90.0, "bwd": 85.0}
GPU_TARGET_OPS = ("entropy", "logprobs_and_entropy")  # "costs the same": held to entropy's bar
TARGET_DTYPE = "bf16"
TOP_P_VS_ENTROPY = 4.0  # top_p_entropy costs at most 4x plain entropy, same backend
TOP_P_VS_SORT = 10.0  # and is at least 10x faster than SIREN's top-k + sort


def _verdict(value: float, target: float, unit: str) -> str:
    if value >= target:
        return f"MET ({value:.2f}{unit} >= {target:g}{unit})"
    return f"MISSED ({value:.2f}{unit} < {target:g}{unit})"


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


def top_p_lines(rows: List[Row], shape: str, impls) -> List[str]:
    """SPEC §4's top-p targets: each backend's ``top_p_entropy`` vs its own ``entropy`` (same shape,
    direction, dtype) and vs the sort-based ``eager``."""
    lines = []
    for (op, direction, dtype), by_impl in _groups(rows, shape):
        if op != "top_p_entropy":
            continue
        plain = {r.impl: r for r in rows if (r.op, r.direction, r.dtype, r.shape) == ("entropy", direction, dtype, shape)}
        for impl in impls:
            ours = by_impl.get(impl)
            if ours is None or ours.time_ms is None:
                continue
            name = f"top_p_entropy {direction} {shape} {dtype}: {impl}"
            base = plain.get(impl)
            if base is not None and base.time_ms is not None:
                cost = ours.time_ms / base.time_ms
                verdict = (f"MET ({cost:.2f}x <= {TOP_P_VS_ENTROPY:g}x)" if cost <= TOP_P_VS_ENTROPY
                           else f"MISSED ({cost:.2f}x > {TOP_P_VS_ENTROPY:g}x)")
                lines.append(f"{name} costs {cost:.2f}x its entropy: {verdict}")
            else:
                lines.append(f"{name}: entropy not measured with it (add --ops entropy)")
            topk, eager = by_impl.get("topk"), by_impl.get("eager")
            if topk is not None and topk.time_ms is not None:
                lines.append(f"{name} vs SIREN's top-k + sort {_verdict(topk.time_ms / ours.time_ms, TOP_P_VS_SORT, 'x')}")
            if eager is not None and eager.time_ms is not None:
                lines.append(f"{name} vs a full sort (eager): {eager.time_ms / ours.time_ms:.1f}x")
    return lines


def _cpu_lines(rows: List[Row], shape: str) -> List[str]:
    lines = top_p_lines(rows, shape, ("cpu",))
    for (op, direction, dtype), by_impl in _groups(rows, shape):
        if op == "top_p_entropy":
            continue
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
            if (op, direction) in CPU_TARGET_OPS and dtype == TARGET_DTYPE:
                lines.append(f"{name}: cpu vs {base:<7} {_verdict(ratio, target, 'x')}")
            else:
                lines.append(f"{name}: cpu vs {base:<7} {ratio:.2f}x (no target: SPEC sets it for bf16 "
                             f"forward entropy)")
    return lines


def gpu_summary(rows: List[Row]) -> List[str]:
    shape = "x".join(map(str, GPU_HEADLINE))
    lines = top_p_lines(rows, shape, ("triton", "cuda"))
    for (op, direction, dtype), by_impl in _groups(rows, shape):
        if op == "top_p_entropy":  # held to its own targets above
            continue
        for impl in ("triton", "cuda"):
            r = by_impl.get(impl)
            if r is None or r.pct_bw is None:
                continue
            if op in GPU_TARGET_OPS and direction in GPU_TARGETS and dtype == TARGET_DTYPE:
                verdict = _verdict(r.pct_bw, GPU_TARGETS[direction], "%")
            else:
                verdict = (f"{r.pct_bw:.2f}% (no target: SPEC sets it for bf16 fwd and bwd of "
                           f"{' and '.join(GPU_TARGET_OPS)})")
            lines.append(f"{op} {direction} {shape} {dtype}: {impl} % of copy bandwidth {verdict}")
    return lines or [f"no GPU backend row at the headline case ({shape}) in this run"]
