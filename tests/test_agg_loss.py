"""``agg_loss`` (SPEC §3.2, verl 0.9.1's semantics) vs its float64 reference: every aggregation
mode, dp_size and verl's global counts as numbers and tensors, empty masks and shapes, half
precision, float masks, the output dtype and bad counts."""
import pytest
import torch

import entropy_ops as eo
from entropy_ops import reference as R
from entropy_ops.ops.agg_loss import MODES
from token_common import assert_close64, policy_batch


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("extra", [{}, {"dp_size": 2, "batch_num_tokens": 50, "global_batch_size": 7},
                                   {"loss_scale_factor": 3.0}])
def test_agg_loss_matches_reference(mode, extra):
    loss_mat, _, _, mask, _ = policy_batch(B=5, T=9, seed=1)
    mask[2] = False  # a sequence without valid tokens
    loss_mat[~mask] = float("nan")  # padding must never reach the loss
    x = loss_mat.clone().requires_grad_(True)
    ours = eo.agg_loss(x, mask, mode, **extra)
    ref = R.agg_loss_ref(loss_mat.nan_to_num(), mask, mode, **extra)
    assert_close64(ours, ref)
    (g,) = torch.autograd.grad(ours, x)
    assert torch.isfinite(g).all() and (g[~mask] == 0).all()


@pytest.mark.parametrize("mode", MODES)
def test_agg_loss_float64_matches_reference_to_the_last_bits(mode):
    """float64 losses aggregate in float64: ``n_b + 1e-8`` of seq-mean-token-mean included (int64
    counts plus 1e-8 would round to float32, where the 1e-8 vanishes: 1e-8 / n_b off)."""
    loss_mat, _, _, mask, _ = policy_batch(B=5, T=9, seed=3, dtype=torch.float64)
    ours, ref = eo.agg_loss(loss_mat, mask, mode), R.agg_loss_ref(loss_mat, mask, mode)
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, ref, rtol=1e-14, atol=0)


@pytest.mark.parametrize("mode", MODES)
def test_agg_loss_empty_mask_is_zero_with_zero_gradient(mode):
    x = torch.randn(3, 5, requires_grad=True)
    loss = eo.agg_loss(x, torch.zeros(3, 5, dtype=torch.bool), mode)
    assert loss.item() == 0
    (g,) = torch.autograd.grad(loss, x)
    assert (g == 0).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(3, 0), (0, 5), (0, 0)])
def test_agg_loss_empty_shapes_are_zero(mode, shape):
    x = torch.randn(shape, requires_grad=True)
    loss = eo.agg_loss(x, torch.ones(shape, dtype=torch.bool), mode)
    assert loss.item() == 0
    assert torch.autograd.grad(loss, x)[0].shape == shape


@pytest.mark.parametrize("mode", MODES)
def test_agg_loss_half_precision_accumulates_like_verl(mode):
    """bf16 loss matrices: the seq-mean modes sum each sequence in float32 and return float32 (verl's
    float sequence mask promotes them); the token modes keep the dtype. Errors vs float64."""
    loss_mat, _, _, mask, _ = policy_batch(B=64, T=512, seed=2)
    x = loss_mat.bfloat16()
    ours = eo.agg_loss(x, mask, mode)
    ref = R.agg_loss_ref(x.double(), mask, mode)
    assert ours.dtype == (torch.float32 if mode.startswith("seq-mean") else torch.bfloat16)
    tol = 1e-4 if mode.startswith("seq-mean") else 1e-2
    assert_close64(ours, ref, tol=tol)


def test_agg_loss_float_mask_and_global_counts():
    x = torch.randn(3, 5)
    m = torch.rand(3, 5) > 0.3
    assert_close64(eo.agg_loss(x, m.float(), "token-mean"), eo.agg_loss(x, m, "token-mean"))
    with pytest.raises(ValueError, match="^mask:"):
        eo.agg_loss(x, m.float() * 0.5, "token-mean")
    with pytest.raises(ValueError, match="^batch_num_tokens:"):
        eo.agg_loss(x, m, "token-mean", dp_size=2)
    with pytest.raises(ValueError, match="^global_batch_size:"):
        eo.agg_loss(x, m, "seq-mean-token-mean", dp_size=2)
    assert_close64(eo.agg_loss(x, m, "token-mean", batch_num_tokens=torch.tensor(11)),
           R.agg_loss_ref(x, m, "token-mean", batch_num_tokens=11))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype, count_dtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.float64)],
                         ids=str)
