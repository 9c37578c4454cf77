"""``peak_entropy_mask`` and ``EntropyThreshold`` (SPEC §3.2): the mask vs the float64 reference
per sequence and over all tokens, [B, T] and packed, all-masked rows and single valid tokens; the
threshold's EMA over steps vs a hand computation with ``torch.nanquantile`` and numpy's nanmedian,
steps without any valid token, eval mode, ``torch.compile`` of both, and bad arguments."""
import math

import pytest
import torch

import entropy_ops as eo
from entropy_ops import reference as R
from token_common import TOKEN_BACKENDS, make_batch, make_packed, prefix_mask, rows_as_packed


@pytest.fixture(autouse=True, params=TOKEN_BACKENDS)
def backend(request):
    """Every test runs on each CPU backend."""
    with eo.use_backend(request.param):
        yield request.param


@pytest.mark.parametrize("per_sequence", [True, False])
@pytest.mark.parametrize("q", [0.0, 0.5, 0.8, 0.95, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_matches_reference(dtype, q, per_sequence):
    x, mask = make_batch(6, 37, dtype, seed=int(q * 10))
    peak = eo.peak_entropy_mask(x, mask, q, per_sequence)
    assert peak.dtype == torch.bool and peak.shape == x.shape
    assert torch.equal(peak, R.peak_entropy_mask_ref(x, mask, q, per_sequence))
    xp, mp, cu = make_packed([9, 0, 1, 20, 5], dtype, seed=3)
    peak = eo.peak_entropy_mask(xp, mp, q, per_sequence, cu)
    assert torch.equal(peak, R.peak_entropy_mask_ref(xp, mp, q, per_sequence, cu))


def test_edge_cases():
    x, mask = make_batch(4, 16, seed=2)  # row 0 all masked, row 1 a single valid token
    peak = eo.peak_entropy_mask(x, mask, 0.8)
    assert not peak[0].any() and not peak[1].any(), "NaN quantile / a token never exceeds itself"
    assert not peak[~mask].any()
    assert not eo.peak_entropy_mask(x, torch.zeros_like(mask), 0.5, per_sequence=False).any()
    # q = 0 keeps every valid token above its sequence's minimum.
    peak0 = eo.peak_entropy_mask(x, mask, 0.0)
    row_min = torch.where(mask, x, float("inf")).amin(-1, keepdim=True)
    assert torch.equal(peak0, mask & (x > row_min))
    # A 0-d tensor q (no recompilation per value under torch.compile) is the same as the float.
    assert torch.equal(eo.peak_entropy_mask(x, mask, torch.tensor(0.8)), peak)
    # Without a mask, every entry is a candidate.
    xf, _ = make_batch(3, 10, seed=4, nan_padding=False)
    assert torch.equal(eo.peak_entropy_mask(xf, None, 0.5), R.peak_entropy_mask_ref(xf, None, 0.5))


def test_rows_and_packed_agree():
    x, mask = make_batch(5, 40, seed=7)
    lengths = [40, 3, 0, 17, 29]
    pmask = prefix_mask(40, lengths) & mask
    xp, mp, cu = rows_as_packed(x, pmask, lengths)
    assert torch.equal(eo.peak_entropy_mask(x, pmask, 0.7)[prefix_mask(40, lengths)],
                       eo.peak_entropy_mask(xp, mp, 0.7, cu_seqlens=cu))


def test_compile_fullgraph():
    torch._dynamo.reset()
    x, mask = make_batch(4, 25, seed=5)
    xp, mp, cu = make_packed([7, 0, 12, 6], seed=6)

    def fn(x, mask, xp, mp, cu):
        return (eo.peak_entropy_mask(x, mask, 0.8), eo.peak_entropy_mask(x, mask, 0.5, per_sequence=False),
                eo.peak_entropy_mask(xp, mp, 0.8, cu_seqlens=cu))

    compiled = torch.compile(fn, fullgraph=True)
    for a, b in zip(compiled(x, mask, xp, mp, cu), fn(x, mask, xp, mp, cu)):
        assert torch.equal(a, b)
    # New shapes: a dynamic-shape recompilation.
    (x, mask), (xp, mp, cu) = make_batch(6, 11, seed=8), make_packed([3, 0, 21, 1, 8], seed=9)
    for a, b in zip(compiled(x, mask, xp, mp, cu), fn(x, mask, xp, mp, cu)):
        assert torch.equal(a, b)


# ---- EntropyThreshold ------------------------------------------------------------------------------

def _steps():
    """Four training steps: the second has an all-masked row, the third no valid token at all."""
    out = []
    for step in range(4):
        x, mask = make_batch(5, 30, seed=20 + step)
        if step == 2:
            mask = torch.zeros_like(mask)
        out.append((x, mask))
    return out


def test_threshold_ema_matches_reference():
    steps = _steps()
    module = eo.EntropyThreshold(q=0.9, momentum=0.7)
    assert torch.isnan(module.value) and not module.initialized
    ours = [module(x, mask) for x, mask in steps]
    expected = R.entropy_threshold_ref(steps, 0.9, 0.7)
    for got, want in zip(ours, expected):
        assert got.shape == () and got.dtype == torch.float32
        torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64), rtol=1e-6, atol=1e-6)
    assert ours[2] == ours[1], "a step without valid tokens leaves the value unchanged"
    assert module.initialized


