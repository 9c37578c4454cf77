"""``entropy`` and ``logprobs_and_entropy``: one read of the logits per row (SPEC §2, §3.1).

    z = logits / T,  lse = log sum_j exp z_j,  p = softmax z
    H = lse - sum_j p_j z_j,  logp_y = z_y - lse
    dH/dz_j = -p_j (log p_j + H),  dlogp_y/dz_j = 1[j=y] - p_j,  grad = g_z / T

Both public functions call one custom op each; they share one backward op per mode
(``entropy_ops::entropy_bwd`` out of place, ``entropy_ops::entropy_bwd_`` writing the gradient into
the logits' own buffer). The forward saves each row's ``(row_max, log_norm)`` with
``lse = row_max / T + log_norm`` (kernel.py's "Row state"): the backward's ``log p`` keeps every
digit at any temperature, where a rounded float32 ``lse`` would put its rounding (up to 1.9e-6 for
``|lse| < 64``) times ``1 / T`` into the gradient.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _backends, _validate, _validate_vocab
from ..backends.kernel import acc_dtype
from ..parallel import vocab as _vocab_parallel
from ._rows import Rows, check_values, collapses, distinct_rows, full_empty, leading_empty


def _forward(logits, labels, temperature, temperature_scalar, ignore_index, mask, backend):
    r = Rows(logits)
    y, t, m = r.per_row(labels), r.temperature(temperature), r.mask(mask)
    check_values(r.x, y, t, ignore_index, m)
    kernel = _backends.get_kernel(backend, "entropy")
    row_max, log_norm, h, logp = kernel.fwd(r.x, y, t, temperature_scalar, ignore_index, m)
    return r.out(row_max), r.out(log_norm), r.out(h), None if logp is None else r.out(logp)


# ---- forward ops ---------------------------------------------------------------------------------

@torch.library.custom_op("entropy_ops::entropy", mutates_args=())
def _entropy_op(logits: Tensor, temperature: Optional[Tensor], temperature_scalar: float,
                mask: Optional[Tensor], inplace_backward: bool,
                backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    """``(entropy, row_max, log_norm)``, each of the leading shape."""
    row_max, log_norm, h, _ = _forward(logits, None, temperature, temperature_scalar, -100, mask, backend)
    return h, row_max, log_norm


@_entropy_op.register_fake
def _(logits, temperature, temperature_scalar, mask, inplace_backward, backend):
    return leading_empty(logits), leading_empty(logits), leading_empty(logits)


@torch.library.custom_op("entropy_ops::logprobs_and_entropy", mutates_args=())
def _logprobs_and_entropy_op(logits: Tensor, labels: Tensor, temperature: Optional[Tensor],
                             temperature_scalar: float, ignore_index: int, mask: Optional[Tensor],
                             inplace_backward: bool, backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(logp, entropy, row_max, log_norm)``, each of the leading shape."""
    row_max, log_norm, h, logp = _forward(logits, labels, temperature, temperature_scalar, ignore_index,
                                          mask, backend)
    return logp, h, row_max, log_norm


@_logprobs_and_entropy_op.register_fake
def _(logits, labels, temperature, temperature_scalar, ignore_index, mask, inplace_backward, backend):
    return tuple(leading_empty(logits) for _ in range(4))


# ---- backward ops --------------------------------------------------------------------------------

def _backward_into(out_rows, logits, labels, temperature, temperature_scalar, ignore_index, mask,
                   row_max, log_norm, entropy, grad_entropy, grad_logp, backend):
    """The gradient into ``out_rows``, row for row with ``Rows(logits).x``."""
    r = Rows(logits)
    acc = acc_dtype(logits.dtype)
    kernel = _backends.get_kernel(backend, "entropy")
    kernel.bwd(
        r.x, r.per_row(labels), r.temperature(temperature), temperature_scalar, ignore_index,
        r.mask(mask), r.per_row(row_max), r.per_row(log_norm), r.per_row(entropy),
        r.per_row(grad_entropy, acc), r.per_row(grad_logp, acc), out_rows,
    )


@torch.library.custom_op("entropy_ops::entropy_bwd", mutates_args=())
def _entropy_bwd_op(logits: Tensor, labels: Optional[Tensor], temperature: Optional[Tensor],
                    temperature_scalar: float, ignore_index: int, mask: Optional[Tensor],
                    row_max: Tensor, log_norm: Tensor, entropy: Tensor, grad_entropy: Optional[Tensor],
                    grad_logp: Optional[Tensor], backend: str) -> Tensor:
    grad, grad_rows = full_empty(logits)
    _backward_into(grad_rows, logits, labels, temperature, temperature_scalar, ignore_index, mask,
                   row_max, log_norm, entropy, grad_entropy, grad_logp, backend)
    return grad


