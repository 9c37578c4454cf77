"""Token-level rows of ``python -m entropy_ops bench``: the ops of SPEC §3.2 on ``[B, T]`` fp32
tensors with a response mask, each against the eager way the papers' / verl's code does it
(``token_eager.py``), measured in the same run.

Inputs look like an RL batch: ~30% padding at the end of rows (lengths uniform in
``[0.4 T, T]``), entropies with a heavy right tail, log-probs near 0 with ``old_logp`` a little
off, one advantage per sequence (GRPO). Errors (``err_h`` holds the output's) are against float64
references: ``reference.masked_quantile_ref`` / ``peak_entropy_mask_ref`` (peak masks: the count of
tokens that differ), and for ``window_entropy`` and the losses the vectorized float64 formulas
below (``reference``'s loop versions take minutes at 512 x 8192; tests check these against them).
A loss is compared with the reference computed on the row's own selected set: Clip-Cov's random
choice cannot match across implementations, so its note gives the count chosen and whether the
set is a valid choice; KL-Cov's note says how many selected tokens differ from the float64 top-k.
"""
from dataclasses import dataclass
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import torch

import entropy_ops as eo
from entropy_ops import reference

from . import cases, timing
from . import token_eager as E
from .table import Row, failure_note

OPS = ("window_entropy", "masked_quantile", "masked_quantile_all", "peak_entropy_mask",
       "clip_cov_policy_loss", "kl_cov_policy_loss")
DIRECTIONS = ("fwd", "fwd+bwd")
DEFAULT_SHAPE = (512, 8192)
QUICK_SHAPE = (64, 1024)
BACKENDS = ("torch", "cpu", "triton", "cuda")


class Inputs(NamedTuple):
    entropy: torch.Tensor  # fp32 [B, T]
    mask: torch.Tensor  # bool [B, T]
    logp: torch.Tensor
    old_logp: torch.Tensor
    advantages: torch.Tensor
    upstream: torch.Tensor  # the gradient fed to window_entropy's output in fwd+bwd rows


@dataclass(frozen=True)
class TokenCase:
    op: str
    direction: str
    b: int
    t: int
    device: str

    @property
    def shape(self) -> str:
        return f"{self.b}x{self.t}"

    def bytes_moved(self) -> int:
        spec = SPECS[self.op]
        per_token = spec.fwd_bytes + (spec.bwd_bytes if self.direction == "fwd+bwd" else 0)
        return per_token * self.b * self.t


def parse_shapes(text: str) -> List[Tuple[int, int]]:
    """``"512x8192,64x1024"`` -> ``[(512, 8192), (64, 1024)]``."""
    try:
        return cases.parse_shapes(text)
    except ValueError:
        raise ValueError(f"--token-shapes: {text!r} is not a comma list of BxT with B, T >= 1 "
                         "(e.g. 512x8192)") from None


def make_inputs(case: TokenCase, seed: int = 0) -> Inputs:
    """Drawn on the CPU with a fixed seed (the same batch on every device), then moved."""
    g = torch.Generator().manual_seed(seed)
    b, t = case.b, case.t
    lengths = torch.randint(max(1, int(0.4 * t)), t + 1, (b,), generator=g)
    mask = torch.arange(t) < lengths[:, None]
    entropy = torch.randn(b, t, generator=g).square_().mul_(0.5)
    logp = torch.randn(b, t, generator=g).square_().mul_(-0.5)
    old_logp = logp + 0.1 * torch.randn(b, t, generator=g)
    advantages = torch.randn(b, 1, generator=g).expand(b, t).contiguous()
    upstream = torch.randn(b, t, generator=g)
    return Inputs(*(x.to(case.device) for x in (entropy, mask, logp, old_logp, advantages, upstream)))


# ---- float64 references that scale to 512 x 8192 (tests check them against ``reference``) ----

