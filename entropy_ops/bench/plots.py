"""PNG plots of a benchmark run, written next to its CSV:

- ``throughput_<device>.png``: GB/s against vocabulary size V, one panel per vocabulary op
  (forward rows), one line per implementation, the measured copy bandwidth as a dashed line;
- ``speedup_<device>.png``: the speed-up of each entropy_ops backend over each baseline (baseline
  time / backend time, same run) against V, log scale, 1x marked.

matplotlib is optional (``pip install entropy-ops[bench]``): it is imported only when plotting, and a
missing one is reported by ``MissingMatplotlib`` with the install line, never a crash at import.
"""
import os
from typing import Dict, List, Tuple

from .._plotting import pyplot
from .baselines import BACKENDS, BASELINES
from .cases import OPS
from .table import Row

# The torch backend is the portable fallback, not a kernel: speed-ups are drawn for these.
KERNEL_BACKENDS = tuple(b for b in BACKENDS if b != "torch")


def _pyplot():
    return pyplot("plots skipped: matplotlib is not installed "
                  "(pip install matplotlib, or entropy-ops[bench]; --no-plots silences this)")


def _series(rows: List[Row], value) -> Dict[str, Dict[str, List[Tuple[int, float]]]]:
    """``{op: {impl: [(V, value(row)), ...] sorted by V}}`` over the timed forward vocabulary rows."""
    out: Dict[str, Dict[str, List[Tuple[int, float]]]] = {}
    for r in rows:
        if r.op not in OPS or r.direction != "fwd" or r.time_ms is None:
            continue
        y = value(r)
        if y is not None:
            v = int(r.shape.split("x")[1])
            out.setdefault(r.op, {}).setdefault(r.impl, []).append((v, y))
    return {op: {impl: sorted(pts) for impl, pts in by.items()} for op, by in out.items()}


def speedups(rows: List[Row]) -> Dict[str, Dict[str, List[Tuple[int, float]]]]:
    """``{op: {"<backend> vs <baseline>": [(V, baseline ms / backend ms), ...]}}``, forward rows;
    pairs are matched on (op, shape, dtype) within the run."""
    times = {(r.op, r.shape, r.dtype, r.impl): r.time_ms for r in rows
             if r.op in OPS and r.direction == "fwd" and r.time_ms is not None}
    out: Dict[str, Dict[str, List[Tuple[int, float]]]] = {}
    for (op, shape, dtype, impl), ms in times.items():
        if impl not in KERNEL_BACKENDS:
            continue
        for base in BASELINES:
            base_ms = times.get((op, shape, dtype, base))
            if base_ms is not None:
                pts = out.setdefault(op, {}).setdefault(f"{impl} vs {base}", [])
                pts.append((int(shape.split("x")[1]), base_ms / ms))
    return {op: {k: sorted(pts) for k, pts in by.items()} for op, by in out.items()}


def _panels(plt, n):
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _draw(plt, series, path, title, ylabel, logy=False, hline=None, hlabel=None):
    fig, axes = _panels(plt, len(series))
    for ax, (op, lines) in zip(axes, series.items()):
        for name, pts in lines.items():
            ax.plot([v for v, _ in pts], [y for _, y in pts], marker="o", label=name)
        if hline is not None:
            ax.axhline(hline, linestyle="--", color="gray", label=hlabel)
        ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log")
        ax.set(title=op, xlabel="vocabulary size V", ylabel=ylabel)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_plots(rows: List[Row], directory: str, slug: str, title: str, bandwidth_gbs: float) -> List[str]:
    """Draw this run's forward vocabulary rows into ``directory``; returns the files written
    (none when the run has no such rows). Raises ``MissingMatplotlib`` without matplotlib."""
    through = _series(rows, lambda r: r.gb_s)
    ratios = speedups(rows)
    if not through:
        return []
    plt = _pyplot()
    os.makedirs(directory, exist_ok=True)
    written = [_draw(plt, through, os.path.join(directory, f"throughput_{slug}.png"),
                     f"throughput, forward ({title})", "GB/s (algorithmic bytes)", logy=True,
                     hline=bandwidth_gbs, hlabel="copy bandwidth")]
    if ratios:
        written.append(_draw(plt, ratios, os.path.join(directory, f"speedup_{slug}.png"),
                             f"speed-up over the baselines, forward ({title})", "baseline time / backend time",
                             logy=True, hline=1.0, hlabel="1x"))
    return written
