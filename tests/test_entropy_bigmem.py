"""SPEC §2: 64-bit indexing. A bf16 tensor of more than 2^31 elements (4.3 GB); rows before,
across and past the 2^31 element boundary are checked against the reference."""
import gc

import pytest
import torch

import entropy_ops as eo
from conftest import assert_within_eager_bound, eager_logprobs_and_entropy, skip_unless_available
from entropy_ops.reference import logprobs_and_entropy_ref

VOCAB = 131071  # odd: row 16384 straddles element 2^31, row 16385 lies wholly past it
N_ROWS = 16386
CHECKED = [0, 16383, 16384, 16385]


def _available_bytes():
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024


def _check_rows(rows, labels, h, logp, h2):
    ref_logp, ref_h = logprobs_and_entropy_ref(rows, labels[CHECKED], 0.7)
    eager_logp, eager_h = eager_logprobs_and_entropy(rows, labels[CHECKED], 0.7)
    assert_within_eager_bound(h2[CHECKED], ref_h, eager_h, what="entropy (T = 0.7)")
    assert_within_eager_bound(logp[CHECKED], ref_logp, eager_logp, what="logp")
    ref_h1 = logprobs_and_entropy_ref(rows, labels[CHECKED])[1]
    eager_h1 = eager_logprobs_and_entropy(rows, labels[CHECKED])[1]
    assert_within_eager_bound(h[CHECKED], ref_h1, eager_h1, what="entropy")


@pytest.fixture
def big():
    """``(x, rows, labels)``: an uninitialised ``[N_ROWS, VOCAB]`` bf16 tensor whose CHECKED rows
    hold random values (the untouched pages cost nothing until read)."""
    skip_unless_available("cpu")
    if _available_bytes() < 8 * 2**30:
        pytest.skip("needs ~8 GB of free memory")
    assert N_ROWS * VOCAB > 2**31 and 16384 * VOCAB < 2**31 < 16385 * VOCAB
    x = torch.empty(N_ROWS, VOCAB, dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(0)
    rows = (torch.randn(len(CHECKED), VOCAB, generator=gen) * 3).bfloat16()
    rows[1, :100] = float("-inf")
    x[CHECKED] = rows
    labels = torch.randint(VOCAB, (N_ROWS,), generator=gen)
    labels[16384] = -100
    yield x, rows, labels
    del x
    gc.collect()


@pytest.mark.bigmem
def test_masked_rows_past_2_pow_31_elements(big):
    """Only the CHECKED rows are read (mask): fast, and exercises the 64-bit row offsets."""
    x, rows, labels = big
    mask = torch.zeros(N_ROWS, dtype=torch.bool)
    mask[CHECKED] = True
    with eo.use_backend("cpu"):
        h = eo.entropy(x, mask=mask)
        logp, h2 = eo.logprobs_and_entropy(x, labels, 0.7, mask=mask)
    _check_rows(rows, labels, h, logp, h2)
    for out in (h, logp, h2):
        assert (out[~mask] == 0).all()


@pytest.mark.bigmem
@pytest.mark.slow
def test_full_pass_past_2_pow_31_elements(big):
    """Every row read (first touch of 4.3 GB costs ~10 s of page faults on a small VM)."""
    x, rows, labels = big
    x.fill_(0)
    x[CHECKED] = rows
    with eo.use_backend("cpu"):
        h = eo.entropy(x)
        logp, h2 = eo.logprobs_and_entropy(x, labels, 0.7)
    _check_rows(rows, labels, h, logp, h2)
    # Every other row is all zeros: exactly uniform at any temperature, H = log V, logp = -log V.
    zero_rows = torch.ones(N_ROWS, dtype=torch.bool)
    zero_rows[CHECKED] = False
    log_v = torch.tensor(VOCAB, dtype=torch.float64).log()
    assert ((h[zero_rows].double() - log_v).abs() <= 1e-5).all()
    assert ((logp[zero_rows].double() + log_v).abs() <= 1e-5).all()
