"""Launchers: choose block and split sizes (the kernels never guess), allocate, launch.

Split size is a function of V alone (SPEC §2 batch invariance): rows up to ``_SPLIT`` elements are
one program; longer rows are cut into ``_SPLIT``-element chunks so that a few hundred long rows still
fill the GPU.
"""
import contextlib
import struct

import torch
import triton

from . import FP_FUSION
from .entropy import entropy_bwd_kernel, entropy_combine_kernel, entropy_fwd_kernel

_SPLIT = 8192
_MAX_BLOCK = 4096


def _sizes(vocab: int):
    split_size = vocab if vocab <= _SPLIT else _SPLIT
    block = min(_MAX_BLOCK, triton.next_power_of_2(split_size))
    return split_size, triton.cdiv(vocab, split_size), block


def _num_warps(block: int) -> int:
    return 8 if block >= 2048 else 4


def _on_device(x):
    """Triton launches on the current device and its current stream: make that the logits' own
    device, so tensors on cuda:1 work while cuda:0 is current (CPU tensors: the interpreter)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def scalar_parts(t: float):
    """``(hi, lo)``: the float32 nearest ``t`` (what a Triton float argument holds) and the rest, so
    that a kernel rebuilds ``t`` in float64 as ``hi + lo`` (``row_temperature``). A label's
    log-prob at T = 0.01 is in the hundreds: float32's rounding of T alone would move it ~1e-4."""
    hi = struct.unpack("f", struct.pack("f", t))[0]
    return hi, t - hi


def entropy_fwd_triton(x, labels, temperature, temperature_scalar, ignore_index, mask):
    n_rows, vocab = x.shape
    row_max, log_norm, entropy = (torch.empty(n_rows, dtype=torch.float32, device=x.device) for _ in range(3))
    logp = torch.empty_like(entropy) if labels is not None else None
    if n_rows == 0:
        return row_max, log_norm, entropy, logp
    split_size, n_splits, block = _sizes(vocab)
    part = torch.empty(n_rows * n_splits * 4 if n_splits > 1 else 1, dtype=torch.float32, device=x.device)
    flags = dict(HAS_TEMP=temperature is not None, HAS_LABELS=labels is not None, HAS_MASK=mask is not None)
    row_args = (temperature, *scalar_parts(float(temperature_scalar)), labels, int(ignore_index), mask)
    outs = (row_max, log_norm, entropy, logp)
    with _on_device(x):
        entropy_fwd_kernel[(n_rows, n_splits)](
            x, x.stride(0), vocab, split_size, *row_args, *outs, part, n_splits,
            SPLIT=n_splits > 1, BLOCK=block, num_warps=_num_warps(block), **flags,
            enable_fp_fusion=FP_FUSION,
        )
        if n_splits > 1:
            entropy_combine_kernel[(n_rows,)](part, n_splits, vocab, *row_args, *outs,
                                              num_warps=1, **flags, enable_fp_fusion=FP_FUSION)
    return outs


def entropy_bwd_triton(x, labels, temperature, temperature_scalar, ignore_index, mask, row_max,
                       log_norm, entropy, grad_entropy, grad_logp, out):
    n_rows, vocab = x.shape
    if n_rows == 0:
        return
    split_size, n_splits, block = _sizes(vocab)
    with _on_device(x):
        entropy_bwd_kernel[(n_rows, n_splits)](
            x, x.stride(0), vocab, split_size,
            temperature, float(temperature_scalar), labels, int(ignore_index), mask,
            row_max, log_norm, entropy, grad_entropy, grad_logp, out, out.stride(0),
            HAS_TEMP=temperature is not None, HAS_LABELS=labels is not None, HAS_MASK=mask is not None,
            HAS_GRAD_ENTROPY=grad_entropy is not None, HAS_GRAD_LOGP=grad_logp is not None,
            BLOCK=block, num_warps=_num_warps(block), enable_fp_fusion=FP_FUSION,
        )
