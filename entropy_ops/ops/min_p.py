"""``min_p_logprobs``: log-probabilities under Lp-Reg's min-p proxy distribution (SPEC §3.1).

The proxy keeps the tokens with ``p_j >= min_p * max_k p_k`` and renormalizes; with ``K`` that set,
``S_K = sum_{j in K} exp(z_j)``:

    logp_y = z_y - log S_K  (y in K),   -inf  (y filtered out)
    dlogp_y/dz_j = 1[j=y] - q_j on K, 0 elsewhere (the kept set is held fixed)
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _backends, _validate, _validate_vocab
from ..parallel import vocab_min_p as _vocab_parallel
from ._rows import Rows, check_values, full_empty, leading_empty


def _row_inputs(logits, labels, temperature, ignore_index, mask):
    r = Rows(logits)
    y, t, m = r.per_row(labels), r.temperature(temperature), r.mask(mask)
    check_values(r.x, y, t, ignore_index, m)
    return r, y, t, m


@torch.library.custom_op("entropy_ops::min_p_logprobs", mutates_args=())
def _min_p_logprobs_op(logits: Tensor, labels: Tensor, temperature: Optional[Tensor],
                       temperature_scalar: float, ignore_index: int, min_p: float,
                       mask: Optional[Tensor], backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    """``(logp, row_max, log_norm)``, each of the leading shape."""
    r, y, t, m = _row_inputs(logits, labels, temperature, ignore_index, mask)
    out = _backends.get_kernel(backend, "min_p_logprobs").fwd(r.x, y, t, temperature_scalar, ignore_index, min_p, m)
    return tuple(r.out(v) for v in out)


@_min_p_logprobs_op.register_fake
def _(logits, labels, temperature, temperature_scalar, ignore_index, min_p, mask, backend):
    return leading_empty(logits), leading_empty(logits), leading_empty(logits)


@torch.library.custom_op("entropy_ops::min_p_logprobs_bwd", mutates_args=())
def _min_p_logprobs_bwd_op(logits: Tensor, labels: Tensor, temperature: Optional[Tensor],
                           temperature_scalar: float, ignore_index: int, min_p: float,
                           mask: Optional[Tensor], row_max: Tensor, log_norm: Tensor,
                           grad_logp: Tensor, backend: str) -> Tensor:
    r, y, t, m = _row_inputs(logits, labels, temperature, ignore_index, mask)
    grad, grad_rows = full_empty(logits)
    _backends.get_kernel(backend, "min_p_logprobs").bwd(
        r.x, y, t, temperature_scalar, ignore_index, min_p, m, r.per_row(row_max), r.per_row(log_norm),
        r.per_row(grad_logp, log_norm.dtype), grad_rows)
    return grad


@_min_p_logprobs_bwd_op.register_fake
def _(logits, labels, temperature, temperature_scalar, ignore_index, min_p, mask, row_max, log_norm,
      grad_logp, backend):
    return full_empty(logits)[0]


def _no_double_backward(ctx, *grads):
    raise RuntimeError("entropy_ops: double backward through min_p_logprobs is not supported")


_min_p_logprobs_bwd_op.register_autograd(_no_double_backward, setup_context=lambda ctx, inputs, output: None)


def _setup(ctx, inputs, output):
    logits, labels, temperature, temperature_scalar, ignore_index, min_p, mask, backend = inputs
    _, row_max, log_norm = output
    ctx.save_for_backward(logits, labels, temperature, mask, row_max, log_norm)
    ctx.args = (temperature_scalar, ignore_index, min_p, backend)
    ctx.mark_non_differentiable(row_max, log_norm)


def _backward(ctx, grad_logp, *_):
    logits, labels, temperature, mask, row_max, log_norm = ctx.saved_tensors
    temperature_scalar, ignore_index, min_p, backend = ctx.args
    grad = None
    if grad_logp is not None:
        grad = _min_p_logprobs_bwd_op(logits, labels, temperature, temperature_scalar, ignore_index,
                                      min_p, mask, row_max, log_norm, grad_logp, backend)
    return grad, None, None, None, None, None, None, None


_min_p_logprobs_op.register_autograd(_backward, setup_context=_setup)


def min_p_logprobs(logits: Tensor, labels: Tensor, min_p: float = 0.02, temperature=1.0,
                   ignore_index: int = -100, *, mask: Optional[Tensor] = None, process_group=None,
                   vocab_start: Optional[int] = None) -> Tensor:
    """Log-probability of ``labels`` under the min-p proxy of ``softmax(logits / temperature)``.

    Args:
        logits: ``[..., V]`` float32, bfloat16, float16 or float64; last dim contiguous.
        labels: ``[...]`` int64 or int32; ``ignore_index`` gives 0; labels outside ``[0, V)`` raise
            on CPU tensors (on CUDA: checked under ``ENTROPY_OPS_CHECK=1``, else NaN in that row).
        min_p: a Python float in [0, 1]: tokens with ``p_j >= min_p * max p`` are kept
            (``min_p = 0`` keeps every token: plain log-probs; ``min_p = 1`` keeps the argmax ties).
        temperature: a Python float > 0, a 0-d tensor, or a tensor of the leading shape. Detached.
        ignore_index: the label value that marks rows without a target.
        mask: optional bool ``[...]``; rows where it is False are not read and give 0.
        process_group, vocab_start: vocab parallel, as in :func:`entropy`; the kept set is decided
            by the global max (computed with torch ops on the local shard, ``parallel/vocab_min_p.py``).

    Returns:
        ``logp [...]`` float32 (float64 for float64 logits): ``z_y - log sum_{j kept} exp z_j`` for a
        kept label, ``-inf`` for a filtered one. Differentiable with the kept set held fixed:
        ``1[j=y] - q_j`` on kept tokens, 0 elsewhere, and a zero row for filtered or ignored labels.
        Rows that are all ``-inf`` or hold NaN/+inf give NaN.
    """
    leading = _validate.logits(logits, sharded=process_group is not None)
    _validate.reverse_mode_only("min_p_logprobs", logits)
    labels = _validate.labels(labels, logits, leading)
    min_p = _validate.probability("min_p", min_p, open_low=False)
    t, t_scalar = _validate.temperature(temperature, logits, leading)
    ignore_index = _validate.integer("ignore_index", ignore_index)
    mask = _validate.row_mask(mask, logits, leading)
    if process_group is not None or vocab_start is not None:
        group, vocab_start = _validate_vocab.vocab_parallel(process_group, vocab_start)
        return _vocab_parallel.min_p_logprobs(logits, labels, min_p, t, t_scalar, ignore_index, mask,
                                              group, vocab_start)
    backend = _backends.resolve("min_p_logprobs", logits.device, logits.dtype)
    return _min_p_logprobs_op(logits, labels, t, t_scalar, ignore_index, min_p, mask, backend)[0]
