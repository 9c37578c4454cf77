"""Triton kernels, installed as ``entropy_ops.triton_kernels`` (never as a top-level
``triton_kernels``: that name belongs to Triton's own kernel library). Kernels arrive with the GPU
issue; the ``triton`` backend registers them in ``entropy_ops/backends/triton_backend.py``."""

# Every launch pins FMA contraction instead of leaving it to TRITON_DEFAULT_FP_FUSION or the Triton
# version's default (3.9 warns that 3.10 turns it off): a token's log-prob bits must not depend on
# the environment of the process (SPEC §2: the same token gets the same log-prob at rollout and at
# training). On, as Triton's default has been, and as nvcc contracts the CUDA kernels (-fmad=true).
FP_FUSION = True
