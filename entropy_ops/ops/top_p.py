"""``top_p_entropy`` and ``top_p_mask``: the nucleus of SIREN's top-p entropy (SPEC §3.1).

Order the tokens by (p descending, index ascending); the exclusive nucleus is the longest prefix
whose cumulative mass is ``< top_p`` (the crossing token left out, at least one token); the
inclusive nucleus (what samplers keep) adds the crossing token; ``top_p = 1`` keeps everything.
Kernels find the cut by a threshold search over the row, never a sort (``backends/kernel.py``
states the rule exactly). With ``K`` the kept set and ``q = softmax`` over ``K``:

    H_K = -sum_{j in K} q_j log q_j,   dH_K/dz_j = -q_j (log q_j + H_K) on K, 0 elsewhere

(the nucleus is held fixed in backward, as SIREN's masked entropy does).
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _backends, _validate, _validate_vocab
from ..parallel import vocab_top_p as _vocab_parallel
from ._rows import Rows, check_values, full_empty, leading_empty


def _row_inputs(logits, temperature, mask):
    r = Rows(logits)
    t, m = r.temperature(temperature), r.mask(mask)
    check_values(r.x, None, t, -100, m)
    return r, t, m


@torch.library.custom_op("entropy_ops::top_p_entropy", mutates_args=())
def _top_p_entropy_op(logits: Tensor, temperature: Optional[Tensor], temperature_scalar: float,
                      top_p: float, mask: Optional[Tensor], backend: str
                      ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(entropy, row_max, cut_e, cut_index, log_norm)``, each of the leading shape."""
    r, t, m = _row_inputs(logits, temperature, mask)
    out = _backends.get_kernel(backend, "top_p_entropy").fwd(r.x, t, temperature_scalar, top_p, m)
    return tuple(r.out(v) for v in out)


@_top_p_entropy_op.register_fake
def _(logits, temperature, temperature_scalar, top_p, mask, backend):
    cut_index = logits.new_empty(logits.shape[:-1], dtype=torch.int32)
    return (leading_empty(logits), leading_empty(logits), leading_empty(logits), cut_index,
            leading_empty(logits))


@torch.library.custom_op("entropy_ops::top_p_entropy_bwd", mutates_args=())
def _top_p_entropy_bwd_op(logits: Tensor, temperature: Optional[Tensor], temperature_scalar: float,
                          mask: Optional[Tensor], entropy: Tensor, row_max: Tensor, cut_e: Tensor,
                          cut_index: Tensor, log_norm: Tensor, grad_entropy: Tensor,
                          backend: str) -> Tensor:
    r, t, m = _row_inputs(logits, temperature, mask)
    grad, grad_rows = full_empty(logits)
    saved = (r.per_row(v) for v in (entropy, row_max, cut_e, cut_index, log_norm))
    _backends.get_kernel(backend, "top_p_entropy").bwd(
        r.x, t, temperature_scalar, m, *saved, r.per_row(grad_entropy, entropy.dtype), grad_rows)
    return grad


@_top_p_entropy_bwd_op.register_fake
def _(logits, temperature, temperature_scalar, mask, entropy, row_max, cut_e, cut_index, log_norm,
      grad_entropy, backend):
    return full_empty(logits)[0]


def _no_double_backward(ctx, *grads):
    raise RuntimeError("entropy_ops: double backward through top_p_entropy is not supported")


_top_p_entropy_bwd_op.register_autograd(_no_double_backward, setup_context=lambda ctx, inputs, output: None)


def _setup(ctx, inputs, output):
    logits, temperature, temperature_scalar, top_p, mask, backend = inputs
    ctx.save_for_backward(logits, temperature, mask, *output)
    ctx.temperature_scalar, ctx.backend = temperature_scalar, backend
    ctx.mark_non_differentiable(*output[1:])


def _backward(ctx, grad_entropy, *_):
    logits, temperature, mask, *saved = ctx.saved_tensors
    grad = None
    if grad_entropy is not None:
        grad = _top_p_entropy_bwd_op(logits, temperature, ctx.temperature_scalar, mask, *saved,
                                     grad_entropy, ctx.backend)
    return grad, None, None, None, None, None


_top_p_entropy_op.register_autograd(_backward, setup_context=_setup)


@torch.library.custom_op("entropy_ops::top_p_mask", mutates_args=())
def _top_p_mask_op(logits: Tensor, temperature: Optional[Tensor], temperature_scalar: float,
                   top_p: float, inclusive: bool, mask: Optional[Tensor], backend: str) -> Tensor:
    r, t, m = _row_inputs(logits, temperature, mask)
    out, out_rows = full_empty(logits, torch.bool)
    _backends.get_kernel(backend, "top_p_mask").mask(r.x, t, temperature_scalar, top_p, inclusive, m, out_rows)
    return out.contiguous()  # a mask is contiguous, whatever the logits' layout (on a grid: a gather)


