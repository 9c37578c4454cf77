"""The ``cuda`` backend: hand-written CUDA kernels of ``entropy_ops._C_cuda`` (csrc/cuda).

The module is linked with static cudart and makes no CUDA call at import; ``available()`` asks it
on first use whether a driver new enough for it (>= r580) and a device are present. Python
allocates every buffer (outputs and the small workspace of split rows) with torch on the logits'
device and passes raw pointers, the device index and that device's current stream
(csrc/README.md gives the ABI). float64 never reaches it (dispatch routes it to ``torch``).
"""
import functools

import torch

from .. import _native
from .._backends import Backend, register_backend, register_kernel
from ..ops._types import TokenStats
from .kernel import MinPKernel, RowKernel, TopPKernel
from .native_args import DTYPE_CODES, cuda_launch, ptr, row_args
from .torch_linear import linear_kernel


@functools.lru_cache(maxsize=None)
def _available():
    if torch.version.hip:
        return False, "the cuda backend is not built for ROCm"
    module, reason = _native.cuda_module()
    if module is None:
        return False, reason
    return tuple(module.available())


def _per_row(x, n=1, dtype=torch.float32):
    return [torch.empty(x.shape[0], dtype=dtype, device=x.device) for _ in range(n)]


def entropy_fwd_cuda(x, labels, temperature, temperature_scalar, ignore_index, mask):
    C, _ = _native.cuda_module()
    row_max, log_norm, entropy = _per_row(x, 3)
    logp = _per_row(x)[0] if labels is not None else None
    size = C.entropy_fwd_workspace(x.shape[0], x.shape[1])
    workspace = torch.empty(size, dtype=torch.float32, device=x.device)
    C.entropy_fwd_cuda(
        *row_args(x, labels, temperature, temperature_scalar, ignore_index, mask),
        row_max.data_ptr(), log_norm.data_ptr(), entropy.data_ptr(), ptr(logp),
        ptr(workspace), size, *cuda_launch(x),
    )
    return row_max, log_norm, entropy, logp


def entropy_bwd_cuda(x, labels, temperature, temperature_scalar, ignore_index, mask, row_max,
                     log_norm, entropy, grad_entropy, grad_logp, out):
    C, _ = _native.cuda_module()
    C.entropy_bwd_cuda(
        *row_args(x, labels, temperature, temperature_scalar, ignore_index, mask),
        row_max.data_ptr(), log_norm.data_ptr(), entropy.data_ptr(),
        ptr(grad_entropy), ptr(grad_logp),
        out.data_ptr(), out.stride(0), *cuda_launch(x),
    )


def _rows_no_labels(x, temperature, temperature_scalar, mask):
    """``logits, dtype, n_rows, vocab, row_stride, temperature, temperature_scalar, mask``."""
    return (x.data_ptr(), DTYPE_CODES[x.dtype], x.shape[0], x.shape[1], x.stride(0),
            ptr(temperature), float(temperature_scalar), ptr(mask))


def top_p_entropy_fwd_cuda(x, temperature, temperature_scalar, top_p, mask):
    C, _ = _native.cuda_module()
    entropy, row_max, cut_e, log_norm = _per_row(x, 4)
    (cut_index,) = _per_row(x, 1, torch.int32)
    C.top_p_entropy_fwd_cuda(
        *_rows_no_labels(x, temperature, temperature_scalar, mask), float(top_p),
        entropy.data_ptr(), row_max.data_ptr(), cut_e.data_ptr(), cut_index.data_ptr(),
        log_norm.data_ptr(), *cuda_launch(x),
    )
    return entropy, row_max, cut_e, cut_index, log_norm


def top_p_entropy_bwd_cuda(x, temperature, temperature_scalar, mask, entropy, row_max, cut_e,
                           cut_index, log_norm, grad_entropy, out):
    C, _ = _native.cuda_module()
    C.top_p_entropy_bwd_cuda(
        *_rows_no_labels(x, temperature, temperature_scalar, mask),
        entropy.data_ptr(), row_max.data_ptr(), cut_e.data_ptr(), cut_index.data_ptr(),
        log_norm.data_ptr(), ptr(grad_entropy), out.data_ptr(), out.stride(0), *cuda_launch(x),
    )


def top_p_mask_cuda(x, temperature, temperature_scalar, top_p, inclusive, mask, out):
    C, _ = _native.cuda_module()
    C.top_p_mask_cuda(
        *_rows_no_labels(x, temperature, temperature_scalar, mask), float(top_p), bool(inclusive),
        out.data_ptr(), out.stride(0), *cuda_launch(x),
    )


def min_p_logprobs_fwd_cuda(x, labels, temperature, temperature_scalar, ignore_index, min_p, mask):
    C, _ = _native.cuda_module()
    logp, row_max, log_norm = _per_row(x, 3)
    C.min_p_logprobs_fwd_cuda(
        *row_args(x, labels, temperature, temperature_scalar, ignore_index, mask), float(min_p),
        logp.data_ptr(), row_max.data_ptr(), log_norm.data_ptr(), *cuda_launch(x),
    )
    return logp, row_max, log_norm


def min_p_logprobs_bwd_cuda(x, labels, temperature, temperature_scalar, ignore_index, min_p, mask,
                            row_max, log_norm, grad_logp, out):
    C, _ = _native.cuda_module()
    C.min_p_logprobs_bwd_cuda(
        *row_args(x, labels, temperature, temperature_scalar, ignore_index, mask), float(min_p),
        row_max.data_ptr(), log_norm.data_ptr(), ptr(grad_logp), out.data_ptr(), out.stride(0),
        *cuda_launch(x),
    )


def token_stats_cuda(x, labels, temperature, temperature_scalar, ignore_index, mask):
    C, _ = _native.cuda_module()
    names = [n for n in TokenStats._fields if n != "logp"]
    out = dict(zip(names, _per_row(x, len(names))))
    out["logp"] = _per_row(x)[0] if labels is not None else None
    C.token_stats_cuda(
        *row_args(x, labels, temperature, temperature_scalar, ignore_index, mask),
        *(ptr(out[n]) for n in TokenStats._fields), *cuda_launch(x),
    )
    return TokenStats(**out)


register_backend(Backend("cuda", _available, devices=("cuda",)))
_KERNEL = RowKernel(entropy_fwd_cuda, entropy_bwd_cuda)
register_kernel("cuda", "entropy", _KERNEL)
register_kernel("cuda", "logprobs_and_entropy", _KERNEL)
_TOP_P = TopPKernel(top_p_entropy_fwd_cuda, top_p_entropy_bwd_cuda, top_p_mask_cuda)
register_kernel("cuda", "top_p_entropy", _TOP_P)
register_kernel("cuda", "top_p_mask", _TOP_P)
register_kernel("cuda", "min_p_logprobs", MinPKernel(min_p_logprobs_fwd_cuda, min_p_logprobs_bwd_cuda))
register_kernel("cuda", "token_stats", token_stats_cuda)
# linear_logprobs_and_entropy: chunked cuBLAS products (torch.mm) + the CUDA row kernels above.
register_kernel("cuda", "linear_logprobs_and_entropy", linear_kernel(_KERNEL))
from .cuda_tokens import register as _register_token_kernels  # noqa: E402
_register_token_kernels()
