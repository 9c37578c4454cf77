"""The ``cuda`` backend: hand-written CUDA kernels of ``entropy_ops._C_cuda`` (csrc/cuda).

The module is linked with static cudart and makes no CUDA call at import; ``available()`` asks it
on first use whether a driver new enough for it (>= r580) and a device are present. Its row
kernels arrive with the GPU issue; until then it has none.
"""
import functools

import torch

from .. import _native
from .._backends import Backend, register_backend


@functools.lru_cache(maxsize=None)
def _available():
    if torch.version.hip:
        return False, "the cuda backend is not built for ROCm"
    module, reason = _native.cuda_module()
    if module is None:
        return False, reason
    return tuple(module.available())


register_backend(Backend("cuda", _available, devices=("cuda",)))
