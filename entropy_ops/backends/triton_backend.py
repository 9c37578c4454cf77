"""The ``triton`` backend: kernels from ``entropy_ops.triton_kernels``.

The kernel modules are imported on first use, not at ``import entropy_ops``: Triton reads
``TRITON_INTERPRET`` when a kernel is decorated, and importing Triton costs time users without a
GPU should not pay. Under ``TRITON_INTERPRET=1`` the backend accepts CPU tensors (how CI tests it).
"""
import importlib.util

import torch

from .._backends import Backend, _triton_interpret, register_backend, register_kernel
from .kernel import RowKernel


def _available():
    if importlib.util.find_spec("triton") is None:
        return False, "Triton is not installed (pip install 'entropy-ops[triton]')"
    if not torch.cuda.is_available() and not _triton_interpret():
        return False, "no CUDA GPU visible to torch (set TRITON_INTERPRET=1 to run Triton kernels on CPU tensors)"
    return True, ""


def entropy_fwd_triton(*args):
    from ..triton_kernels.launch import entropy_fwd_triton as launch
    return launch(*args)


def entropy_bwd_triton(*args):
    from ..triton_kernels.launch import entropy_bwd_triton as launch
    return launch(*args)


register_backend(Backend("triton", _available, devices=("cuda",)))
_KERNEL = RowKernel(entropy_fwd_triton, entropy_bwd_triton)
register_kernel("triton", "entropy", _KERNEL)
register_kernel("triton", "logprobs_and_entropy", _KERNEL)
