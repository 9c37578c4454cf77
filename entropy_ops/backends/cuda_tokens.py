"""The ``cuda`` backend's token-level kernels (``token_kernel.py`` gives the contracts): window
entropy, masked quantile, and the top-k selection and random keys of the policy losses, from
``_C_cuda`` (csrc/cuda/window_entropy.cu, masked_quantile.cu, top_k.cu, random_keys.cu).

Python allocates every buffer with torch on the tokens' device and passes raw pointers, the
device index and that device's current stream. Ranks, ``k`` and the selected keys stay on the
device; the lerp of the two order statistics is ``torch.lerp`` (torch.quantile's own rule).
"""
import torch

from .. import _native
from .._backends import register_kernel
from .native_args import DTYPE_CODES, cuda_launch, ptr
from .token_kernel import WindowKernel, quantile_lerp, quantile_rank

_INT64_CODE = 4  # top_k scores may be int64 (csrc/cuda/token_select.cuh: kInt64Code)


def _module():
    """``_C_cuda``, with a named error if it was built before these kernels existed."""
    C, reason = _native.cuda_module()
    if C is None:
        raise RuntimeError(f"entropy_ops: the cuda backend is not available: {reason}")
    if not hasattr(C, "radix_select_cuda"):
        raise RuntimeError("entropy_ops._C_cuda predates the token-level kernels: rebuild it (pip install .)")
    return C


def _code(t):
    return _INT64_CODE if t.dtype == torch.int64 else DTYPE_CODES[t.dtype]


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def window_entropy_fwd_cuda(x, mask, cu, window, offset):
    C = _module()
    out = torch.zeros(x.shape[0], dtype=_acc(x.dtype), device=x.device)
    if x.shape[0] > 0:
        C.window_entropy_fwd_cuda(x.data_ptr(), _code(x), ptr(mask), cu.data_ptr(), x.shape[0],
                                  cu.shape[0] - 1, int(window), int(offset), out.data_ptr(), *cuda_launch(x))
    return out


def window_entropy_bwd_cuda(grad, mask, cu, window, offset):
    C = _module()
    out = torch.zeros_like(grad)
    if grad.shape[0] > 0:
        share = torch.empty_like(grad)
        C.window_entropy_bwd_cuda(grad.data_ptr(), _code(grad), ptr(mask), cu.data_ptr(), grad.shape[0],
                                  cu.shape[0] - 1, int(window), int(offset), share.data_ptr(),
                                  out.data_ptr(), *cuda_launch(grad))
    return out


def radix_select_cuda(x, valid, ranks, descending=False):
    """Over all of ``x`` ``[N]``, the entry of 0-based ``ranks[t]`` (int64 ``[T]`` on the device) in
    ascending (descending) order: ``(prefix, residual, value)`` as in csrc/cuda/launchers.h."""
    C = _module()
    targets = ranks.shape[0]
    prefix = torch.zeros(targets, dtype=torch.int64, device=x.device)
    rank = ranks.clone()
    value = torch.full((targets,), float("nan"), dtype=torch.float64, device=x.device)
    hist = torch.zeros(targets, 256, dtype=torch.int64, device=x.device)
    C.radix_select_cuda(x.data_ptr(), _code(x), ptr(valid), x.shape[0], rank.data_ptr(), prefix.data_ptr(),
                        targets, hist.data_ptr(), value.data_ptr(), bool(descending), *cuda_launch(x))
    return prefix, rank, value


def _lerp(v_lo, v_hi, q, count):
    """torch.quantile's 'linear' rule on the selected pairs, NaN where ``count = 0``."""
    return quantile_lerp(v_lo, v_hi, quantile_rank(q[:, None], count), count)


def masked_quantile_cuda(x, mask, cu, q):
    C = _module()
    n_seq = 1 if cu is None else cu.shape[0] - 1
    n_q = q.shape[0]
    if x.shape[0] == 0 or n_seq == 0:
        return torch.full((n_q, n_seq), float("nan"), dtype=torch.float64, device=x.device)
    q = q.contiguous()
    if cu is None:
        valid = ~torch.isnan(x) if mask is None else mask & ~torch.isnan(x)
        count = valid.sum().view(1)
        rank = (q * (count - 1)).clamp(min=0)
        lo = rank.long()
        _, _, value = radix_select_cuda(x, valid, torch.cat([lo, lo + (rank > lo)]))
        return _lerp(value[:n_q, None], value[n_q:, None], q, count)
    v_lo = torch.empty(n_q, n_seq, dtype=torch.float64, device=x.device)
    v_hi = torch.empty_like(v_lo)
    count = torch.empty(n_seq, dtype=torch.int64, device=x.device)
    C.masked_quantile_seq_cuda(x.data_ptr(), _code(x), ptr(mask), cu.data_ptr(), n_seq, q.data_ptr(), n_q,
                               v_lo.data_ptr(), v_hi.data_ptr(), count.data_ptr(), *cuda_launch(x))
    return _lerp(v_lo, v_hi, q, count)


def top_k_cuda(scores, eligible, k):
    C = _module()
    n = scores.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.bool, device=scores.device)
    kk = torch.minimum(k.reshape(1), eligible.sum().reshape(1))
    prefix, residual, _ = radix_select_cuda(scores, eligible, (kk - 1).clamp(min=0), descending=True)
    above = torch.empty(n, dtype=torch.bool, device=scores.device)
    tie = torch.empty_like(above)
    C.top_k_mark_cuda(scores.data_ptr(), _code(scores), eligible.data_ptr(), n, prefix.data_ptr(),
                      above.data_ptr(), tie.data_ptr(), *cuda_launch(scores))
    # The first residual + 1 ties in index order: a prefix count of the tie flags.
    first_ties = tie & (tie.cumsum(0, dtype=torch.int64) <= residual + 1)
    return (above | first_ties) & (kk > 0)


def random_keys_cuda(seed, first, n):
    """int64 ``[n]`` keys ``[first, first + n)`` of the stream of ``seed`` (both int64 ``[1]`` on the
    device: the kernel reads them, the host never does); ``n = 0`` launches nothing."""
    C = _module()
    out = torch.empty(n, dtype=torch.int64, device=seed.device)
    if n > 0:
        C.random_keys_cuda(seed.data_ptr(), first.data_ptr(), n, out.data_ptr(), *cuda_launch(seed))
    return out


def register():
    """Adds the kernels to the ``cuda`` backend (called once by ``cuda_backend.py``)."""
    register_kernel("cuda", "window_entropy", WindowKernel(window_entropy_fwd_cuda, window_entropy_bwd_cuda))
    register_kernel("cuda", "masked_quantile", masked_quantile_cuda)
    register_kernel("cuda", "top_k", top_k_cuda)
    register_kernel("cuda", "random_keys", random_keys_cuda)