@_top_p_mask_op.register_fake
def _(logits, temperature, temperature_scalar, top_p, inclusive, mask, backend):
    return torch.empty(logits.shape, dtype=torch.bool, device=logits.device)


def top_p_entropy(logits: Tensor, top_p: float = 0.8, temperature=1.0, *,
                  mask: Optional[Tensor] = None, process_group=None,
                  vocab_start: Optional[int] = None) -> Tensor:
    """Entropy of the renormalized top-p nucleus of ``softmax(logits / temperature)`` (SIREN).

    Args:
        logits: ``[..., V]`` float32, bfloat16, float16 or float64; last dim contiguous.
        top_p: a Python float in (0, 1]. The nucleus is the longest prefix of the tokens ordered by
            (p descending, index ascending) whose cumulative mass is ``< top_p`` (the crossing token
            is excluded; at least one token is kept); ``top_p = 1`` keeps the whole vocabulary.
            Equal probabilities are cut by index, which never changes the entropy value.
        temperature: a Python float > 0 (a compile-time constant under ``torch.compile``), a 0-d
            tensor, or a tensor of the leading shape ``[...]``. Detached. Applied before the cut.
        mask: optional bool ``[...]``; rows where it is False are not read, give 0 and a zero
            gradient.
        process_group, vocab_start: vocab parallel, as in :func:`entropy`: the nucleus is the one
            of the full row (global max, global index order), found by a distributed radix search
            in torch ops on the local shard (``parallel/vocab_top_p.py``).

    Returns:
        ``H_K [...]`` float32 (float64 for float64 logits): ``-sum_{j in K} q_j log q_j`` with
        ``q = softmax`` over the nucleus ``K``. Differentiable with ``K`` held fixed: kept logits
        get ``-q_j (log q_j + H_K) / T`` times the upstream gradient, the others exactly 0. Rows
        that are all ``-inf`` or hold NaN/+inf give NaN.
    """
    leading = _validate.logits(logits, sharded=process_group is not None)
    _validate.reverse_mode_only("top_p_entropy", logits)
    top_p = _validate.probability("top_p", top_p, open_low=True)
    t, t_scalar = _validate.temperature(temperature, logits, leading)
    mask = _validate.row_mask(mask, logits, leading)
    if process_group is not None or vocab_start is not None:
        group, vocab_start = _validate_vocab.vocab_parallel(process_group, vocab_start)
        return _vocab_parallel.top_p_entropy(logits, top_p, t, t_scalar, mask, group, vocab_start)
    backend = _backends.resolve("top_p_entropy", logits.device, logits.dtype)
    return _top_p_entropy_op(logits, t, t_scalar, top_p, mask, backend)[0]


def top_p_mask(logits: Tensor, top_p: float, temperature=1.0, inclusive: bool = True, *,
               mask: Optional[Tensor] = None, process_group=None,
               vocab_start: Optional[int] = None) -> Tensor:
    """The top-p nucleus of ``softmax(logits / temperature)`` as a bool ``[..., V]`` mask.

    Args:
        logits, top_p, temperature, mask, process_group, vocab_start: as in :func:`top_p_entropy`
            (with a group, the result is this rank's shard ``[..., V_r]`` of the full-row mask).
        inclusive: True (default) also keeps the token whose mass crosses ``top_p``, as samplers
            do (the smallest prefix with mass ``>= top_p``); False gives exactly the set that
            :func:`top_p_entropy` uses (mass ``< top_p``, at least one token).

    Returns:
        bool ``[..., V]``, True for kept tokens. All False in masked rows and in rows that are all
        ``-inf`` or hold NaN/+inf. Not differentiable.
    """
    leading = _validate.logits(logits, sharded=process_group is not None)
    top_p = _validate.probability("top_p", top_p, open_low=True)
    t, t_scalar = _validate.temperature(temperature, logits, leading)
    inclusive = _validate.flag("inclusive", inclusive)
    mask = _validate.row_mask(mask, logits, leading)
    if process_group is not None or vocab_start is not None:
        group, vocab_start = _validate_vocab.vocab_parallel(process_group, vocab_start)
        return _vocab_parallel.top_p_mask(logits, top_p, t, t_scalar, inclusive, mask, group, vocab_start)
    backend = _backends.resolve("top_p_mask", logits.device, logits.dtype)
    return _top_p_mask_op(logits, t, t_scalar, top_p, inclusive, mask, backend)
