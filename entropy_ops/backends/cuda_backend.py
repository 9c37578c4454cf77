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
from .kernel import RowKernel
from .native_args import ptr, row_args


@functools.lru_cache(maxsize=None)
def _available():
    if torch.version.hip:
        return False, "the cuda backend is not built for ROCm"
    module, reason = _native.cuda_module()
    if module is None:
        return False, reason
    return tuple(module.available())


def _workspace(C, x):
    size = C.entropy_fwd_workspace(x.shape[0], x.shape[1])
    return torch.empty(size, dtype=torch.float32, device=x.device), size


def _launch(x):
    return x.device.index, torch.cuda.current_stream(x.device).cuda_stream


def entropy_fwd_cuda(x, labels, temperature, temperature_scalar, ignore_index, mask):
    C, _ = _native.cuda_module()
    n_rows = x.shape[0]
    lse = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    entropy = torch.empty_like(lse)
    logp = torch.empty_like(lse) if labels is not None else None
    workspace, size = _workspace(C, x)
    C.entropy_fwd_cuda(
        *row_args(x, labels, temperature, temperature_scalar, ignore_index, mask),
        lse.data_ptr(), entropy.data_ptr(), ptr(logp),
        ptr(workspace), size, *_launch(x),
    )
    return lse, entropy, logp


def entropy_bwd_cuda(x, labels, temperature, temperature_scalar, ignore_index, mask, lse, entropy,
                     grad_entropy, grad_logp, out):
    C, _ = _native.cuda_module()
    workspace, size = _workspace(C, x)
    C.entropy_bwd_cuda(
        *row_args(x, labels, temperature, temperature_scalar, ignore_index, mask),
        lse.data_ptr(), entropy.data_ptr(),
        ptr(grad_entropy), ptr(grad_logp),
        out.data_ptr(), out.stride(0),
        ptr(workspace), size, *_launch(x),
    )


register_backend(Backend("cuda", _available, devices=("cuda",)))
_KERNEL = RowKernel(entropy_fwd_cuda, entropy_bwd_cuda)
register_kernel("cuda", "entropy", _KERNEL)
register_kernel("cuda", "logprobs_and_entropy", _KERNEL)
