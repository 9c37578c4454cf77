"""Benchmarks of the selective row ops (top-p entropy, min-p log-probs, token statistics) over small
shapes, one group per case. The SPEC §4 ratios (top-p <= 4x plain ``entropy``, >= 10x SIREN's
top-k + sort) need both in one run: ``python -m entropy_ops bench --ops
entropy,top_p_entropy,min_p_logprobs,token_stats`` measures them at the SPEC §4 shapes."""
import pytest
import torch

from entropy_ops.bench.cases import Case

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(4096, 32000), (64, 151936)] if DEVICE == "cuda" else [(64, 32000), (16, 151936)]
OPS = [("top_p_entropy", "fwd"), ("top_p_entropy", "fwd+bwd"), ("min_p_logprobs", "fwd"),
       ("token_stats", "fwd")]
CASES = [Case(op, d, n, v, torch.bfloat16, DEVICE) for n, v in SHAPES for op, d in OPS]
IMPLS = ["eager", "compile", "torch", "cpu", "triton", "cuda"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=[c.label.replace(" ", "-") for c in CASES])
def test_selective(measure, case, impl):
    measure(impl, case)
