"""Forward with the input variants of SPEC §2: non-contiguous rows, temperatures (float, 0-d,
per-row), int32/int64 labels with default and custom ``ignore_index``, row masks."""
import math

import pytest
import torch

import entropy_ops as eo
from conftest import (
    NORMAL,
    acc_dtype,
    assert_same_bits,
    assert_within_eager_bound,
    eager_entropy,
    eager_logprobs_and_entropy,
    make_labels,
    make_rows,
)
from entropy_common import _vocab_ops, check_layouts_give_the_same_bits
from entropy_ops.ops._rows import GRID_SLACK, Rows
from entropy_ops.reference import entropy_ref, logprobs_and_entropy_ref

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def check_both_ops(x, kinds, y, **kwargs):
    """Both ops on ``x`` against the reference (and ``logprobs_and_entropy``'s H against ``entropy``'s)."""
    ignore_index = kwargs.pop("ignore_index", -100)
    h = eo.entropy(x, **kwargs)
    logp, h2 = eo.logprobs_and_entropy(x, y, ignore_index=ignore_index, **kwargs)
    temperature = kwargs.get("temperature", 1.0)
    mask = kwargs.get("mask")
    ref_logp, ref_h = logprobs_and_entropy_ref(x, y, temperature, ignore_index, mask)
    eager_logp, eager_h = eager_logprobs_and_entropy(x, y, temperature, ignore_index, mask)
    assert h.dtype == logp.dtype == acc_dtype(x.dtype)
    assert_within_eager_bound(h, ref_h, eager_h, kinds, what="entropy")
    assert_within_eager_bound(h2, ref_h, eager_h, kinds, what="entropy (logprobs_and_entropy)")
    assert_within_eager_bound(logp, ref_logp, eager_logp, kinds, what="logp")
    return logp, h


def _strided_views(n, vocab, dtype):
    x, kinds = make_rows(n, vocab, dtype, seed=3)
    wide = torch.full((n, vocab + 13), float("nan"), dtype=dtype)
    wide[:, :vocab] = x
    every_other = torch.full((2 * n, vocab), float("nan"), dtype=dtype)
    every_other[::2] = x
    flat = torch.full((n * vocab + 1,), float("nan"), dtype=dtype)
    flat[1:].view(n, vocab).copy_(x)
    return kinds, {
        "row_stride_gt_V": wide[:, :vocab],
        "every_other_row": every_other[::2],
        "odd_storage_offset": flat[1:].view(n, vocab),
    }


@pytest.mark.parametrize("view", ["row_stride_gt_V", "every_other_row", "odd_storage_offset"])
@pytest.mark.parametrize("vocab", [1, 17, 1023, 32000])
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64], ids=str)
def test_non_contiguous_rows(backend, dtype, vocab, view):
    n = 9 if vocab < 32000 else 7
    kinds, views = _strided_views(n, vocab, dtype)
    x = views[view]
    before = x.clone()
    y = make_labels(n, vocab, seed=4)
    check_both_ops(x, kinds, y)
    assert torch.equal(x.isnan(), before.isnan()) and torch.equal(x.nan_to_num(), before.nan_to_num())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_collapsible_leading_dims(backend, dtype):
    """``[B, T, V]`` whose leading dims do not flatten to a view (a transposed batch)."""
    x, kinds = make_rows(12, 300, dtype, seed=5)
    x = x.reshape(3, 4, 300).transpose(0, 1)
    kinds = [kinds[b * 4 + t] for t in range(4) for b in range(3)]
    y = make_labels(12, 300, seed=6).reshape(4, 3)
    logp, h = check_both_ops(x, kinds, y)
    assert h.shape == (4, 3)


def _temperatures(leading):
    gen = torch.Generator().manual_seed(11)
    per_row = torch.rand(leading, generator=gen) * 1.75 + 0.25
    return {
        "float": 0.7,
        "float_small": 0.25,
        "int": 2,
        "tensor_0d": torch.tensor(1.3),
        "tensor_0d_f64": torch.tensor(0.6, dtype=torch.float64),
        "per_row": per_row,
        "per_row_f64": per_row.double(),
    }


@pytest.mark.parametrize("kind", list(_temperatures((1,))))
@pytest.mark.parametrize("leading", [(9,), (3, 5), ()], ids=str)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64], ids=str)
def test_temperature(backend, dtype, leading, kind):
    n = math.prod(leading)
    x, kinds = make_rows(n, 1023, dtype, seed=12)
    x = x.reshape(*leading, 1023)
    y = make_labels(n, 1023, seed=13).reshape(leading)
    temperature = _temperatures(leading)[kind]
    check_both_ops(x, kinds, y, temperature=temperature)


def test_temperature_is_applied_before_masks(backend):
    """``-inf`` logits stay excluded at any temperature; T scales the finite ones (H(z/T))."""
    x = torch.tensor([[1.0, float("-inf"), 3.0, 0.5]])
    h = eo.entropy(x, 0.5)
    expected = entropy_ref(torch.tensor([[2.0, 6.0, 1.0]]))
    assert abs(h.item() - expected.item()) <= 1e-6