def window_ref(entropy, mask, upstream) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(out, d(out . upstream)/d entropy)`` in float64 on the CPU, by differences of prefix sums."""
    x = entropy.detach().cpu().double().requires_grad_(True)
    m = mask.cpu()
    b, t = x.shape
    zero = x.new_zeros(b, 1)
    sums = torch.cat([zero, torch.where(m, x, 0).cumsum(1)], 1)
    counts = torch.cat([zero, m.double().cumsum(1)], 1)
    start = (torch.arange(t) + E.OFFSET).clamp(max=t)
    end = (start + E.WINDOW).clamp(max=t)
    n = counts[:, end] - counts[:, start]
    out = torch.where(n > 0, (sums[:, end] - sums[:, start]) / n.clamp(min=1), 0)
    return out.detach(), torch.autograd.grad(out, x, upstream.cpu().double())[0]


def loss_ref(kind: str, x: Inputs, selected) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(token-mean loss, d loss / d logp)`` in float64 of Clip-Cov (``kind="clip"``: selected
    tokens' loss set to 0) or KL-Cov (``"kl"``: selected tokens penalized), ``selected`` given."""
    logp = x.logp.detach().cpu().double().requires_grad_(True)
    old, a, m, sel = x.old_logp.cpu().double(), x.advantages.cpu().double(), x.mask.cpu(), selected.cpu()
    r = torch.exp(logp - old)
    if kind == "clip":
        losses = torch.where(sel, 0, torch.maximum(-a * r, -a * r.clamp(1 - E.CLIP_RATIO, 1 + E.CLIP_RATIO)))
    else:
        losses = torch.where(sel, -a * r + E.KL_COEF * (logp - old).abs(), -a * r)
    loss = torch.where(m, losses, 0).sum() / m.sum().clamp(min=1)
    return loss.detach(), torch.autograd.grad(loss, logp)[0]


def _k(ratio: float, n_valid: int) -> int:
    return max(int(ratio * n_valid), 1) if n_valid else 0


def clip_candidates(x: Inputs) -> torch.Tensor:
    """Clip-Cov's candidate tokens in float64 (valid, not PPO-clipped, ``lb < cov < ub``)."""
    logp, old, a, m = x.logp.cpu().double(), x.old_logp.cpu().double(), x.advantages.cpu().double(), x.mask.cpu()
    r = torch.exp(logp - old)
    clipped = -a * r.clamp(1 - E.CLIP_RATIO, 1 + E.CLIP_RATIO) > -a * r
    cov = reference.token_covariance_ref(logp, a, m)
    return m & ~clipped & (cov > E.CLIP_COV_LB) & (cov < E.CLIP_COV_UB)


def kl_top_k(x: Inputs) -> torch.Tensor:
    """KL-Cov's selection in float64: the k valid tokens of largest covariance, ties to the lowest index."""
    m = x.mask.cpu()
    cov = reference.token_covariance_ref(x.logp.cpu(), x.advantages.cpu(), m)
    order = torch.sort(torch.where(m, cov, -torch.inf).reshape(-1), descending=True, stable=True).indices
    selected = torch.zeros(m.numel(), dtype=torch.bool)
    selected[order[:_k(E.KL_COV_RATIO, int(m.sum()))]] = True
    return selected.view(m.shape)


# ---- checks: (err of the output, err of the gradient, note) ----

def _max_err(value, ref) -> Optional[float]:
    if value is None:
        return None
    value = value.detach().cpu().double()
    both_nan = torch.isnan(value) & torch.isnan(ref)
    return torch.where(both_nan, 0, (value - ref).abs()).max().item() if value.numel() else 0.0


def _check_window(x, out, grad, refs):
    if "window" not in refs:
        refs["window"] = window_ref(x.entropy, x.mask, x.upstream)
    ref, ref_grad = refs["window"]
    return _max_err(out, ref), _max_err(grad, ref_grad), ""


def _check_quantile(per_sequence):
    def check(x, out, grad, refs):
        key = ("quantile", per_sequence)
        if key not in refs:
            refs[key] = reference.masked_quantile_ref(x.entropy.cpu(), x.mask.cpu(), E.Q, per_sequence)
        return _max_err(out, refs[key]), None, ""
    return check


def _check_peak(x, out, grad, refs):
    if "peak" not in refs:
        refs["peak"] = reference.peak_entropy_mask_ref(x.entropy.cpu(), x.mask.cpu(), E.Q)
    differ = int((out.cpu() != refs["peak"]).sum())
    return float(differ), None, "mask exact" if differ == 0 else f"{differ} tokens differ"


def _check_clip(x, out, grad, refs):
    selected = out[1].cpu()
    if "candidates" not in refs:
        refs["candidates"] = clip_candidates(x)
    candidates = refs["candidates"]
    n_sel, n_cand = int(selected.sum()), int(candidates.sum())
    k = _k(E.CLIP_COV_RATIO, int(x.mask.sum()))
    valid = n_sel == min(k, n_cand) and not bool((selected & ~candidates).any())
    ref, ref_grad = loss_ref("clip", x, selected)
    note = f"chose {n_sel} of {n_cand} cand." if valid else f"INVALID choice of {n_sel}"
    return _max_err(out[0], ref), _max_err(grad, ref_grad), note


