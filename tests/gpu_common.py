"""Shared pieces of the GPU tests (`pytest -m gpu`, tests/test_gpu_*.py): every GPU backend
("triton", "cuda") on CUDA tensors vs the float64 reference (SPEC §2, §3.1, §6), batch
invariance, no host sync, CUDA graphs, torch.compile, ENTROPY_OPS_CHECK, dispatch, 64-bit indexing.
Without a GPU, under ENTROPY_OPS_CUDA_EMULATOR, the same tests run the cuda backend on CPU tensors
(EMULATED, below).

Skipped as a whole without a CUDA device; per backend when it is unavailable or has no kernel yet
(the reason is in the skip message). Tolerance: ``assert_within_eager_bound`` with the eager fp32
formula run on the same CUDA input; the comparison itself runs on CPU copies.
Diagnosis: a sticky CUDA error (illegal address) fails every later test in the process; the first
failure is the culprit. Subprocess tests print the child's stdout/stderr when they fail.
"""
import contextlib
import os

import pytest
import torch

import entropy_ops as eo
from conftest import (  # noqa: F401 (assert_same_bits: re-exported for the GPU tests)
    FINITE_KINDS,
    assert_same_bits,
    assert_within_eager_bound,
    skip_unless_available,
)
from entropy_ops import _backends
from host_sync import no_host_sync

# Under ENTROPY_OPS_CUDA_EMULATOR and without a GPU (tests/cuda_emu: `make test` runs these tests
# so), the cuda backend's kernels, compiled for the CPU, run on CPU tensors: DEVICE is "cpu", the
# only backend is "cuda", and what needs the GPU itself (sync-debug mode, streams, CUDA graphs,
# NCCL, > 4 GB) is skipped by `needs_real_gpu`.
EMULATED = bool(os.environ.get("ENTROPY_OPS_CUDA_EMULATOR")) and not torch.cuda.is_available()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (torch.cuda.is_available() or EMULATED),
                       reason="needs a CUDA device (torch.cuda.is_available() is False) or the CUDA emulator"),
]
needs_real_gpu = pytest.mark.skipif(EMULATED, reason="needs the GPU itself; the CUDA emulator runs kernels only")

DEVICE = "cpu" if EMULATED else "cuda"
GPU_BACKENDS = ("cuda",) if EMULATED else ("triton", "cuda")
# SPEC §2's "no grid-size limit on N": more rows than a grid's y or z dimension holds (65535). A
# block-per-row kernel costs the emulator about 0.5 ms a row: there 3000 rows check the many-rows
# logic, not the limit (the emulator does refuse a launch past the hardware's limits).
MANY_ROWS = 3000 if EMULATED else 70000
# Batch sizes of the batch-invariance tests: a small batch and a large one (a GPU full of rows).
# Launch plans depend on V alone, so the emulator's smaller large batch runs the same code paths.
BIG_BATCH = 512 if EMULATED else 4096
OPS = ("entropy", "logprobs_and_entropy")
GPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
VOCABS = (1, 2, 111, 1023, 1024, 32000, 151936)
LAYOUTS = ("N0", "N1", "Nodd", "BT", "1d", "strided")
TEMPERATURES = ("float", "tensor_0d", "per_row")
UNSHIFTED_KINDS = tuple(k for k in FINITE_KINDS if not k.startswith("shift"))


@contextlib.contextmanager
def sync_debug_error():
    """Any host sync inside raises (``torch.cuda.set_sync_debug_mode("error")``); under the emulator,
    whose tensors live on the host, the block fails on the ops that would sync on a GPU
    (``host_sync.no_host_sync``)."""
    if EMULATED:
        with no_host_sync():
            yield
        return
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ---- backend selection and checking helpers ------------------------------------------------------

def require_gpu_backend(name):
    """Skip (with the reason) unless ``name`` can run both ops on CUDA tensors; then make sure the
    dispatcher really routes to it, so that a test never passes on the torch fallback."""
    skip_unless_available(name)
    if name == "triton" and os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("GPU tests run compiled Triton kernels; unset TRITON_INTERPRET")
    kernels = _backends.registered_backends()[name].kernels
    for op in OPS:
        if op not in kernels:
            pytest.skip(f"{name}: no kernel for `{op}` yet")
    with eo.use_backend(name):
        for dtype in GPU_DTYPES:
            got = _backends.resolve("entropy", torch.device(DEVICE), dtype)
            assert got == name, f"use_backend({name!r}) resolves {dtype} CUDA logits to {got!r}"


@pytest.fixture(params=GPU_BACKENDS)
def gpu_backend(request, monkeypatch):
    require_gpu_backend(request.param)
    monkeypatch.delenv("ENTROPY_OPS_CHECK", raising=False)
    with eo.use_backend(request.param):
        yield request.param


def check(ours, ref, eager, kinds=None, what="value", abs_tol=1e-5):
    """SPEC §2's bound, on CPU copies (the comparison's boolean indexing stays off the GPU)."""
    cpu = [t.detach().cpu() for t in (ours, ref, eager)]
    assert_within_eager_bound(*cpu, kinds, what=what, abs_tol=abs_tol)


def assert_outputs(tensors, device, dtype=torch.float32):
    for name, t in tensors.items():
        assert t.device == torch.device(device) and t.dtype == dtype, f"{name}: {t.device} {t.dtype}"


def temperature_of(kind, leading, seed=11):
    if kind == "float":
        return 0.7
    if kind == "tensor_0d":
        return torch.tensor(1.3, device=DEVICE)
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(leading, generator=gen) * 1.75 + 0.25).to(DEVICE)


