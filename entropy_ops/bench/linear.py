"""Rows of ``python -m entropy_ops bench`` for ``linear_logprobs_and_entropy`` (SPEC §4 "Fused
linear"), on ``[N, D] x [V, D]`` shapes, measured side by side in one run:

- ``eager``: what trainers run today, ``F.linear`` then the fp32-upcast formula of ``eager.py``
  (holds the ``[N, V]`` logits and their fp32 copies);
- the backends (``torch``, ``cpu``; ``triton``, ``cuda`` on a GPU);
- ``cublas`` (GPU only): the product alone (forward rows) or the four GEMMs a recomputing backward
  needs (forward product, backward recompute, ``g @ W``, ``g^T @ h``; fwd+bwd rows), the yardstick of
  SPEC's targets: forward <= 1.1x the product, forward+backward <= 1.1x the four GEMMs.

Errors are measured once per row on a sub-batch of at most 64 rows against the float64 reference
(``reference.linear_logprobs_and_entropy_ref``) on the same device; ``err grad`` is grad_hidden's.
The GPU comparison is written but was not measured when this module was written (no GPU then).
"""
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

import entropy_ops as eo
from entropy_ops import reference

from . import timing
from .eager import eager_logprobs_and_entropy
from .table import Row, failure_note, max_err, rel_err

OPS = ("linear_logprobs_and_entropy",)
DIRECTIONS = ("fwd", "fwd+bwd")
BACKENDS = ("torch", "cpu", "triton", "cuda")
DEFAULT_SHAPES = {"cpu": [(512, 256, 32000)], "cuda": [(8192, 4096, 151936), (16384, 4096, 151936)]}
QUICK_SHAPES = {"cpu": [(128, 128, 8192)], "cuda": [(1024, 1024, 32000)]}
_ERR_ROWS = 64
COLUMNS = (
    ("op", "op", 20, "{}"), ("direction", "dir", 7, "{}"), ("shape", "shape (NxDxV)", 18, "{}"),
    ("dtype", "dtype", 5, "{}"), ("impl", "impl", 10, "{}"), ("time_ms", "ms", 9, "{:.2f}"),
    ("speedup", "vs eager", 8, "{:.2f}x"), ("err_h", "err H", 8, "{:.1e}"), ("err_logp", "err logp", 8, "{:.1e}"),
    ("err_grad", "err grad", 8, "{:.1e}"), ("rel_grad", "rel grad", 8, "{:.1e}"),
)


@dataclass(frozen=True)
class LinearCase:
    direction: str
    n: int
    d: int
    v: int
    dtype: torch.dtype
    device: str

    @property
    def shape(self) -> str:
        return f"{self.n}x{self.d}x{self.v}"

    def gemm_flops(self) -> int:
        return 2 * self.n * self.d * self.v


def parse_shapes(text: str) -> List[Tuple[int, int, int]]:
    """``"512x256x32000,128x128x8192"`` -> ``[(512, 256, 32000), (128, 128, 8192)]``."""
    shapes = []
    for item in text.split(","):
        try:
            n, d, v = (int(s) for s in item.lower().strip().split("x"))
        except ValueError:
            raise ValueError(f"--linear-shapes: {item!r} is not NxDxV (e.g. 512x256x32000)") from None
        if min(n, d, v) < 1:
            raise ValueError(f"--linear-shapes: {item!r} needs N, D, V >= 1")
        shapes.append((n, d, v))
    return shapes


def build_cases(device: str, dtype: torch.dtype, shapes, directions=None) -> List[LinearCase]:
    return [LinearCase(dr, n, d, v, dtype, device) for n, d, v in shapes for dr in DIRECTIONS
            if directions is None or dr in directions]


