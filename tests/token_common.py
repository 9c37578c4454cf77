"""Inputs shared by the token-level op tests (window entropy, quantiles, peak masks, losses)."""
import torch

TOKEN_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
# The backends with token-level kernels on CPU tensors: the reference path and the native one.
TOKEN_BACKENDS = ["torch", "cpu"]


def acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def make_batch(n_rows, row_len, dtype=torch.float32, seed=0, p_valid=0.7, nan_padding=True):
    """``(x [B, T], mask [B, T])``: entropies in [0, 6), about ``p_valid`` of them valid; row 0 all
    masked and row 1 with a single valid token (when there are enough rows); masked entries NaN
    (``nan_padding``), so that any read of them shows."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n_rows, row_len, generator=gen, dtype=torch.float64) * 6
    mask = torch.rand(n_rows, row_len, generator=gen) < p_valid
    if n_rows >= 3 and row_len >= 2:
        mask[0] = False
        mask[1] = False
        mask[1, row_len // 2] = True
    if nan_padding:
        x = torch.where(mask, x, float("nan"))
    return x.to(dtype), mask


def make_packed(lengths, dtype=torch.float32, seed=0, p_valid=0.8, offsets_dtype=torch.int32):
    """``(x [N], mask [N], cu_seqlens [S + 1])`` of sequences of the given lengths (0 allowed)."""
    gen = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    x = (torch.rand(n, generator=gen, dtype=torch.float64) * 6).to(dtype)
    mask = torch.rand(n, generator=gen) < p_valid
    cu = torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0).to(offsets_dtype)
    return x, mask, cu


def rows_as_packed(x_rows, mask_rows, lengths):
    """The first ``lengths[b]`` tokens of each row of ``[B, T]``, packed, with their offsets."""
    xs = [x_rows[b, :n] for b, n in enumerate(lengths)]
    ms = [mask_rows[b, :n] for b, n in enumerate(lengths)]
    cu = torch.tensor([0] + list(lengths)).cumsum(0)
    return torch.cat(xs), torch.cat(ms), cu


def prefix_mask(row_len, lengths):
    """bool ``[B, T]``: True on the first ``lengths[b]`` tokens of row ``b``."""
    return torch.arange(row_len)[None, :] < torch.tensor(lengths)[:, None]


def check_strided_layouts(device="cpu"):
    """Packed tokens whose ``x``, ``mask`` and int64 ``cu_seqlens`` are strided views (stride 2), and
    an expanded (stride-0) mask, give the same bits as their contiguous copies, through the public
    ops on the current backend: ``window_entropy`` forward and backward, ``masked_quantile`` per
    sequence and over all tokens. Kernels read the flat tensors with unit stride, so a view that
    reached one unconverted would be misread (an expanded mask of 1 byte, read out of bounds)."""
    import entropy_ops as eo

    gen = torch.Generator().manual_seed(17)
    x = (torch.rand(2 * 70, generator=gen, dtype=torch.float64) * 6).float().to(device)[::2]
    mask = (torch.rand(2 * 70, generator=gen) < 0.7).to(device)[::2]
    cu = torch.tensor([0, 99, 25, 99, 25, 99, 61, 99, 70, 99], device=device)[::2]  # [0, 25, 25, 61, 70]
    expanded = torch.ones(1, dtype=torch.bool, device=device).expand(70)
    for m in (mask, expanded):
        pairs = ((x, m, cu), (x.contiguous(), m.contiguous(), cu.contiguous()))
        outs, grads = [], []
        for xs, ms, cs in pairs:
            xg = xs.detach().requires_grad_(True)  # a leaf that keeps the view's strides
            out = eo.window_entropy(xg, ms, 3, 1, cs)
            (grad,) = torch.autograd.grad(out, xg, torch.linspace(0.5, 1.5, 70, device=device))
            outs.append((out.detach(), eo.masked_quantile(xs, ms, 0.8, cu_seqlens=cs),
                         eo.masked_quantile(xs, ms, 0.3, per_sequence=False)))
            grads.append(grad)
        for strided, contiguous in zip(outs[0], outs[1]):
            assert torch.equal(strided.nan_to_num(-7.0), contiguous.nan_to_num(-7.0)), (strided, contiguous)
        assert torch.equal(grads[0], grads[1])


KEY_HIGH = 2**62


def policy_batch(B=4, T=40, seed=0, p_valid=0.8, dtype=torch.float32):
    """``(logp, old_logp, advantages, mask, keys)`` of shape ``[B, T]``: log-probs in (-3, 0],
    old log-probs 0.2 away, advantages ~ N(0, 9), about ``p_valid`` of the tokens valid, and int64
    random keys in [0, 2^62) for Clip-Cov's choice."""
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=gen, dtype=torch.float64).mul(3).to(dtype)
    old = (logp.double() + 0.2 * torch.randn(B, T, generator=gen, dtype=torch.float64)).to(dtype)
    adv = (torch.randn(B, T, generator=gen, dtype=torch.float64) * 3).to(dtype)
    mask = torch.rand(B, T, generator=gen) < p_valid
    keys = torch.randint(0, KEY_HIGH, (B, T), generator=gen)
    return logp, old, adv, mask, keys


def assert_close64(a, b, tol=1e-6):
    torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=tol)
