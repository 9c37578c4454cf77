"""``window_entropy``: ARES's sliding-window entropy over the following tokens (SPEC §3.2).

For every token ``t`` (masked ones too), with ``end_t`` the end of ``t``'s sequence:

    W_t = [t + offset, min(t + offset + window, end_t))
    out_t = mean of entropy_j over the valid j in W_t  (0 where W_t holds no valid token)

Linear in ``entropy``, so the backward (``entropy_ops::window_entropy_bwd``) is the transposed
window sum: ``grad_j = [j valid] sum_{t : j in W_t} g_t / #valid(W_t)``. Double backward is not
supported. The kernels' exact rules are in ``backends/token_kernel.py``.
"""
from typing import Optional

import torch
from torch import Tensor

from .. import _backends, _validate_tokens
from .._validate import reverse_mode_only
from ..backends.kernel import acc_dtype
from ._tokens import flat_tokens


@torch.library.custom_op("entropy_ops::window_entropy", mutates_args=())
def _window_entropy_op(entropy: Tensor, mask: Optional[Tensor], cu_seqlens: Optional[Tensor],
                       window: int, offset: int, backend: str) -> Tensor:
    x, m, cu = flat_tokens(entropy, mask, cu_seqlens)
    out = _backends.get_kernel(backend, "window_entropy").fwd(x, m, cu, window, offset)
    return out.view(entropy.shape)


@_window_entropy_op.register_fake
def _(entropy, mask, cu_seqlens, window, offset, backend):
    return entropy.new_empty(entropy.shape, dtype=acc_dtype(entropy.dtype))


@torch.library.custom_op("entropy_ops::window_entropy_bwd", mutates_args=())
def _window_entropy_bwd_op(grad: Tensor, mask: Optional[Tensor], cu_seqlens: Optional[Tensor],
                           window: int, offset: int, backend: str) -> Tensor:
    g, m, cu = flat_tokens(grad, mask, cu_seqlens)
    out = _backends.get_kernel(backend, "window_entropy").bwd(g, m, cu, window, offset)
    return out.view(grad.shape)


@_window_entropy_bwd_op.register_fake
def _(grad, mask, cu_seqlens, window, offset, backend):
    return grad.new_empty(grad.shape)


def _no_double_backward(ctx, *grads):
    raise RuntimeError("entropy_ops: double backward through window_entropy is not supported")


_window_entropy_bwd_op.register_autograd(_no_double_backward, setup_context=lambda ctx, inputs, output: None)


def _setup(ctx, inputs, output):
    entropy, mask, cu_seqlens, window, offset, backend = inputs
    ctx.save_for_backward(mask, cu_seqlens)
    ctx.window, ctx.offset, ctx.backend, ctx.dtype = window, offset, backend, entropy.dtype


def _backward(ctx, grad):
    mask, cu_seqlens = ctx.saved_tensors
    g = _window_entropy_bwd_op(grad.to(acc_dtype(ctx.dtype)), mask, cu_seqlens, ctx.window, ctx.offset,
                               ctx.backend)
    return g.to(ctx.dtype), None, None, None, None, None


_window_entropy_op.register_autograd(_backward, setup_context=_setup)


def window_entropy(entropy: Tensor, mask: Optional[Tensor] = None, window: int = 4, offset: int = 1,
                   cu_seqlens: Optional[Tensor] = None) -> Tensor:
    """Mean entropy of the ``window`` tokens that start ``offset`` after each token, within its
    sequence (ARES: ``offset=1, window=4``).

    Args:
        entropy: per-token values, float32, bfloat16, float16 or float64: ``[B, T]`` (each row one
            sequence), or packed ``[N]`` with ``cu_seqlens``.
        mask: optional bool of ``entropy``'s shape; only True tokens are averaged (a masked NaN is
            skipped, never multiplied). Every position still gets an output.
        window: Python int >= 1, the window length.
        offset: Python int >= 0, where the window starts relative to the token (0: the token itself).
        cu_seqlens: optional int32/int64 ``[S + 1]`` offsets of the packed sequences (starting at
            0, non-decreasing, ending at ``N``; empty sequences allowed). Checked on CPU tensors, and
            on CUDA under ``ENTROPY_OPS_CHECK=1``.

    Returns:
        float32 (float64 for float64 input) of ``entropy``'s shape: ``out_t`` = mean of the valid
        ``entropy_j``, ``j in [t + offset, min(t + offset + window, end_t))`` with ``end_t`` the end
        of ``t``'s sequence; 0 where that window holds no valid token (e.g. at a sequence's last
        ``offset`` tokens). Differentiable wrt ``entropy`` (masked tokens get exactly 0). Never a
        difference of running prefix sums: each window is summed from its own terms (term by term
        on ``triton``/``cuda``, by doubling blocks on ``torch``; on ``cpu`` windows over 16 as one
        block's suffix plus the next one's prefix, compensated), so the error is that of the
        window's own sum and does not grow with the sequence length.
    """
    _validate_tokens.tokens("entropy", entropy, cu_seqlens)
    reverse_mode_only("window_entropy", entropy)
    cu_seqlens = _validate_tokens.cu_seqlens(cu_seqlens, "entropy", entropy)
    mask = _validate_tokens.mask(mask, "entropy", entropy)
    window = _validate_tokens.window(window)
    offset = _validate_tokens.offset(offset)
    backend = _backends.resolve("window_entropy", entropy.device, entropy.dtype)
    return _window_entropy_op(entropy, mask, cu_seqlens, window, offset, backend)