def test_threshold_skips_a_step_whose_median_is_nan():
    """An infinite entropy can make the per-sequence quantile NaN (torch.nanquantile's lerp of
    -inf): that step leaves the value unchanged, in the module and in the reference alike."""
    steps = [(torch.tensor([[5e-5, float("-inf")]]), torch.ones(1, 2, dtype=torch.bool)),
             (torch.tensor([[-1.25, 0.5]]), torch.tensor([[False, True]]))]
    module = eo.EntropyThreshold(q=0.5, momentum=0.5)
    ours = [module(x, mask).item() for x, mask in steps]
    want = R.entropy_threshold_ref(steps, 0.5, 0.5)
    assert math.isnan(ours[0]) and math.isnan(want[0]) and ours[1] == want[1] == 0.5, (ours, want)


def test_threshold_median_averages_the_middle_values():
    # Sequences with one valid token each: per-sequence quantiles 1, 2, 3, 10 and one NaN (empty).
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 10.0], [5.0, 5.0]])
    mask = torch.tensor([[True, False], [False, True], [True, False], [False, True], [False, False]])
    # numpy's nanmedian (2.5), not torch.nanmedian's lower middle value (2).
    assert eo.EntropyThreshold(q=0.3)(x, mask) == 2.5


def test_threshold_first_empty_step_and_eval_mode():
    x, mask = make_batch(4, 20, seed=30)
    module = eo.EntropyThreshold(q=0.5, momentum=0.9)
    assert torch.isnan(module(x, torch.zeros_like(mask))) and not module.initialized
    first = module(x, mask)
    assert module.initialized
    torch.testing.assert_close(first.double(), torch.tensor(R.entropy_threshold_ref([(x, mask)], 0.5, 0.9)[0],
                                                            dtype=torch.float64))
    module.eval()
    assert torch.equal(module(x + 1, mask), first), "eval mode does not update"
    module.train()
    second = module(x + 1, mask)
    torch.testing.assert_close(second, 0.9 * first + 0.1 * (first + 1))
    assert set(module.state_dict()) == {"value", "initialized"}


def test_threshold_packed_layout():
    xp, mp, cu = make_packed([12, 0, 30, 7, 1], seed=8)
    module = eo.EntropyThreshold(q=0.8)
    want = R.entropy_threshold_ref([(xp, mp)], 0.8, cu_seqlens=cu)[0]
    torch.testing.assert_close(module(xp, mp, cu).double(), torch.tensor(want, dtype=torch.float64))


def test_threshold_compile_fullgraph():
    torch._dynamo.reset()
    eager = eo.EntropyThreshold(q=0.9, momentum=0.7)
    compiled_module = eo.EntropyThreshold(q=0.9, momentum=0.7)
    compiled = torch.compile(compiled_module, fullgraph=True)
    for x, mask in _steps():
        assert torch.equal(compiled(x, mask), eager(x, mask))
    assert torch.equal(compiled_module.value, eager.value)
    assert torch.equal(compiled_module.initialized, eager.initialized)