@_entropy_bwd_op.register_fake
def _(logits, labels, temperature, temperature_scalar, ignore_index, mask, row_max, log_norm, entropy,
      grad_entropy, grad_logp, backend):
    return full_empty(logits)[0]  # the real op's strides


@torch.library.custom_op("entropy_ops::entropy_bwd_", mutates_args=("logits",))
def _entropy_bwd_inplace_op(logits: Tensor, labels: Optional[Tensor], temperature: Optional[Tensor],
                            temperature_scalar: float, ignore_index: int, mask: Optional[Tensor],
                            row_max: Tensor, log_norm: Tensor, entropy: Tensor,
                            grad_entropy: Optional[Tensor], grad_logp: Optional[Tensor],
                            backend: str) -> None:
    args = (logits, labels, temperature, temperature_scalar, ignore_index, mask, row_max, log_norm,
            entropy, grad_entropy, grad_logp, backend)
    if collapses(logits):  # its own rows: written over as they are read
        _backward_into(logits.view(-1, logits.shape[-1]), *args)
        return
    r = Rows(logits)
    if r.on_grid:
        # The grid's rows, written over as they are read. The kernel also writes the rows between
        # (masked rows get zeros), which are not the op's: they are saved first and put back, in
        # stream order. That costs M - N <= N / 4 rows (one per sequence for ``logits[:, :-1]``),
        # not the [N, V] buffer of computing aside.
        between = r.between()
        saved = r.x.index_select(0, between)
        _backward_into(r.x, *args)
        r.x.index_copy_(0, between, saved)
    else:  # rows far apart, read through a copy: compute aside, copy back
        logits.copy_(_entropy_bwd_op(*args))


def _no_double_backward(ctx, *grads):
    raise RuntimeError("entropy_ops: double backward through entropy ops is not supported")


def _no_double_backward_setup(ctx, inputs, output):
    pass


_entropy_bwd_op.register_autograd(_no_double_backward, setup_context=_no_double_backward_setup)


def _grad_logits(ctx, grad_entropy, grad_logp):
    if grad_entropy is None and grad_logp is None:
        return None
    logits, labels, temperature, mask, row_max, log_norm, entropy = ctx.saved_tensors
    args = (labels, temperature, ctx.temperature_scalar, ctx.ignore_index, mask, row_max, log_norm,
            entropy, grad_entropy, grad_logp, ctx.backend)
    # In place only in a plain backward: under create_graph the returned buffer would carry the
    # logits' own history as its graph (a wrong double backward instead of the error below).
    if ctx.inplace_backward and not torch.is_grad_enabled() and distinct_rows(logits):
        _entropy_bwd_inplace_op(logits, *args)
        return logits
    return _entropy_bwd_op(logits, *args)


# ---- autograd ------------------------------------------------------------------------------------

def _setup_entropy(ctx, inputs, output):
    logits, temperature, temperature_scalar, mask, inplace_backward, backend = inputs
    h, row_max, log_norm = output
    ctx.save_for_backward(logits, None, temperature, mask, row_max, log_norm, h)
    ctx.temperature_scalar, ctx.ignore_index = temperature_scalar, -100
    ctx.inplace_backward, ctx.backend = inplace_backward, backend
    ctx.mark_non_differentiable(row_max, log_norm)


def _backward_entropy(ctx, grad_h, grad_row_max, grad_log_norm):
    return _grad_logits(ctx, grad_h, None), None, None, None, None, None


def _setup_logprobs_and_entropy(ctx, inputs, output):
    logits, labels, temperature, temperature_scalar, ignore_index, mask, inplace_backward, backend = inputs
    logp, h, row_max, log_norm = output
    ctx.save_for_backward(logits, labels, temperature, mask, row_max, log_norm, h)
    ctx.temperature_scalar, ctx.ignore_index = temperature_scalar, ignore_index
    ctx.inplace_backward, ctx.backend = inplace_backward, backend
    ctx.mark_non_differentiable(row_max, log_norm)


def _backward_logprobs_and_entropy(ctx, grad_logp, grad_h, grad_row_max, grad_log_norm):
    return _grad_logits(ctx, grad_h, grad_logp), None, None, None, None, None, None, None


_entropy_op.register_autograd(_backward_entropy, setup_context=_setup_entropy)
_logprobs_and_entropy_op.register_autograd(_backward_logprobs_and_entropy,
                                           setup_context=_setup_logprobs_and_entropy)


# ---- public API ----------------------------------------------------------------------------------

