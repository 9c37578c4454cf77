"""The ``torch`` backend: pure PyTorch, chunked over rows, the portable fallback.

At most one chunk of float32 temporaries (``_CHUNK_ELEMS`` elements each) is alive at a time, so
memory stays flat in N. Eager torch changes bits with the batch, so this path is exempt from
batch invariance (SPEC §2).
"""
import math

import torch

from .._backends import Backend, register_backend, register_kernel
from ..ops._types import TokenStats
from .kernel import RowKernel, acc_dtype

_CHUNK_ELEMS = 1 << 22


def _chunks(n_rows: int, vocab: int):
    step = max(1, _CHUNK_ELEMS // max(vocab, 1))
    for start in range(0, n_rows, step):
        yield start, min(n_rows, start + step)


def _temperature(temperature, temperature_scalar, start, end):
    """The temperature of a chunk of rows: the Python float, or a ``[rows, 1]`` column."""
    return temperature_scalar if temperature is None else temperature[start:end, None]


def _shifted(x, temperature, temperature_scalar, start, end):
    """``((x - max x) / T, max x)`` of a chunk of rows, the max in raw-logit units ``[rows, 1]``.
    The shift is taken before dividing (``x - max x`` is exact), so rows shifted by 1e4 keep their
    digits."""
    raw = x[start:end].to(acc_dtype(x.dtype))
    m = raw.amax(dim=-1, keepdim=True)
    # An all -inf row gives -inf - -inf = NaN here; it is made NaN explicitly anyway.
    return (raw - m) / _temperature(temperature, temperature_scalar, start, end), m


def _mean_shifted(x, temperature, temperature_scalar, start, end):
    """``mean_j (x_j - max x) / T`` of a chunk of rows, float64 ``[rows]``."""
    raw = x[start:end].to(torch.float64)
    t = temperature_scalar if temperature is None else temperature[start:end].double()
    return (raw - raw.amax(dim=-1, keepdim=True)).mean(-1) / t


def _label_terms(labels, ignore_index, vocab, start, end):
    y = labels[start:end].long()
    ignored = y == ignore_index
    in_range = (y >= 0) & (y < vocab)
    return y.clamp(0, vocab - 1), ignored, in_range


def label_log_prob(x_y, row_max, log_norm, temperature):
    """``(x_y - row_max) / T - log_norm`` in float64, rounded once to ``log_norm``'s dtype, as the
    native kernels' ``label_log_prob``: in float32 the division and the subtraction each round at
    the size of logp, which at low temperatures is in the hundreds. The tensors broadcast (``[rows,
    K]`` labels against ``[rows, 1]`` states); ``temperature`` is a Python float or a tensor."""
    t = temperature.double() if isinstance(temperature, torch.Tensor) else temperature
    return ((x_y.double() - row_max.double()) / t - log_norm.double()).to(log_norm.dtype)


def _chunk_label_log_prob(x, y, row_max, log_norm, temperature, temperature_scalar, start, end):
    """:func:`label_log_prob` of each row's label in a chunk (``y`` clamped into range), ``[rows]``."""
    x_y = x[start:end].gather(-1, y[:, None])
    t = _temperature(temperature, temperature_scalar, start, end)
    return label_log_prob(x_y, row_max[:, None], log_norm[:, None], t).squeeze(-1)


def entropy_fwd_torch(x, labels, temperature, temperature_scalar, ignore_index, mask):
    n_rows, vocab = x.shape
    acc = acc_dtype(x.dtype)
    row_max, log_norm, entropy = (torch.empty(n_rows, dtype=acc, device=x.device) for _ in range(3))
    logp = torch.empty_like(entropy) if labels is not None else None
    for start, end in _chunks(n_rows, vocab):
        shifted, m = _shifted(x, temperature, temperature_scalar, start, end)
        e = shifted.exp()
        s = e.sum(-1)
        # Shifted accumulation of sum p z, and a p = 0 term is exactly 0 (never 0 * -inf).
        s_z = torch.where(e > 0, e * shifted, 0).sum(-1)
        m = m.squeeze(-1)
        # NaN/+inf entries give a NaN sum already; an all -inf row (m = -inf) has no distribution
        # either, and SPEC wants NaN for it too.
        log_s = torch.where(torch.isneginf(m), float("nan"), s.log())
        row_max[start:end] = m
        log_norm[start:end] = log_s
        entropy[start:end] = log_s - s_z / s
        if labels is not None:
            y, ignored, in_range = _label_terms(labels, ignore_index, vocab, start, end)
            # (x_y - m) / T - log s keeps the digits that z_y - lse loses on rows shifted by 1e4.
            label_lp = _chunk_label_log_prob(x, y, m, log_s, temperature, temperature_scalar, start, end)
            row_logp = torch.where(in_range & ~torch.isnan(log_s), label_lp, float("nan"))
            logp[start:end] = torch.where(ignored, 0, row_logp)
    if mask is not None:
        row_max, log_norm, entropy = (torch.where(mask, v, 0) for v in (row_max, log_norm, entropy))
        logp = torch.where(mask, logp, 0) if logp is not None else None
    return row_max, log_norm, entropy, logp


def entropy_bwd_torch(x, labels, temperature, temperature_scalar, ignore_index, mask, row_max,
                      log_norm, entropy, grad_entropy, grad_logp, out):
    n_rows, vocab = x.shape
    for start, end in _chunks(n_rows, vocab):
        t = _temperature(temperature, temperature_scalar, start, end)
        raw = x[start:end].to(row_max.dtype)
        # log p from the saved row max and log-sum (never z - lse, see kernel.py's "Row state").
        log_p = (raw - row_max[start:end, None]) / t - log_norm[start:end, None]
        p = log_p.exp()
        g = torch.zeros_like(log_p)
        if grad_entropy is not None:
            g_h = grad_entropy[start:end, None]
            # p == 0 (a masked token) gives exactly 0; a bad row's NaN p stays NaN, as on cpu.
            d_h = torch.where(p == 0, 0, -p * (log_p + entropy[start:end, None]))
            g = g + torch.where(g_h != 0, g_h * d_h, 0)
        if labels is not None and grad_logp is not None:
            y, ignored, _ = _label_terms(labels, ignore_index, vocab, start, end)
            one_hot = (torch.arange(vocab, device=y.device) == y[:, None]).to(log_p.dtype)
            g_l = grad_logp[start:end, None]
            live = (g_l != 0) & ~ignored[:, None]
            g = g + torch.where(live, g_l * (one_hot - p), 0)
        g = g / t
        if mask is not None:
            g = torch.where(mask[start:end, None], g, 0)
        out[start:end] = g


def token_stats_torch(x, labels, temperature, temperature_scalar, ignore_index, mask):
    """:class:`TokenStats` of SPEC §3.1 as ``[N]`` tensors in the accumulation dtype (``logp`` None
    without labels), from one shifted pass per chunk. Every statistic is taken relative to the
    row's own max and log-sum (``log p = (z - m) - log s``), never from ``z - lse``, so rows shifted
    by 1e4 keep their digits."""
    n_rows, vocab = x.shape
    acc = acc_dtype(x.dtype)
    names = ("lse", "entropy", "max_logp", "collision", "varentropy", "self_certainty", "entropy_drift")
    out = {name: torch.empty(n_rows, dtype=acc, device=x.device) for name in names}
    out["logp"] = torch.empty(n_rows, dtype=acc, device=x.device) if labels is not None else None
    for start, end in _chunks(n_rows, vocab):
        shifted, m = _shifted(x, temperature, temperature_scalar, start, end)
        e = shifted.exp()
        live = e > 0  # p_j = 0 terms contribute exactly 0 (never 0 * -inf)
        s = e.sum(-1, keepdim=True)
        log_s = s.log()
        log_p = shifted - log_s
        p = e / s
        h = log_s - torch.where(live, e * shifted, 0).sum(-1, keepdim=True) / s
        # varentropy as sum p (log p + H)^2: equal to sum p (log p)^2 - H^2, never negative, and
        # free of the cancellation between two terms of size H^2.
        centred = log_p + h
        # m / T + log s finished in float64 and rounded once, as the native kernels: in float32 the
        # two round apart, up to 1.5 ulp of lse off on rows shifted by 1e4.
        t = _temperature(temperature, temperature_scalar, start, end)
        lse = (m.double() / (t.double() if isinstance(t, torch.Tensor) else t) + log_s.double()).squeeze(-1).to(acc)
        # NaN/+inf entries, or an all -inf row; not an lse that overflows to -inf (a row of
        # finfo.min at T < 1 is a uniform distribution, as on cpu and cuda).
        bad = torch.isnan(log_s.squeeze(-1)) | torch.isneginf(m.squeeze(-1))
        rows = {
            "lse": lse,
            "entropy": h.squeeze(-1),
            "max_logp": -log_s.squeeze(-1),  # max_j z_j - lse = (m - m) - log s
            "collision": (p * p).sum(-1),
            "varentropy": torch.where(live, p * centred * centred, 0).sum(-1),
            # mean_j z_j - m is the mean of the shifted row: -inf (so +inf here) with -inf entries;
            # x - max summed in float64 and divided by T there, so that finfo.min entries
            # (masked_fill's idiom) overflow neither the sum nor (x - max) / T at T < 1.
            "self_certainty": (log_s.squeeze(-1).double() - _mean_shifted(x, temperature, temperature_scalar,
                                                                            start, end) - math.log(vocab)).to(acc),
            "entropy_drift": torch.where(live, p * p * centred, 0).sum(-1),
        }
        for name, value in rows.items():
            out[name][start:end] = torch.where(bad, float("nan"), value)
        if labels is not None:
            y, ignored, in_range = _label_terms(labels, ignore_index, vocab, start, end)
            label_lp = _chunk_label_log_prob(x, y, m.squeeze(-1), log_s.squeeze(-1), temperature,
                                             temperature_scalar, start, end)
            row_logp = torch.where(in_range & ~bad, label_lp, float("nan"))
            out["logp"][start:end] = torch.where(ignored, 0, row_logp)
    if mask is not None:
        out = {name: None if v is None else torch.where(mask, v, 0) for name, v in out.items()}
    return TokenStats(**out)


register_backend(Backend("torch", lambda: (True, ""), devices=("cpu", "cuda", "xpu", "mps")))
_KERNEL = RowKernel(entropy_fwd_torch, entropy_bwd_torch)
register_kernel("torch", "entropy", _KERNEL)
register_kernel("torch", "logprobs_and_entropy", _KERNEL)
register_kernel("torch", "token_stats", token_stats_torch)
