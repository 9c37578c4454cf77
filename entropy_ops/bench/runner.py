"""One case: inputs, the float64 reference, then each implementation checked once and timed.

Each implementation's first call (outside the timing) gives its errors against the reference and
is also its warm-up: ``torch.compile`` compiles there, so compile time is never timed.
"""
from typing import Callable, Dict, List, NamedTuple, Optional

import torch

import entropy_ops as eo
from entropy_ops import reference

from . import baselines, timing
from .cases import Case, make_inputs
from .eager import MIN_P, TOP_P
from .table import Row, failure_note, max_err, rel_err

# Rows of the float64 reference per chunk: its temporaries stay near 64M doubles.
_REF_ELEMS = 1 << 23


def _terms(logp, h):
    loss = 0
    if h is not None:
        loss = loss + h.sum()
    if logp is not None:
        loss = loss + logp.sum()
    return loss


_REFERENCES = {
    "entropy": lambda x, y: (None, reference.entropy_ref(x)),
    "logprobs_and_entropy": reference.logprobs_and_entropy_ref,
    "top_p_entropy": lambda x, y: (None, reference.top_p_entropy_ref(x, TOP_P)),
    "min_p_logprobs": lambda x, y: (reference.min_p_logprobs_ref(x, y, MIN_P), None),
    "token_stats": lambda x, y: (lambda s: (s.logp, s.entropy))(reference.token_stats_ref(x, y)),
}


def _reference(case: Case, logits, labels, grad_terms: Optional[tuple]):
    """``(logp, H, grad)`` in float64, row chunk by row chunk (rows are independent);
    ``grad`` is d(sum of ``grad_terms``)/d logits, None when ``grad_terms`` is None."""
    step = max(1, _REF_ELEMS // case.v)
    logps, hs, grads = [], [], []
    for i in range(0, case.n, step):
        x = logits[i:i + step].double().requires_grad_(grad_terms is not None)
        with torch.set_grad_enabled(grad_terms is not None):
            logp, h = _REFERENCES[case.op](x, labels[i:i + step])
            if grad_terms is not None:
                loss = _terms(logp if "logp" in grad_terms else None, h if "H" in grad_terms else None)
                grads.append(torch.autograd.grad(loss, x)[0])
        if h is not None:
            hs.append(h.detach())
        if logp is not None:
            logps.append(logp.detach())
    return (torch.cat(logps) if logps else None, torch.cat(hs) if hs else None,
            torch.cat(grads) if grads else None)


def _stats_reference(case: Case, logits, labels):
    """token_stats' other six statistics in float64 (lse, max_logp, collision, varentropy,
    self_certainty, entropy_drift: eager_token_stats' order), row chunk by row chunk."""
    step = max(1, _REF_ELEMS // case.v)
    parts = []
    for i in range(0, case.n, step):
        s = reference.token_stats_ref(logits[i:i + step].double())
        parts.append((s.lse, s.max_logp, s.collision, s.varentropy, s.self_certainty, s.entropy_drift))
    return [torch.cat(column) for column in zip(*parts)]


class Step(NamedTuple):
    """``run()`` is timed and returns ``(logp, H, grad, others)`` (``others``: a forward's further
    outputs, token_stats' six statistics); ``setup()``, when given, runs untimed before each
    ``run()`` (the forward of a ``bwd`` row)."""
    run: Callable
    setup: Optional[Callable] = None

    def __call__(self):
        if self.setup is not None:
            self.setup()
        return self.run()


def make_step(fn, case: Case, logits, labels) -> Step:
    if case.direction == "fwd":
        def fwd():
            with torch.no_grad():
                logp, h, *others = fn(logits, labels)
            return logp, h, None, others
        return Step(fwd)
    x = logits.detach().clone().requires_grad_(True)
    if case.direction == "fwd+bwd":
        def fwd_bwd():
            logp, h, *_ = fn(x, labels)
            return logp, h, torch.autograd.grad(_terms(logp, h), x)[0], ()
        return Step(fwd_bwd)
    # bwd: a fresh forward graph before each timed backward (no retain_graph: torch.compile's
    # backward donates its buffers and refuses to run twice on one graph).
    graph = {}

    def forward():
        graph["logp"], graph["h"], *_ = fn(x, labels)

    def bwd():
        logp, h = graph.pop("logp"), graph.pop("h")
        return logp, h, torch.autograd.grad(_terms(logp, h), x)[0], ()
    return Step(bwd, forward)


def _failed(case, name, note) -> Row:
    return Row(case.op, case.direction, case.shape, case.dtype_name, name, note=note)


def run_impl(name: str, case: Case, logits, labels, refs: Dict, repeats: int) -> Optional[Row]:
    """The row of one implementation, with a note when it was skipped or raised (``failed: ...``);
    None when not applicable. KeyboardInterrupt still stops the run."""
    try:
        step = make_step(baselines.build(name, case), case, logits, labels)
        logp, h, grad, others = step()
    except baselines.NotApplicable:
        return None
    except (baselines.Skip, eo.BackendUnavailableError, eo.NoKernelError) as e:
        return _failed(case, name, f"skipped: {e}")
    except torch.cuda.OutOfMemoryError:
        return _failed(case, name, "skipped: out of memory")
    except Exception as e:  # a kernel, a compiler (Inductor with no C++ compiler): that row only
        return _failed(case, name, failure_note(e))
    grad_terms = None
    if case.direction != "fwd":
        grad_terms = tuple(t for t, v in (("logp", logp), ("H", h)) if v is not None)
    if grad_terms not in refs:
        refs[grad_terms] = _reference(case, logits, labels, grad_terms)
    ref_logp, ref_h, ref_grad = refs[grad_terms]
    row = Row(case.op, case.direction, case.shape, case.dtype_name, name,
              err_h=max_err(h, ref_h), err_logp=max_err(logp, ref_logp), err_grad=max_err(grad, ref_grad),
              rel_grad=rel_err(grad, ref_grad))
    if h is None:
        row.note = "log-probs only (no entropy)"
    if case.op == "token_stats" and others:
        if "others" not in refs:
            refs["others"] = _stats_reference(case, logits, labels)
        err = max(max_err(v, r) for v, r in zip(others, refs["others"]))
        row.note = f"6 other stats: err {err:.1e}"
    del logp, h, grad, others
    try:
        row.time_ms = timing.median_ms(step.run, case.device, repeats=repeats, warmup=0, setup=step.setup)
    except torch.cuda.OutOfMemoryError:
        row.note = "skipped: out of memory"
    except Exception as e:
        row.note = failure_note(e)
    return row


def measure_case(case: Case, impls: List[str], repeats: int, bandwidth_gbs: float) -> List[Row]:
    """One row per implementation; speed-up vs eager filled in when eager ran."""
    logits, labels = make_inputs(case)
    refs: Dict = {}
    rows = [run_impl(name, case, logits, labels, refs, repeats) for name in impls]
    rows = [r for r in rows if r is not None]
    eager_ms = next((r.time_ms for r in rows if r.impl == "eager"), None)
    for r in rows:
        if r.time_ms is None:
            continue
        seconds = r.time_ms * 1e-3
        r.gb_s = case.bytes_moved() / seconds / 1e9
        r.pct_bw = 100 * r.gb_s / bandwidth_gbs
        r.gexp_s = case.exps() / seconds / 1e9
        r.speedup = eager_ms / r.time_ms if eager_ms else None
    if case.device == "cuda":
        torch.cuda.empty_cache()
    return rows