def entropy(logits: Tensor, temperature=1.0, *, mask: Optional[Tensor] = None,
            inplace_backward: bool = False, process_group=None,
            vocab_start: Optional[int] = None) -> Tensor:
    """Entropy of ``softmax(logits / temperature)`` over the last dimension.

    Args:
        logits: ``[..., V]`` float32, bfloat16, float16 or float64; last dim contiguous.
        temperature: a Python float > 0 (a compile-time constant under ``torch.compile``: each new
            value recompiles), a 0-d tensor, or a tensor of the leading shape ``[...]`` (one value
            per row). Detached: no gradient flows to it.
        mask: optional bool ``[...]``; rows where it is False are not read, give 0 and get a zero
            gradient.
        inplace_backward: write the gradient into ``logits``' own buffer (saves one ``[N, V]``
            allocation; ``logits`` must not be needed afterwards). Not with ``process_group``.
            Written out of place instead where rows share memory (an expanded or unfolded view)
            and under ``create_graph=True``. On a view whose rows sit on one grid
            (``logits[:, :-1]``, a transpose) it is written in place too; the grid rows between
            (one per sequence for ``logits[:, :-1]``) are saved first and put back. Rows far apart
            are computed aside and copied there: no allocation is saved.
        process_group: vocab parallel (SPEC §3.3): ``logits`` is this rank's shard ``[..., V_r]`` of
            the vocabulary (Megatron layout) and every rank gets the unsharded result; all ranks
            call with the same leading shape, temperature and mask. See ``parallel/vocab.py``.
        vocab_start: with ``process_group``, the global index of this shard's first entry; needed
            when the shards are uneven (default ``rank * V_r``).

    Returns:
        ``H [...]`` float32 (float64 for float64 logits):
        ``H = lse - sum_j p_j z_j`` with ``z = logits / T``, ``p = softmax(z)``.
    """
    leading = _validate.logits(logits, sharded=process_group is not None)
    _validate.reverse_mode_only("entropy", logits)
    t, t_scalar = _validate.temperature(temperature, logits, leading)
    mask = _validate.row_mask(mask, logits, leading)
    inplace_backward = _validate.flag("inplace_backward", inplace_backward)
    if process_group is not None or vocab_start is not None:
        group, vocab_start = _validate_vocab.vocab_parallel(process_group, vocab_start, inplace_backward)
        return _vocab_parallel.entropy(logits, t, t_scalar, mask, group, vocab_start)
    backend = _backends.resolve("entropy", logits.device, logits.dtype)
    h, _, _ = _entropy_op(logits, t, t_scalar, mask, inplace_backward, backend)
    return h


def logprobs_and_entropy(logits: Tensor, labels: Tensor, temperature=1.0, ignore_index: int = -100, *,
                         mask: Optional[Tensor] = None, inplace_backward: bool = False,
                         process_group=None, vocab_start: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """Log-probability of ``labels`` and entropy, in the same single pass over the logits.

    Args:
        logits: ``[..., V]`` float32, bfloat16, float16 or float64; last dim contiguous.
        labels: ``[...]`` int64 or int32. A label equal to ``ignore_index`` gives ``logp = 0`` and
            no gradient from that row's logp (its entropy is still computed). Labels outside
            ``[0, V)`` raise on CPU tensors; on CUDA they are checked only under
            ``ENTROPY_OPS_CHECK=1`` and otherwise give NaN logp in that row.
        temperature, mask, inplace_backward, process_group, vocab_start: as in :func:`entropy`. With
            ``process_group`` the labels are global indices in ``[0, V)``; the rank whose shard
            holds the label contributes ``z_y``.

    Returns:
        ``(logp [...], H [...])`` float32 (float64 for float64 logits), ``logp = z_y - lse``.
    """
    leading = _validate.logits(logits, sharded=process_group is not None)
    _validate.reverse_mode_only("logprobs_and_entropy", logits)
    labels = _validate.labels(labels, logits, leading)
    t, t_scalar = _validate.temperature(temperature, logits, leading)
    ignore_index = _validate.integer("ignore_index", ignore_index)
    mask = _validate.row_mask(mask, logits, leading)
    inplace_backward = _validate.flag("inplace_backward", inplace_backward)
    if process_group is not None or vocab_start is not None:
        group, vocab_start = _validate_vocab.vocab_parallel(process_group, vocab_start, inplace_backward)
        return _vocab_parallel.logprobs_and_entropy(logits, labels, t, t_scalar, ignore_index, mask,
                                                    group, vocab_start)
    backend = _backends.resolve("logprobs_and_entropy", logits.device, logits.dtype)
    logp, h, _, _ = _logprobs_and_entropy_op(logits, labels, t, t_scalar, ignore_index, mask,
                                             inplace_backward, backend)
    return logp, h
