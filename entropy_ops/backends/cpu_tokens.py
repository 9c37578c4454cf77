"""The ``cpu`` backend of the token-level ops (``token_kernel.py``): native kernels of
``entropy_ops._C`` (csrc/cpu/window_entropy_cpu.cpp, masked_quantile_cpu.cpp, top_k_cpu.cpp,
random_keys_cpu.cpp),
threads from the module's pool sized by ``torch.get_num_threads()``.

The quantile kernel returns the two order statistics of each rank; the interpolation is done
here with ``torch.lerp`` on the ``[Q, S]`` tensors, the very arithmetic of the ``torch`` path
(torch's vectorized lerp rounds through an FMA), so the two backends agree to the bit.
"""
import torch

from .. import _native
from .._backends import register_kernel
from .kernel import acc_dtype
from .native_args import DTYPE_CODES, ptr
from .token_kernel import WindowKernel, quantile_lerp, quantile_rank

_INT64_SCORES = 4  # csrc/cpu/token_cpu.h: kInt64Scores


def window_entropy_fwd_cpu(x, mask, cu, window, offset):
    C, _ = _native.cpu_module()
    n = x.shape[0]
    out = torch.empty(n, dtype=acc_dtype(x.dtype))
    # A window or offset past N acts as N: clamped here so that no index sum can overflow.
    C.window_entropy_fwd_cpu(x.data_ptr(), DTYPE_CODES[x.dtype], ptr(mask), cu.data_ptr(),
                             cu.shape[0] - 1, n, min(window, n), min(offset, n), out.data_ptr(),
                             torch.get_num_threads())
    return out


def window_entropy_bwd_cpu(grad, mask, cu, window, offset):
    C, _ = _native.cpu_module()
    n = grad.shape[0]
    share, out = torch.empty_like(grad), torch.empty_like(grad)
    C.window_entropy_bwd_cpu(grad.data_ptr(), DTYPE_CODES[grad.dtype], ptr(mask), cu.data_ptr(),
                             cu.shape[0] - 1, n, min(window, n), min(offset, n), share.data_ptr(),
                             out.data_ptr(), torch.get_num_threads())
    return out


def masked_quantile_cpu(x, mask, cu, q):
    C, _ = _native.cpu_module()
    q = q.contiguous()
    n_seq = 1 if cu is None else cu.shape[0] - 1
    v_lo = torch.empty(q.shape[0], n_seq, dtype=torch.float64)
    v_hi = torch.empty_like(v_lo)
    count = torch.empty(n_seq, dtype=torch.int64)
    C.masked_quantile_cpu(x.data_ptr(), DTYPE_CODES[x.dtype], ptr(mask), ptr(cu), n_seq, x.shape[0],
                          q.data_ptr(), q.shape[0], v_lo.data_ptr(), v_hi.data_ptr(),
                          count.data_ptr(), torch.get_num_threads())
    # The kernel selected at floor and ceil of the same rank.
    return quantile_lerp(v_lo, v_hi, quantile_rank(q[:, None], count), count)


def top_k_cpu(scores, eligible, k):
    C, _ = _native.cpu_module()
    out = torch.empty(scores.shape[0], dtype=torch.bool)
    code = _INT64_SCORES if scores.dtype == torch.int64 else DTYPE_CODES[scores.dtype]
    eligible, k = eligible.contiguous(), k.reshape(1).to(torch.int64).contiguous()
    C.top_k_cpu(scores.data_ptr(), code, eligible.data_ptr(), scores.shape[0],
                k.data_ptr(), out.data_ptr(), torch.get_num_threads())
    return out


def random_keys_cpu(seed, first, n):
    C, _ = _native.cpu_module()
    out = torch.empty(n, dtype=torch.int64)
    seed, first = seed.reshape(1).contiguous(), first.reshape(1).contiguous()
    C.random_keys_cpu(seed.data_ptr(), first.data_ptr(), n, out.data_ptr(), torch.get_num_threads())
    return out


register_kernel("cpu", "window_entropy", WindowKernel(window_entropy_fwd_cpu, window_entropy_bwd_cpu))
register_kernel("cpu", "masked_quantile", masked_quantile_cpu)
register_kernel("cpu", "top_k", top_k_cpu)
register_kernel("cpu", "random_keys", random_keys_cpu)
