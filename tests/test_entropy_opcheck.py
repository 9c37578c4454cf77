"""``torch.library.opcheck`` on every entropy custom op (schema, fake, autograd registration,
AOT dispatch), with each CPU backend string."""
import pytest
import torch

import entropy_ops  # noqa: F401  (registers the ops)

OPS = torch.ops.entropy_ops


def _inputs(dtype, requires_grad=True):
    gen = torch.Generator().manual_seed(91)
    x = torch.randn(2, 3, 17, generator=gen).to(dtype).requires_grad_(requires_grad)
    y = torch.randint(17, (2, 3), generator=gen)
    y[0, 1] = -100
    t = torch.rand(2, 3, generator=gen) + 0.5
    mask = torch.tensor([[True, False, True], [True, True, True]])
    return x, y, t, mask


def _variants(dtype):
    x, y, t, mask = _inputs(dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    t = t.to(acc)
    return {
        "plain": (x, None, 1.0, None),
        "float_temperature_mask": (x, None, 0.7, mask),
        "tensor_0d_temperature": (x, torch.tensor(1.3, dtype=acc), 1.0, None),
        "per_row_temperature_mask": (x, t, 1.0, mask),
    }, y


@pytest.mark.parametrize("variant", ["plain", "float_temperature_mask", "tensor_0d_temperature", "per_row_temperature_mask"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_opcheck_entropy(backend, dtype, variant):
    variants, _ = _variants(dtype)
    x, t, t_scalar, mask = variants[variant]
    torch.library.opcheck(OPS.entropy.default, (x, t, t_scalar, mask, False, backend))


@pytest.mark.parametrize("variant", ["plain", "float_temperature_mask", "tensor_0d_temperature", "per_row_temperature_mask"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_opcheck_logprobs_and_entropy(backend, dtype, variant):
    variants, y = _variants(dtype)
    x, t, t_scalar, mask = variants[variant]
    torch.library.opcheck(OPS.logprobs_and_entropy.default, (x, y, t, t_scalar, -100, mask, False, backend))
    torch.library.opcheck(OPS.logprobs_and_entropy.default, (x, y.int(), t, t_scalar, -100, mask, False, backend))


def _bwd_args(backend, dtype, with_labels, with_grad_entropy, with_grad_logp):
    x, y, t, mask = _inputs(dtype, requires_grad=False)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    t = t.to(acc)
    row_max = x.to(acc).amax(-1)
    log_norm = torch.logsumexp((x.to(acc) - row_max.unsqueeze(-1)) / t.unsqueeze(-1), -1)
    h = torch.rand(2, 3, dtype=acc)
    g_h = torch.randn(2, 3, dtype=acc) if with_grad_entropy else None
    g_l = torch.randn(2, 3, dtype=acc) if with_grad_logp else None
    return (x, y if with_labels else None, t, 1.0, -100, mask, row_max, log_norm, h, g_h, g_l, backend)


@pytest.mark.parametrize("grads", ["entropy", "logp", "both"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_opcheck_entropy_bwd(backend, dtype, grads):
    args = _bwd_args(backend, dtype, grads != "entropy", grads != "logp", grads != "entropy")
    torch.library.opcheck(OPS.entropy_bwd.default, args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_opcheck_entropy_bwd_inplace(backend, dtype):
    args = _bwd_args(backend, dtype, True, True, True)
    expected = OPS.entropy_bwd.default(*args)
    torch.library.opcheck(OPS.entropy_bwd_.default, (args[0].clone(),) + args[1:])
    x = args[0].clone()
    OPS.entropy_bwd_.default(x, *args[1:])
    assert torch.equal(x, expected)


def test_opcheck_on_a_grid_of_rows(backend):
    """``logits[:, :-1]`` is read in place on a grid and the backward's gradient keeps that layout
    (``ops/_rows.py``): the fake implementations must give the real strides."""
    from entropy_ops.ops._rows import Rows
    gen = torch.Generator().manual_seed(7)
    full = torch.randn(2, 6, 17, generator=gen)
    x = full[:, :-1]
    assert Rows(x).on_grid
    y = torch.randint(17, (2, 5), generator=gen)
    torch.library.opcheck(OPS.entropy.default, (x.detach().requires_grad_(False), None, 0.7, None, False, backend))
    torch.library.opcheck(OPS.logprobs_and_entropy.default, (x, y, None, 1.0, -100, None, False, backend))
    row_max = x.amax(-1)
    log_norm = torch.logsumexp(x - row_max.unsqueeze(-1), -1)
    args = (x, y, None, 1.0, -100, None, row_max, log_norm, torch.rand(2, 5), torch.randn(2, 5),
            torch.randn(2, 5), backend)
    grad = OPS.entropy_bwd.default(*args)
    assert grad.stride() == (6 * 17, 17, 1), grad.stride()
    torch.library.opcheck(OPS.entropy_bwd.default, args)
    inplace = full.clone()
    OPS.entropy_bwd_.default(inplace[:, :-1], *args[1:])
    assert torch.equal(inplace[:, :-1], grad) and torch.equal(inplace[:, -1], full[:, -1])
    torch.library.opcheck(OPS.entropy_bwd_.default, (full.clone()[:, :-1],) + args[1:])