def _check_kl(x, out, grad, refs):
    selected = out[1].cpu()
    if "top_k" not in refs:
        refs["top_k"] = kl_top_k(x)
    top_k = refs["top_k"]
    n_sel, k = int(selected.sum()), int(top_k.sum())
    differ = int((selected & ~top_k).sum())
    ref, ref_grad = loss_ref("kl", x, selected)
    if n_sel != k:
        note = f"INVALID: chose {n_sel}, k = {k}"
    else:
        note = f"top-{k} exact" if differ == 0 else f"{differ} of top-{k} differ"
    return _max_err(out[0], ref), _max_err(grad, ref_grad), note


# ---- the ops: ours, eager, what is differentiated, bytes, how the eager way syncs ----

def _clip_ours(x: Inputs, generator):
    out = eo.clip_cov_policy_loss(x.logp, x.old_logp, x.advantages, x.mask, clip_ratio=E.CLIP_RATIO,
                                  clip_cov_ratio=E.CLIP_COV_RATIO, clip_cov_lb=E.CLIP_COV_LB,
                                  clip_cov_ub=E.CLIP_COV_UB, generator=generator)
    return out.loss, out.selected


def _kl_ours(x: Inputs, generator=None):
    out = eo.kl_cov_policy_loss(x.logp, x.old_logp, x.advantages, x.mask, kl_cov_ratio=E.KL_COV_RATIO,
                                kl_coef=E.KL_COEF)
    return out.loss, out.selected


@dataclass(frozen=True)
class _Spec:
    ours: Callable  # (inputs, generator on the device) -> output
    eager: Callable  # (inputs, CPU generator) -> output
    check: Callable  # (inputs, output, grad, refs cache) -> (err, grad err, note)
    grad_of: Optional[str]  # the input differentiated in fwd+bwd rows; None: forward only
    fwd_bytes: int  # per token, algorithmic minimum: fp32 inputs 4 B, bool mask 1 B
    bwd_bytes: int
    dispatched: bool  # goes through the backends (one row per backend; the losses' top-k selection
    #                   does); else composite torch code (one row)
    eager_sync: str  # how the eager way synchronizes with the host ({b}: rows)


_LOSS_BWD = 4 * 3 + 1 + 1 + 4  # read logp, old_logp, advantages, mask, selected; write the gradient
SPECS = {
    "window_entropy": _Spec(
        lambda x, g: eo.window_entropy(x.entropy, x.mask, window=E.WINDOW, offset=E.OFFSET),
        lambda x, g: E.eager_window_entropy(x.entropy, x.mask), _check_window, "entropy",
        4 + 1 + 4, 4 + 1 + 4, True, "the eager way (unfold + sums) is sync-free too"),
    "masked_quantile": _Spec(
        lambda x, g: eo.masked_quantile(x.entropy, x.mask, E.Q),
        lambda x, g: E.eager_masked_quantile(x.entropy, x.mask), _check_quantile(True), None,
        4 + 1, 0, True, "the eager way syncs {b} times (boolean indexing per row)"),
    "masked_quantile_all": _Spec(
        lambda x, g: eo.masked_quantile(x.entropy, x.mask, E.Q, per_sequence=False),
        lambda x, g: E.eager_masked_quantile_all(x.entropy, x.mask), _check_quantile(False), None,
        4 + 1, 0, True, "the eager way syncs once (boolean indexing) and stops at 16M elements"),
    "peak_entropy_mask": _Spec(
        lambda x, g: eo.peak_entropy_mask(x.entropy, x.mask, E.Q),
        lambda x, g: E.eager_peak_entropy_mask(x.entropy, x.mask), _check_peak, None,
        4 + 1 + 1, 0, True, "the eager way syncs {b} times (boolean indexing per row)"),
    "clip_cov_policy_loss": _Spec(
        _clip_ours, lambda x, g: E.eager_clip_cov(x.logp, x.old_logp, x.advantages, x.mask, g),
        _check_clip, "logp", 4 * 3 + 1 + 1, _LOSS_BWD, True,
        "the eager way (verl) syncs: .item(), nonzero, host randperm"),
    "kl_cov_policy_loss": _Spec(
        _kl_ours, lambda x, g: E.eager_kl_cov(x.logp, x.old_logp, x.advantages, x.mask),
        _check_kl, "logp", 4 * 3 + 1 + 1, _LOSS_BWD, True,
        "the eager way (verl) syncs: nonzero, boolean indexing, .cpu(), host topk"),
}


