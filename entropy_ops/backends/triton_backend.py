"""The ``triton`` backend: kernels from ``entropy_ops.triton_kernels``.

The kernel modules are imported on first use, not at ``import entropy_ops``: Triton reads
``TRITON_INTERPRET`` when a kernel is decorated, and importing Triton costs time users without a
GPU should not pay. Under ``TRITON_INTERPRET=1`` the backend accepts CPU tensors (how CI tests it).
"""
import importlib.util

import torch

from .._backends import Backend, _triton_interpret, register_backend, register_kernel
from ..ops._types import TokenStats
from .kernel import MinPKernel, RowKernel, TopPKernel
from .torch_linear import LinearKernel


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


def _selective(name):
    """A lazy wrapper of ``triton_kernels.launch_selective.<name>`` (imported on first call)."""
    def call(*args):
        from ..triton_kernels import launch_selective
        return getattr(launch_selective, name)(*args)
    call.__name__ = call.__qualname__ = name
    return call


def token_stats_triton(*args):
    from ..triton_kernels.launch_selective import token_stats_triton as launch
    return TokenStats(*launch(*args))


register_backend(Backend("triton", _available, devices=("cuda",)))
_KERNEL = RowKernel(entropy_fwd_triton, entropy_bwd_triton)
register_kernel("triton", "entropy", _KERNEL)
register_kernel("triton", "logprobs_and_entropy", _KERNEL)
_TOP_P = TopPKernel(_selective("top_p_entropy_fwd_triton"), _selective("top_p_entropy_bwd_triton"),
                    _selective("top_p_mask_triton"))
register_kernel("triton", "top_p_entropy", _TOP_P)
register_kernel("triton", "top_p_mask", _TOP_P)
register_kernel("triton", "min_p_logprobs",
                MinPKernel(_selective("min_p_logprobs_fwd_triton"), _selective("min_p_logprobs_bwd_triton")))
register_kernel("triton", "token_stats", token_stats_triton)


def linear_fwd_triton(*args):
    from ..triton_kernels.launch_linear import linear_fwd_triton as launch
    return launch(*args)


def linear_bwd_triton(*args):
    from ..triton_kernels.launch_linear import linear_bwd_triton as launch
    return launch(*args)


# linear_logprobs_and_entropy: the fused kernels of triton_kernels/linear_entropy.py.
register_kernel("triton", "linear_logprobs_and_entropy", LinearKernel(linear_fwd_triton, linear_bwd_triton))
from .triton_tokens import register as _register_token_kernels  # noqa: E402
_register_token_kernels()
