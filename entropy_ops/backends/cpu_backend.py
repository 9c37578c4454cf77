"""The ``cpu`` backend: the native C++ kernels of ``entropy_ops._C`` (csrc/cpu).

Python allocates every buffer and passes raw pointers (csrc/README.md gives the ABI). The thread
count is torch's, so the pool never oversubscribes what torch itself was told to use.
"""
import torch

from .. import _native
from .._backends import Backend, register_backend, register_kernel
from .kernel import RowKernel, acc_dtype
from .native_args import ptr, row_args

def _available():
    module, reason = _native.cpu_module()
    return (module is not None, reason)


def entropy_fwd_cpu(x, labels, temperature, temperature_scalar, ignore_index, mask):
    C, _ = _native.cpu_module()
    acc = acc_dtype(x.dtype)
    n_rows = x.shape[0]
    lse = torch.empty(n_rows, dtype=acc)
    entropy = torch.empty(n_rows, dtype=acc)
    logp = torch.empty(n_rows, dtype=acc) if labels is not None else None
    C.entropy_fwd_cpu(
        *row_args(x, labels, temperature, temperature_scalar, ignore_index, mask),
        lse.data_ptr(), entropy.data_ptr(), ptr(logp),
        torch.get_num_threads(),
    )
    return lse, entropy, logp


def entropy_bwd_cpu(x, labels, temperature, temperature_scalar, ignore_index, mask, lse, entropy,
                    grad_entropy, grad_logp, out):
    C, _ = _native.cpu_module()
    C.entropy_bwd_cpu(
        *row_args(x, labels, temperature, temperature_scalar, ignore_index, mask),
        lse.data_ptr(), entropy.data_ptr(),
        ptr(grad_entropy), ptr(grad_logp),
        out.data_ptr(), out.stride(0),
        torch.get_num_threads(),
    )


register_backend(Backend("cpu", _available, devices=("cpu",)))
_KERNEL = RowKernel(entropy_fwd_cpu, entropy_bwd_cpu)
register_kernel("cpu", "entropy", _KERNEL)
register_kernel("cpu", "logprobs_and_entropy", _KERNEL)