def make_inputs(case: LinearCase, seed: int = 0):
    """Hidden states of unit scale and a head giving logits of std ~2 (drawn on the CPU, moved)."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(case.n, case.d, generator=g)
    w = torch.randn(case.v, case.d, generator=g) * (2.0 / case.d ** 0.5)
    y = torch.randint(case.v, (case.n,), generator=g)
    return h.to(case.device, case.dtype), w.to(case.device, case.dtype), y.to(case.device)


def _eager(h, w, y):
    return eager_logprobs_and_entropy(F.linear(h, w), y)


def _backend(name: str) -> Callable:
    def run(h, w, y):
        with eo.use_backend(name):
            return eo.linear_logprobs_and_entropy(h, w, y)
    return run


def _cublas_step(case: LinearCase, h, w) -> Callable:
    """The product alone (fwd) or the four GEMMs of a recomputing backward (fwd+bwd)."""
    if case.direction == "fwd":
        return lambda: F.linear(h, w)

    def four():
        z = F.linear(h, w)
        g = F.linear(h, w)  # backward's recompute; its result stands in for dL/dz
        return z, g @ w, g.t() @ h
    return four


def _step(fn: Callable, case: LinearCase, h, w, y) -> Callable:
    """``step() -> (logp, H, grad_hidden or None)``."""
    if case.direction == "fwd":
        def fwd():
            with torch.no_grad():
                logp, ent = fn(h, w, y)
            return logp, ent, None
        return fwd
    hh, ww = h.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)

    def fwd_bwd():
        logp, ent = fn(hh, ww, y)
        gh, _ = torch.autograd.grad(logp.sum() + ent.sum(), (hh, ww))
        return logp, ent, gh
    return fwd_bwd


def _errors(fn: Callable, case: LinearCase, h, w, y, refs) -> Tuple[float, float, Optional[float], Optional[float]]:
    """Max abs errors of (H, logp, grad_hidden) and grad_hidden's relative L2 error, on the first
    rows, vs float64 on the same device."""
    rows = min(case.n, _ERR_ROWS)
    h, y = h[:rows], y[:rows]
    if "ref" not in refs:
        hd = h.double().requires_grad_(True)
        logp, ent = reference.linear_logprobs_and_entropy_ref(hd, w.double(), y)
        (gh,) = torch.autograd.grad(logp.sum() + ent.sum(), (hd,)) if case.direction != "fwd" else (None,)
        refs["ref"] = (logp.detach(), ent.detach(), gh)
    ref_logp, ref_h, ref_gh = refs["ref"]
    logp, ent, gh = _step(fn, case, h, w, y)()
    return max_err(ent, ref_h), max_err(logp, ref_logp), max_err(gh, ref_gh), rel_err(gh, ref_gh)


def measure_case(case: LinearCase, impls: Sequence[str], repeats: int) -> List[Row]:
    """One row per implementation; ``speedup`` is eager time / this time; on a GPU the note gives
    the ratio to the ``cublas`` row (SPEC's yardstick) and TFLOP/s of the GEMMs counted."""
    h, w, y = make_inputs(case)
    names = [i for i in ("eager", "cublas") + BACKENDS if i in impls and (i != "cublas" or case.device == "cuda")]
    rows, refs = [], {}
    dtype = str(case.dtype).replace("torch.", "").replace("bfloat16", "bf16").replace("float", "fp")
    for name in names:
        row = Row(OPS[0], case.direction, case.shape, dtype, name)
        rows.append(row)
        try:
            if name == "cublas":
                step = _cublas_step(case, h, w)
            else:
                fn = _eager if name == "eager" else _backend(name)
                row.err_h, row.err_logp, row.err_grad, row.rel_grad = _errors(fn, case, h, w, y, refs)
                step = _step(fn, case, h, w, y)
            step()
            row.time_ms = timing.median_ms(step, case.device, repeats=repeats, warmup=1)
        except (eo.NoKernelError, eo.BackendUnavailableError) as e:
            row.note = f"skipped: {e}"
        except torch.cuda.OutOfMemoryError:
            row.note = "skipped: out of memory"
        except Exception as e:  # one failing implementation costs its row, not the run
            row.note = failure_note(e)
    eager_ms = next((r.time_ms for r in rows if r.impl == "eager"), None)
    cublas_ms = next((r.time_ms for r in rows if r.impl == "cublas"), None)
    gemms = 1 if case.direction == "fwd" else 4
    for r in rows:
        if r.time_ms is None:
            continue
        r.speedup = eager_ms / r.time_ms if eager_ms else None
        tflops = gemms * case.gemm_flops() / (r.time_ms * 1e-3) / 1e12
        ratio = f"{r.time_ms / cublas_ms:.2f}x cuBLAS, " if cublas_ms and r.impl != "cublas" else ""
        r.note = r.note or f"{ratio}{tflops:.2f} TFLOP/s"
    return rows


def summary_lines(rows: List[Row]) -> List[str]:
    """SPEC §4: forward <= 1.1x the cuBLAS product, forward+backward <= 1.1x the four GEMMs (GPU);
    on CPU, the speed-up over eager."""
    lines = []
    for key in dict.fromkeys((r.direction, r.shape, r.dtype) for r in rows):
        group = [r for r in rows if (r.direction, r.shape, r.dtype) == key and r.time_ms is not None]
        cublas = next((r.time_ms for r in group if r.impl == "cublas"), None)
        for r in group:
            if r.impl in ("eager", "cublas"):
                continue
            vs_eager = f"{r.speedup:.2f}x vs eager" if r.speedup else "eager not measured"
            if cublas:
                target = "<= 1.1x the product" if key[0] == "fwd" else "<= 1.1x the four GEMMs"
                ratio = r.time_ms / cublas
                verdict = "meets" if ratio <= 1.1 else "misses"
                lines.append(f"linear {key[0]} {key[1]} {key[2]}: {r.impl} {ratio:.2f}x cuBLAS ({verdict} {target}), "
                             f"{vs_eager}")
            else:
                lines.append(f"linear {key[0]} {key[1]} {key[2]}: {r.impl} {vs_eager}")
    return lines or ["no linear row was measured"]
