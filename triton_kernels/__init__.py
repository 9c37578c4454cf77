"""Triton kernels, installed as ``entropy_ops.triton_kernels`` (never as a top-level
``triton_kernels``: that name belongs to Triton's own kernel library). Kernels arrive with the GPU
issue; the ``triton`` backend registers them in ``entropy_ops/backends/triton_backend.py``."""
