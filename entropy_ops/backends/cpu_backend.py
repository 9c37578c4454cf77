"""The ``cpu`` backend: the native C++ kernels of ``entropy_ops._C`` (csrc/cpu).

Python allocates every buffer and passes raw pointers (csrc/README.md gives the ABI). The thread
count is torch's, so the pool never oversubscribes what torch itself was told to use.
"""
import torch

from .. import _native
from .._backends import Backend, register_backend, register_kernel
from ..ops._types import TokenStats
from .kernel import MinPKernel, RowKernel, TopPKernel, acc_dtype
from .native_args import ptr, row_args
from .torch_linear import linear_kernel


def _available():
    module, reason = _native.cpu_module()
    return (module is not None, reason)


def _per_row(x, n=1, dtype=None):
    return tuple(torch.empty(x.shape[0], dtype=dtype or acc_dtype(x.dtype)) for _ in range(n))


def entropy_fwd_cpu(x, labels, temperature, temperature_scalar, ignore_index, mask):
    C, _ = _native.cpu_module()
    row_max, log_norm, entropy = _per_row(x, 3)
    logp = _per_row(x)[0] if labels is not None else None
    C.entropy_fwd_cpu(
        *row_args(x, labels, temperature, temperature_scalar, ignore_index, mask),
        row_max.data_ptr(), log_norm.data_ptr(), entropy.data_ptr(), ptr(logp),
        torch.get_num_threads(),
    )
    return row_max, log_norm, entropy, logp


def entropy_bwd_cpu(x, labels, temperature, temperature_scalar, ignore_index, mask, row_max,
                    log_norm, entropy, grad_entropy, grad_logp, out):
    C, _ = _native.cpu_module()
    C.entropy_bwd_cpu(
        *row_args(x, labels, temperature, temperature_scalar, ignore_index, mask),
        row_max.data_ptr(), log_norm.data_ptr(), entropy.data_ptr(),
        ptr(grad_entropy), ptr(grad_logp),
        out.data_ptr(), out.stride(0),
        torch.get_num_threads(),
    )


def top_p_entropy_fwd_cpu(x, temperature, temperature_scalar, top_p, mask):
    C, _ = _native.cpu_module()
    entropy, row_max, cut_e, log_norm = _per_row(x, 4)
    (cut_index,) = _per_row(x, 1, torch.int32)
    C.top_p_entropy_fwd_cpu(
        *row_args(x, None, temperature, temperature_scalar, 0, mask), float(top_p),
        entropy.data_ptr(), row_max.data_ptr(), cut_e.data_ptr(), cut_index.data_ptr(),
        log_norm.data_ptr(), torch.get_num_threads(),
    )
    return entropy, row_max, cut_e, cut_index, log_norm


def top_p_entropy_bwd_cpu(x, temperature, temperature_scalar, mask, entropy, row_max, cut_e,
                          cut_index, log_norm, grad_entropy, out):
    C, _ = _native.cpu_module()
    C.top_p_entropy_bwd_cpu(
        *row_args(x, None, temperature, temperature_scalar, 0, mask),
        entropy.data_ptr(), row_max.data_ptr(), cut_e.data_ptr(), cut_index.data_ptr(),
        log_norm.data_ptr(), ptr(grad_entropy), out.data_ptr(), out.stride(0),
        torch.get_num_threads(),
    )


def top_p_mask_cpu(x, temperature, temperature_scalar, top_p, inclusive, mask, out):
    C, _ = _native.cpu_module()
    C.top_p_mask_cpu(
        *row_args(x, None, temperature, temperature_scalar, 0, mask), float(top_p),
        bool(inclusive), out.data_ptr(), out.stride(0), torch.get_num_threads(),
    )


def min_p_logprobs_fwd_cpu(x, labels, temperature, temperature_scalar, ignore_index, min_p, mask):
    C, _ = _native.cpu_module()
    logp, row_max, log_norm = _per_row(x, 3)
    C.min_p_logprobs_fwd_cpu(
        *row_args(x, labels, temperature, temperature_scalar, ignore_index, mask), float(min_p),
        logp.data_ptr(), row_max.data_ptr(), log_norm.data_ptr(), torch.get_num_threads(),
    )
    return logp, row_max, log_norm


def min_p_logprobs_bwd_cpu(x, labels, temperature, temperature_scalar, ignore_index, min_p, mask,
                           row_max, log_norm, grad_logp, out):
    C, _ = _native.cpu_module()
    C.min_p_logprobs_bwd_cpu(
        *row_args(x, labels, temperature, temperature_scalar, ignore_index, mask), float(min_p),
        row_max.data_ptr(), log_norm.data_ptr(), ptr(grad_logp), out.data_ptr(), out.stride(0),
        torch.get_num_threads(),
    )


def token_stats_cpu(x, labels, temperature, temperature_scalar, ignore_index, mask):
    """:class:`TokenStats` of ``[N]`` tensors in the accumulation dtype (``logp`` None without
    labels), from two passes per row (``token_stats_torch`` defines the statistics)."""
    C, _ = _native.cpu_module()
    out = dict(zip(TokenStats._fields, _per_row(x, len(TokenStats._fields))))
    if labels is None:
        out["logp"] = None
    C.token_stats_cpu(
        *row_args(x, labels, temperature, temperature_scalar, ignore_index, mask),
        *(ptr(out[name]) for name in TokenStats._fields), torch.get_num_threads(),
    )
    return TokenStats(**out)


register_backend(Backend("cpu", _available, devices=("cpu",)))
_KERNEL = RowKernel(entropy_fwd_cpu, entropy_bwd_cpu)
register_kernel("cpu", "entropy", _KERNEL)
register_kernel("cpu", "logprobs_and_entropy", _KERNEL)
_TOP_P = TopPKernel(top_p_entropy_fwd_cpu, top_p_entropy_bwd_cpu, top_p_mask_cpu)
register_kernel("cpu", "top_p_entropy", _TOP_P)
register_kernel("cpu", "top_p_mask", _TOP_P)
register_kernel("cpu", "min_p_logprobs", MinPKernel(min_p_logprobs_fwd_cpu, min_p_logprobs_bwd_cpu))
register_kernel("cpu", "token_stats", token_stats_cpu)
# linear_logprobs_and_entropy: chunked torch.mm products + the native row kernels above.
register_kernel("cpu", "linear_logprobs_and_entropy", linear_kernel(_KERNEL))
from . import cpu_tokens  # noqa: E402,F401  (window_entropy, masked_quantile, top_k)