def build_cases(device: str, ops: Sequence[str], shapes, directions=None) -> List[TokenCase]:
    """Every op x shape x direction it has (``fwd+bwd`` for the differentiable ones), filtered
    by ``directions`` when given."""
    cases = []
    for b, t in shapes:
        for op in ops:
            cases += [TokenCase(op, d, b, t, device) for d in directions_of(op)
                      if directions is None or d in directions]
    return cases


def directions_of(op: str) -> Tuple[str, ...]:
    """``fwd`` and ``fwd+bwd`` for the differentiable ops, ``fwd`` alone for the others."""
    return DIRECTIONS if SPECS[op].grad_of else ("fwd",)


def _impls(case: TokenCase, impls: Sequence[str]) -> List[str]:
    """``eager``, then the backends of ``impls`` (dispatched ops) or ``torch`` (composite torch
    code: one row)."""
    names = ["eager"] if "eager" in impls else []
    if SPECS[case.op].dispatched:
        return names + [i for i in impls if i in BACKENDS]
    return names + (["torch"] if "torch" in impls else [])


def _build(name: str, case: TokenCase) -> Callable:
    spec = SPECS[case.op]
    if name == "eager":
        generator = torch.Generator().manual_seed(0)  # verl's randperm runs on the host
        return lambda x: spec.eager(x, generator)
    generator = torch.Generator(device=case.device).manual_seed(0)
    if not spec.dispatched:
        return lambda x: spec.ours(x, generator)

    def run(x):
        with eo.use_backend(name):
            return spec.ours(x, generator)
    return run


def _step(fn: Callable, case: TokenCase, x: Inputs) -> Callable:
    """``step() -> (output, grad or None)``: forward under no_grad, or one forward + backward."""
    name = SPECS[case.op].grad_of
    if case.direction == "fwd":
        def fwd():
            with torch.no_grad():
                return fn(x), None
        return fwd
    leaf = getattr(x, name).detach().clone().requires_grad_(True)
    args = x._replace(**{name: leaf})

    def fwd_bwd():
        out = fn(args)
        y = out[0] if isinstance(out, tuple) else out
        return out, torch.autograd.grad(y, leaf, None if y.dim() == 0 else x.upstream)[0]
    return fwd_bwd


def measure_case(case: TokenCase, impls: Sequence[str], repeats: int, bandwidth_gbs: float) -> List[Row]:
    """One row per implementation: checked once (also the warm-up), then timed; ``speedup`` is
    eager time / this time."""
    spec, x, refs, rows = SPECS[case.op], make_inputs(case), {}, []
    for name in _impls(case, impls):
        row = Row(case.op, case.direction, case.shape, "fp32", name)
        rows.append(row)
        try:
            step = _step(_build(name, case), case, x)
            out, grad = step()
            row.err_h, row.err_grad, row.note = spec.check(x, out, grad, refs)
            del out, grad
            row.time_ms = timing.median_ms(step, case.device, repeats=repeats, warmup=0)
        except eo.NoKernelError:
            row.note = "skipped: no kernel yet"
        except eo.BackendUnavailableError as e:
            row.note = f"skipped: {e}"
        except torch.cuda.OutOfMemoryError:
            row.note = "skipped: out of memory"
        except Exception as e:  # one failing implementation costs its row, not the run
            row.note = failure_note(e)
    eager_ms = next((r.time_ms for r in rows if r.impl == "eager"), None)
    for r in rows:
        if r.time_ms is not None:
            r.gb_s = case.bytes_moved() / (r.time_ms * 1e-3) / 1e9
            r.pct_bw = 100 * r.gb_s / bandwidth_gbs
            r.speedup = eager_ms / r.time_ms if eager_ms else None
    return rows


def summary_lines(rows: List[Row]) -> List[str]:
    """For information (SPEC §4 sets no target here): each implementation's speed-up over the
    eager way, and whether that way synchronizes with the host (ours never does)."""
    keys = list(dict.fromkeys((r.op, r.direction, r.shape) for r in rows if r.op in SPECS))
    lines = []
    for op, direction, shape in keys:
        b = shape.split("x")[0]
        sync = SPECS[op].eager_sync.format(b=b)
        for r in rows:
            if (r.op, r.direction, r.shape) != (op, direction, shape) or r.impl == "eager" or r.time_ms is None:
                continue
            ratio = f"{r.speedup:.2f}x vs eager" if r.speedup else "eager not measured"
            lines.append(f"{op} {direction} {shape}: {r.impl} {ratio}, sync-free; {sync}")
    return lines or ["no token-level row was measured"]