@pytest.mark.parametrize("cast", ["bfloat16", "half", "to_bf16"])
def test_threshold_state_stays_float32_under_a_16bit_cast(cast):
    """A model-wide cast to a 16-bit dtype must not freeze the EMA (0.01 * step is below half a
    bf16 ulp): the state stays float32 and follows an unconverted module exactly."""
    plain = eo.EntropyThreshold(q=0.9, momentum=0.99)
    module = eo.EntropyThreshold(q=0.9, momentum=0.99)
    module = {"bfloat16": module.bfloat16, "half": module.half,
              "to_bf16": lambda: module.to(torch.bfloat16)}[cast]()
    assert module.value.dtype == torch.float32 and module.initialized.dtype == torch.bool
    values = []
    for step in range(40):
        x, mask = make_batch(4, 20, seed=step)
        x = x - step / 10  # entropy falling by 4 nats
        values.append(module(x, mask))
        assert torch.equal(values[-1], plain(x, mask))
    assert values[-1] < values[0] - 0.5  # the EMA moved
    assert eo.EntropyThreshold().double().value.dtype == torch.float64
    again = {"bfloat16": plain.bfloat16, "half": plain.half, "to_bf16": lambda: plain.to(torch.bfloat16)}[cast]()
    assert torch.equal(again.value, values[-1]), "the cast must not round the state to 16 bits on the way"


class _Uncopyable:
    """Stands in for a ProcessGroup: deepcopy and pickle raise."""

    def __reduce__(self):
        raise TypeError("cannot pickle '_Uncopyable' object")


def test_threshold_deepcopy_shares_the_process_group():
    import copy
    module = eo.EntropyThreshold(q=0.9)
    module(*make_batch(3, 10, seed=1))
    group = _Uncopyable()
    module.process_group = group
    with pytest.raises(TypeError):
        copy.deepcopy(group)
    twin = copy.deepcopy(module)
    assert twin.process_group is group
    assert torch.equal(twin.value, module.value) and twin.value.data_ptr() != module.value.data_ptr()
    assert twin.q == module.q and twin.training == module.training


def test_threshold_inputs_on_another_device_name_it():
    module = eo.EntropyThreshold().to("meta")
    with pytest.raises(ValueError, match=r"entropy: is on cpu but this EntropyThreshold's state is on meta"):
        module(*make_batch(3, 10, seed=1))


@pytest.mark.parametrize("call, error, name", [
    (lambda x, m: eo.peak_entropy_mask(x, m, 1.5), ValueError, "q"),
    (lambda x, m: eo.peak_entropy_mask(x, m, torch.tensor([0.5, 0.6])), ValueError, "q"),
    (lambda x, m: eo.peak_entropy_mask(x, m.int()), TypeError, "mask"),
    (lambda x, m: eo.peak_entropy_mask(x, m[:2]), ValueError, "mask"),
    (lambda x, m: eo.peak_entropy_mask(x.long(), m), TypeError, "entropy"),
    (lambda x, m: eo.peak_entropy_mask(x[0], None), ValueError, "entropy"),
    (lambda x, m: eo.peak_entropy_mask(x, m, cu_seqlens=torch.tensor([0, 8])), ValueError, "entropy"),
    (lambda x, m: eo.EntropyThreshold(q=-0.1), ValueError, "q"),
    (lambda x, m: eo.EntropyThreshold(momentum=1.5), ValueError, "momentum"),
    (lambda x, m: eo.EntropyThreshold(momentum="0.9"), TypeError, "momentum"),
    (lambda x, m: eo.EntropyThreshold()(x, m.float()), TypeError, "mask"),
    (lambda x, m: eo.EntropyThreshold()(x[0], None), ValueError, "entropy"),
])
def test_bad_arguments_name_themselves(call, error, name):
    x = torch.rand(3, 8)
    with pytest.raises(error, match=f"^{name}:"):
        call(x, x > 0.5)
