"""``torch.library.opcheck`` of every custom op on the ``triton`` backend, under the Triton
interpreter (SPEC §1: opcheck on every op): the CPU tests' own opcheck cases, run with
``backend="triton"`` (float64 is routed to ``torch`` on GPUs, so it is left out here). Run in its
own process: `TRITON_INTERPRET=1 pytest -m triton_interp tests/test_triton_interp_opcheck.py`."""
import os

import pytest
import torch

pytestmark = [
    pytest.mark.triton_interp,
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1 at start-up"),
]
pytest.importorskip("triton")

import test_entropy_opcheck as entropy_cases  # noqa: E402
import test_linear_checks as linear_cases  # noqa: E402
import test_masked_quantile as quantile_cases  # noqa: E402
import test_min_p as min_p_cases  # noqa: E402
import test_random_keys as random_keys_cases  # noqa: E402
import test_token_stats as token_stats_cases  # noqa: E402
import test_top_k_mask as top_k_cases  # noqa: E402
import test_top_p as top_p_cases  # noqa: E402
import test_window_entropy as window_cases  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16]
VARIANTS = ["plain", "per_row"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_entropy_ops(dtype):
    for variant in ("plain", "per_row_temperature_mask"):
        entropy_cases.test_opcheck_entropy("triton", dtype, variant)
        entropy_cases.test_opcheck_logprobs_and_entropy("triton", dtype, variant)
    entropy_cases.test_opcheck_entropy_bwd("triton", dtype, "both")
    entropy_cases.test_opcheck_entropy_bwd_inplace("triton", dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", VARIANTS)
def test_selective_ops(dtype, variant):
    top_p_cases.test_opcheck("triton", dtype, variant)  # top_p_entropy, its backward, top_p_mask
    min_p_cases.test_opcheck("triton", dtype, variant)  # min_p_logprobs and its backward
    token_stats_cases.test_opcheck("triton", dtype, variant)


def test_linear_head():
    linear_cases.test_opcheck("triton")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64], ids=str)
def test_token_ops(dtype):
    if dtype != torch.int64:
        window_cases.test_opcheck({torch.float32: "packed_mask", torch.bfloat16: "bfloat16"}[dtype], "triton")
        quantile_cases.test_opcheck({torch.float32: "packed", torch.bfloat16: "bfloat16"}[dtype], "triton")
    top_k_cases.test_top_k_mask_opcheck(dtype, "triton")


def test_random_keys():
    random_keys_cases.test_opcheck_and_compile("triton")
