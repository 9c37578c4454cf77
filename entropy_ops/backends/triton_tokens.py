"""The ``triton`` backend's token-level kernels (``token_kernel.py`` gives the contracts): window
entropy, masked quantile, and the top-k selection and random keys of the policy losses. The kernel
modules are imported on first call, as in ``triton_backend.py``."""
from .._backends import register_kernel
from .token_kernel import WindowKernel


def _lazy(name):
    """A wrapper of ``triton_kernels.launch_tokens.<name>``, imported on first call."""
    def call(*args):
        from ..triton_kernels import launch_tokens
        return getattr(launch_tokens, name)(*args)
    call.__name__ = call.__qualname__ = name
    return call


def register():
    """Adds the kernels to the ``triton`` backend (called once by ``triton_backend.py``)."""
    register_kernel("triton", "window_entropy",
                    WindowKernel(_lazy("window_entropy_fwd_triton"), _lazy("window_entropy_bwd_triton")))
    register_kernel("triton", "masked_quantile", _lazy("masked_quantile_triton"))
    register_kernel("triton", "top_k", _lazy("top_k_triton"))
    register_kernel("triton", "random_keys", _lazy("random_keys_triton"))
