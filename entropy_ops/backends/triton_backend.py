"""The ``triton`` backend: kernels from ``entropy_ops.triton_kernels``.

Registered here so that asking for it gives a named answer; its kernels arrive with the GPU issue,
and until then it has none ("triton: no kernel for `entropy` yet").
"""
import importlib.util

import torch

from .._backends import Backend, _triton_interpret, register_backend


def _available():
    if importlib.util.find_spec("triton") is None:
        return False, "Triton is not installed (pip install 'entropy-ops[triton]')"
    if not torch.cuda.is_available() and not _triton_interpret():
        return False, "no CUDA GPU visible to torch (set TRITON_INTERPRET=1 to run Triton kernels on CPU tensors)"
    return True, ""


register_backend(Backend("triton", _available, devices=("cuda",)))
