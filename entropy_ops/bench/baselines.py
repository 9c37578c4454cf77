"""Every implementation behind one calling convention: ``fn(logits [N, V], labels [N]) -> (logp, H,
*other outputs)`` (``logp`` None for ops without labels; ``H`` None for log-prob-only ops and
baselines).

Baselines are the formulas trainers run today; backends go through ``eo.use_backend``.
``build(name, case)`` raises ``Skip`` with the reason when an implementation cannot run here.
"""
import importlib.util
from typing import Callable, Dict, List, Tuple

import torch

import entropy_ops as eo

from .eager import EAGER, MIN_P, TOP_P, eager_top_p_entropy_topk

# verl's entropy_from_logits_with_chunking uses 2048 rows; a fixed element budget instead keeps
# the chunk's fp32 temporaries at 64 MiB whatever V is (2048 rows of a 262144 vocab would be 2 GiB).
CHUNK_ELEMS = 1 << 24

BASELINES = ("eager", "compile", "chunked", "topk", "trl", "liger", "flash_attn")
BACKENDS = ("torch", "cpu", "triton", "cuda")
_OPTIONAL = {"trl": "trl", "liger": "liger_kernel", "flash_attn": "flash_attn"}
_LOGP_ONLY = ("liger", "flash_attn")


class Skip(Exception):
    """The implementation cannot run this case here; the message says why."""


class NotApplicable(Exception):
    """The implementation has no such op (a log-prob-only kernel asked for entropy): no row."""


def _chunked(eager):
    def chunked(logits, labels=None):
        step = max(1, CHUNK_ELEMS // logits.shape[-1])
        parts = [eager(logits[i:i + step], None if labels is None else labels[i:i + step])
                 for i in range(0, logits.shape[0], step)]
        return tuple(None if out[0] is None else torch.cat(list(out)) for out in zip(*parts))
    return chunked


def _compiled(eager):
    # A fresh dynamo cache per case: shapes are static and no case hits the recompile limit.
    torch._dynamo.reset()
    return torch.compile(eager, dynamic=False)


_OURS = {
    "entropy": lambda x, y: (None, eo.entropy(x)),
    "logprobs_and_entropy": eo.logprobs_and_entropy,
    "top_p_entropy": lambda x, y: (None, eo.top_p_entropy(x, TOP_P)),
    "min_p_logprobs": lambda x, y: (eo.min_p_logprobs(x, y, MIN_P), None),
    # eager_token_stats' order: logp, entropy, then lse and the five others (TokenStats' order)
    "token_stats": lambda x, y: (lambda s: (s.logp, s.entropy, s.lse, *s[3:]))(eo.token_stats(x, y)),
}


def _backend(name, op):
    def run(logits, labels=None):
        with eo.use_backend(name):
            return _OURS[op](logits, labels)
    return run


def _trl(op):
    from trl.trainer.utils import entropy_from_logits, selective_log_softmax

    def run(logits, labels=None):
        logp = None if op == "entropy" else selective_log_softmax(logits, labels)
        return logp, entropy_from_logits(logits)
    return run


def _liger(op):
    from liger_kernel.transformers.functional import liger_cross_entropy
    return lambda logits, labels: (-liger_cross_entropy(logits, labels, reduction="none"), None)


def _flash_attn(op):
    from flash_attn.ops.triton.cross_entropy import cross_entropy_loss
    return lambda logits, labels: (-cross_entropy_loss(logits, labels)[0], None)


_OPTIONAL_BUILD = {"trl": _trl, "liger": _liger, "flash_attn": _flash_attn}


def default_impls(device: str) -> Tuple[List[str], List[str]]:
    """``(names, optional baselines left out because not installed)``. Eager comes first (the
    speed-up column divides by it), then compile (the summary needs it)."""
    names = ["eager", "compile", "chunked", "topk", "trl", "torch"]
    names += ["triton", "cuda", "liger", "flash_attn"] if device == "cuda" else ["cpu"]
    missing = [n for n in names if n in _OPTIONAL and importlib.util.find_spec(_OPTIONAL[n]) is None]
    return [n for n in names if n not in missing], missing


def build(name: str, case) -> Callable:
    """``fn(logits, labels) -> (logp | None, H | None)`` for ``case``; raise ``Skip`` (a row with
    the reason) or ``NotApplicable`` (no row)."""
    if name in BACKENDS:
        return _backend(name, case.op)
    if name == "eager":
        return EAGER[case.op]
    if name == "chunked":
        return _chunked(EAGER[case.op])
    if name == "compile":
        return _compiled(EAGER[case.op])
    if name == "topk":  # SIREN's top-k + sort way: top_p_entropy only
        if case.op != "top_p_entropy":
            raise NotApplicable(name)
        return eager_top_p_entropy_topk
    if name in _OPTIONAL:
        if importlib.util.find_spec(_OPTIONAL[name]) is None:
            raise Skip(f"{_OPTIONAL[name]} is not installed")
        if name in _LOGP_ONLY and case.op != "logprobs_and_entropy":
            raise NotApplicable(name)
        if case.op not in ("entropy", "logprobs_and_entropy"):
            raise NotApplicable(name)
        if name in _LOGP_ONLY and case.device != "cuda":
            raise Skip(f"{name} runs on CUDA tensors only")
        try:
            return _OPTIONAL_BUILD[name](case.op)
        except ImportError as e:
            raise Skip(f"{name} failed to import: {e}") from None
    raise ValueError(f"--impls: unknown implementation {name!r}; choose from {', '.join(known())}")


def known() -> Dict[str, str]:
    return {**{b: "baseline" for b in BASELINES}, **{b: "backend" for b in BACKENDS}}
