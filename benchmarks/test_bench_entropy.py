"""One benchmark per implementation, over small shapes, so ``pytest benchmarks/ --benchmark-only``
finishes in a minute or two; ``python -m entropy_ops bench`` runs the SPEC §4 shapes."""
import pytest
import torch

from entropy_ops.bench.cases import Case

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(4096, 32000), (64, 151936)] if DEVICE == "cuda" else [(256, 32000), (64, 151936)]
OPS = [("entropy", "fwd"), ("logprobs_and_entropy", "fwd"), ("entropy", "fwd+bwd"), ("entropy", "bwd")]
CASES = [Case(op, d, n, v, torch.bfloat16, DEVICE) for n, v in SHAPES for op, d in OPS]

cases = pytest.mark.parametrize("case", CASES, ids=[c.label.replace(" ", "-") for c in CASES])


@cases
def test_eager(measure, case):
    measure("eager", case)


@cases
def test_compile(measure, case):
    measure("compile", case)


@cases
def test_chunked(measure, case):
    measure("chunked", case)


@cases
def test_backend_torch(measure, case):
    measure("torch", case)


@cases
def test_backend_cpu(measure, case):
    measure("cpu", case)


@cases
def test_backend_triton(measure, case):
    measure("triton", case)


@cases
def test_backend_cuda(measure, case):
    measure("cuda", case)


@cases
def test_trl(measure, case):
    measure("trl", case)


@cases
def test_liger(measure, case):
    measure("liger", case)


@cases
def test_flash_attn(measure, case):
    measure("flash_attn", case)
