"""The calling convention every backend's row kernels follow.

All tensors reach a kernel validated and flattened (SPEC §2): ``x`` is ``[N, V]`` with
``x.stride(1) == 1``; per-row tensors (``labels``, ``temperature``, ``mask``, ``lse``, ``entropy``
and upstream gradients) are contiguous ``[N]``. Per-row float tensors are in the accumulation
dtype (float32, or float64 for float64 logits); ``temperature`` is None when the Python float
``temperature_scalar`` applies to every row.
"""
from typing import Callable, NamedTuple

import torch


class RowKernel(NamedTuple):
    fwd: Callable  # (x, labels, temperature, temperature_scalar, ignore_index, mask) -> (lse, entropy, logp|None)
    bwd: Callable  # (x, labels, temperature, temperature_scalar, ignore_index, mask, lse, entropy,
    #                 grad_entropy|None, grad_logp|None, out) -> None, writes out [N, V] (may alias x)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation and output dtype: float64 stays float64, everything else computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