def test_float_count_tensors_keep_the_documented_dtype(mode, dtype, count_dtype):
    """0-d float count tensors (batch_num_tokens, global_batch_size, loss_scale_factor) divide the
    loss, but do not promote it: loss_mat's dtype for the token modes, >= float32 for seq-mean."""
    loss_mat, old, adv, mask, keys = policy_batch(B=3, T=7, seed=4)
    counts = dict(dp_size=2, batch_num_tokens=torch.tensor(30.0, dtype=count_dtype),
                  global_batch_size=torch.tensor(6.0, dtype=count_dtype),
                  loss_scale_factor=torch.tensor(3.0, dtype=count_dtype))
    expected = dtype if mode.startswith("token") else torch.promote_types(dtype, torch.float32)
    x = loss_mat.to(dtype).requires_grad_(True)
    ours = eo.agg_loss(x, mask, mode, **counts)
    assert ours.dtype == expected
    assert_close64(ours, R.agg_loss_ref(x.detach(), mask, mode, **counts), tol=1e-2 if dtype == torch.bfloat16 else 1e-6)
    ours.backward()
    assert x.grad.dtype == dtype
    logp, old, adv = (t.to(dtype) for t in (loss_mat, old, adv))
    assert eo.kl_cov_policy_loss(logp, old, adv, mask, loss_agg_mode=mode, **counts).loss.dtype == expected
    assert eo.clip_cov_policy_loss(logp, old, adv, mask, loss_agg_mode=mode, random_keys=keys,
                                   **counts).loss.dtype == expected


@pytest.mark.parametrize("name, value, message", [
    ("batch_num_tokens", "400", "expected a Python number >= 0 or a 0-d tensor"),
    ("batch_num_tokens", -1, "expected a Python number >= 0"),
    ("global_batch_size", torch.tensor([7]), "0-d real tensor, got a torch.int64 tensor of shape \\[1\\]"),
    ("global_batch_size", torch.tensor(True), "0-d real tensor"),
    ("global_batch_size", float("nan"), "expected a Python number >= 0"),
    ("loss_scale_factor", 0, "expected a Python number > 0"),
    ("loss_scale_factor", torch.tensor(2.0, device="meta"), "is on meta but the loss is on cpu"),
])
def test_global_counts_are_numbers_or_0d_tensors(name, value, message):
    x, m = torch.randn(3, 5), torch.rand(3, 5) > 0.3
    for call in (lambda: eo.agg_loss(x, m, "seq-mean-token-sum-norm", dp_size=2, **{"batch_num_tokens": 9,
                                                                                   "global_batch_size": 3,
                                                                                   name: value}),
                 lambda: eo.kl_cov_policy_loss(x, x, x, m, loss_agg_mode="token-mean", **{name: value})):
        with pytest.raises(ValueError, match=f"^{name}: .*{message}"):
            call()


@pytest.mark.parametrize("mode", MODES)
def test_global_counts_as_numbers_and_tensors_agree(mode):
    """A Python count is divided by as a number (verl does so; on a GPU a tensor made of it would be
    a blocking copy), a 0-d tensor as a tensor, on CPU or on the loss's device: the same loss."""
    x, m = torch.randn(4, 6, dtype=torch.float64), torch.rand(4, 6) > 0.3
    counts = dict(batch_num_tokens=30, global_batch_size=9, loss_scale_factor=5)
    ref = R.agg_loss_ref(x, m, mode, dp_size=3, **counts)
    assert_close64(eo.agg_loss(x, m, mode, dp_size=3, **counts), ref)
    assert_close64(eo.agg_loss(x, m, mode, dp_size=3, **{k: torch.tensor(v) for k, v in counts.items()}), ref)
    zero = dict(batch_num_tokens=0, global_batch_size=torch.tensor(0))  # a count of 0 divides by 1
    assert eo.agg_loss(x, torch.zeros_like(m), mode, dp_size=3, **zero) == 0
