"""``entropy_ops::top_k_mask``: the device-side top-k selection of Clip-Cov and KL-Cov
(``backends/token_kernel.py``) as a custom op, so that each backend runs its own kernel (the
native CPU selection, the Triton / CUDA ones on GPU tensors, ``torch_select.top_k`` as the
reference path) and ``torch.compile(fullgraph=True)`` traces through it.

The caller resolves the backend once, at its Python entry (``_backends.resolve("top_k", ...)``),
and passes the name. The output is bool, so there is no gradient to define.
"""
import torch
from torch import Tensor

from .. import _backends


@torch.library.custom_op("entropy_ops::top_k_mask", mutates_args=())
def _top_k_mask_op(scores: Tensor, eligible: Tensor, k: Tensor, backend: str) -> Tensor:
    kernel = _backends.get_kernel(backend, "top_k")
    out = kernel(scores.reshape(-1).contiguous(), eligible.reshape(-1).contiguous(), k.reshape(1).long())
    return out.view(scores.shape)


@_top_k_mask_op.register_fake
def _(scores, eligible, k, backend):
    return scores.new_empty(scores.shape, dtype=torch.bool)


def top_k_mask(scores: Tensor, eligible: Tensor, k: Tensor, backend: str) -> Tensor:
    """The ``min(k, #eligible)`` eligible entries of largest score.

    Args:
        scores: any shape, float32, bfloat16, float16, float64 (no NaN among the eligible
            entries) or int64; detached here (the selection has no gradient).
        eligible: bool, the shape of ``scores``.
        k: integer tensor of one element on ``scores``' device (a device value: never read by the
            host outside the CPU kernel).
        backend: a name from ``_backends.resolve("top_k", device, dtype)``.

    Returns:
        bool of ``scores``' shape: True at the chosen entries, ties to the lowest flat index
        (``-0.0`` and ``+0.0`` equal); all False when ``k <= 0``.
    """
    return _top_k_mask_op(scores.detach(), eligible, k, backend)