@pytest.mark.parametrize("label_dtype", [torch.int64, torch.int32], ids=str)
@pytest.mark.parametrize("ignore_index", [-100, -1, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_labels_and_ignore_index(backend, dtype, label_dtype, ignore_index):
    x, kinds = make_rows(40, 257, dtype, seed=21)
    y = make_labels(40, 257, label_dtype, ignore_index=ignore_index, n_ignored=6, seed=22)
    y[7] = 5  # the custom ignore_index 5 is also a valid vocabulary index: ignored, not looked up
    logp, h = check_both_ops(x, kinds, y, ignore_index=ignore_index)
    ignored = y.long() == ignore_index
    normal = torch.tensor([k == NORMAL for k in kinds])
    assert ignored.sum() >= 5
    assert (logp[ignored] == 0).all()
    assert (h[ignored & normal] > 0).all(), "ignored rows still get their entropy"
    assert (logp[~ignored & normal] < 0).all()


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64], ids=str)
def test_row_mask(backend, dtype):
    x, kinds = make_rows(30, 500, dtype, seed=31)
    gen = torch.Generator().manual_seed(32)
    mask = torch.rand(30, generator=gen) < 0.6
    mask[0], mask[1] = True, False
    y = make_labels(30, 500, seed=33)
    logp, h = check_both_ops(x, kinds, y, mask=mask)
    normal = torch.tensor([k == NORMAL for k in kinds])
    assert (h[~mask] == 0).all() and (logp[~mask] == 0).all()
    assert (h[mask & normal] > 0).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_masked_nan_row_is_zero_and_isolated(backend, dtype):
    """A masked padding row full of NaN (or +-inf) gives exactly 0 and does not touch other rows."""
    x, kinds = make_rows(6, 128, dtype, kinds=(), seed=41)
    x[2] = float("nan")
    x[4] = float("inf")
    x[5] = float("-inf")
    mask = torch.tensor([True, True, False, True, False, False])
    y = make_labels(6, 128, n_ignored=0, seed=42)
    h = eo.entropy(x, 0.9, mask=mask)
    logp, h2 = eo.logprobs_and_entropy(x, y, 0.9, mask=mask)
    for out in (h, h2, logp):
        assert not out.isnan().any()
        assert (out[~mask] == 0).all()
    ref_logp, ref_h = logprobs_and_entropy_ref(x[mask], y[mask], 0.9)
    eager_logp, eager_h = eager_logprobs_and_entropy(x[mask], y[mask], 0.9)
    assert_within_eager_bound(h[mask], ref_h, eager_h, what="entropy")
    assert_within_eager_bound(logp[mask], ref_logp, eager_logp, what="logp")


def test_masked_row_of_1d_logits(backend):
    x = torch.randn(50)
    assert eo.entropy(x, mask=torch.tensor(False)).item() == 0
    h = eo.entropy(x, mask=torch.tensor(True))
    assert_within_eager_bound(h, entropy_ref(x), eager_entropy(x), what="entropy")


def test_layouts_give_the_same_bits(backend):
    check_layouts_give_the_same_bits()


def test_grid_rows_several_vocab_widths_apart(backend):
    """A grid whose row stride is a few times V (``buf[:, :4, :V]`` of rows ``3 V + 5`` wide) is
    read in place, each row found at its own stride (not at a multiple of V): every vocabulary op
    gives the bits of the same rows stored contiguously."""
    n, vocab = 3, 40
    gen = torch.Generator().manual_seed(8)
    x = (torch.randn(n, 4, vocab, generator=gen) * 3).to(torch.bfloat16)
    buf = torch.full((n, 5, 3 * vocab + 5), float("nan"), dtype=x.dtype)
    buf[:, :4, :vocab] = x
    view = buf[:, :4, :vocab]
    assert Rows(view).on_grid
    y = torch.randint(0, vocab, (n, 4), generator=gen)
    w = torch.linspace(0.5, 1.5, n * 4).view(n, 4)
    for i, (got, want) in enumerate(zip(_vocab_ops(view, y, w), _vocab_ops(x, y, w))):
        assert_same_bits(got, want, f"output {i}")


@pytest.mark.parametrize("positions", [slice(0, 2), slice(10, 13)], ids=["first_2", "3_in_the_middle"])
def test_far_apart_rows_are_not_read_on_a_wide_grid(backend, positions):
    """A few positions of each sequence (``logits[:, :2]``) lie on one grid, but spanning far more
    than ``GRID_SLACK * N`` grid rows: they are copied instead, so the gradient holds ``N * V``
    values, not one row per grid row of the span (about 14x and 9x here)."""
    base = torch.randn(3, 40, 24, generator=torch.Generator().manual_seed(2))
    inter = base.clone().requires_grad_(True) * 1.0
    view = inter[:, positions]
    rows = view.numel() // 24
    labels = torch.zeros(view.shape[:-1], dtype=torch.long)
    logp, h = eo.logprobs_and_entropy(view, labels)
    (g,) = torch.autograd.grad((logp + h).sum(), view)
    held = g.untyped_storage().nbytes() // g.element_size()
    assert held <= GRID_SLACK * rows * 24, f"the gradient holds {held} values for {rows} rows of 24"
    assert not Rows(view).on_grid
    dense = view.detach().contiguous().requires_grad_(True)
    logp, h = eo.logprobs_and_entropy(dense, labels)
    assert_same_bits(g, torch.autograd.grad((logp + h).sum(), dense)[0], "gradient")


def test_rows_between_grid_rows_are_masked_out():
    """On a grid the kernels get a row mask that is False on the rows between the tensor's own
    rows (``ops/_rows.py``: never read), with the caller's mask on the tensor's rows. A white-box
    check: reading those rows changes no output, only the work done."""
    rows = Rows(torch.randn(2, 5, 8)[:, :-1])  # grid rows 0-3 and 5-8; row 4 lies between
    assert rows.on_grid and rows.m == 9
    assert rows.mask(None).tolist() == [True] * 4 + [False] + [True] * 4
    user = torch.tensor([[True, False, True, True], [False, True, True, False]])
    assert rows.mask(user).tolist() == [True, False, True, True, False, False, True, True, False]
