"""``linear_logprobs_and_entropy`` chunked over rows: the product of one chunk of hidden rows with
the LM head (``torch.mm``: MKL/oneDNN on CPU, cuBLAS on CUDA), then a backend's row kernels
(:class:`RowKernel`) on that chunk of logits. The ``torch``, ``cpu`` and ``cuda`` backends are this
driver with their own row kernels; ``triton`` has fused kernels of its own
(``triton_kernels/linear_entropy.py``).

Memory beyond inputs, outputs and gradients: one ``[rows, V]`` chunk of float32 logits in the
forward; in the backward up to four with ``softcap`` and ``K > 1`` labels (the logits, softcap's
chain factor, the separate gradient of K > 1 labels and their probabilities; each op in place
where it can), O(N) row states, and, for a bf16/fp16 LM head, a
float32 accumulator of ``grad_weight`` (and on CPU a float32 copy of the weight: CPU BLAS has no
half-precision product with a float32 output). Never an ``[N, V]`` tensor.

Bits. Every product a row takes part in has at least ``_MIN_GEMM_ROWS`` rows (a short last chunk is
zero-padded): MKL's sgemm gives a row different bits when M < 16 (a GEMV-like path; measured) and
the same bits for every M >= 16, so ``logp``, ``entropy`` and ``grad_hidden`` are the same for any
``chunk_size`` and any N. ``grad_weight`` and ``grad_bias`` are sums over rows, accumulated chunk
by chunk: their rounding follows the chunking.
"""
from typing import NamedTuple, Optional

import torch

from .kernel import RowKernel, acc_dtype
from .torch_backend import label_log_prob

_MIN_GEMM_ROWS = 16
# Elements of one chunk of float32 logits: 16 MB on CPU (cache-friendly row kernels), 1 GB on CUDA:
# each chunk reads and writes the float32 grad_weight accumulator once (2 x V x D x 4 bytes, 5 GB at
# V = 152K, D = 4096), so chunks must hold enough rows (1766 there) for that to stay small next to
# the GEMMs. Unmeasured on a GPU.
_CHUNK_ELEMS = {"cuda": 1 << 28}
_DEFAULT_CHUNK_ELEMS = 1 << 22


class LinearArgs(NamedTuple):
    """Validated, flattened inputs: ``hidden [N, D]``, ``weight [V, D]``, ``bias [V]`` or None,
    ``labels [N, K]``, ``temperature [N]`` (accumulation dtype) or None, ``mask [N]`` or None;
    ``softcap`` 0.0 means none; ``chunk_size`` 0 means the default."""
    hidden: torch.Tensor
    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    labels: torch.Tensor
    temperature: Optional[torch.Tensor]
    temperature_scalar: float
    ignore_index: int
    mask: Optional[torch.Tensor]
    logit_scale: float
    softcap: float
    chunk_size: int


class LinearKernel(NamedTuple):
    fwd: object  # (LinearArgs) -> (logp [N, K], entropy [N], state [N, 2]) in the accumulation dtype;
    #              state[:, 0] the raw max of each row of z, state[:, 1] its log_norm (kernel.py)
    bwd: object  # (LinearArgs, state, entropy, grad_logp [N, K]|None, grad_entropy [N]|None,
    #               need_hidden, need_weight) -> (grad_hidden|None, grad_weight|None, grad_bias|None)


def chunk_rows(vocab: int, device: torch.device, chunk_size: int) -> int:
    """Rows per chunk: ``chunk_size`` or a default from V alone (batch invariance), at least 16."""
    rows = chunk_size or max(1, _CHUNK_ELEMS.get(device.type, _DEFAULT_CHUNK_ELEMS) // vocab)
    return max(rows, _MIN_GEMM_ROWS)


def _chunks(n_rows: int, rows: int):
    for start in range(0, n_rows, rows):
        yield start, min(n_rows, start + rows)


# torch.mm / torch.addmm take out_dtype= (a half product with a float32 result) from torch 2.8 on;
# before, a half head on CUDA takes the float32 path of CPU heads (a float32 copy of the weight).
_MM_OUT_DTYPE = torch.torch_version.TorchVersion(torch.__version__) >= (2, 8)


def _half_on_cuda(t: torch.Tensor) -> bool:
    return _MM_OUT_DTYPE and t.is_cuda and t.dtype in (torch.bfloat16, torch.float16)


def product_weight(weight: torch.Tensor) -> torch.Tensor:
    """The weight the products read: itself, or its float32 copy for a half-precision weight off
    CUDA (products in float32 give float32 logits, more exact than eager's rounded ones)."""
    if weight.dtype in (torch.float32, torch.float64) or _half_on_cuda(weight):
        return weight
    return weight.float()


def _mm_acc(a: torch.Tensor, b: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """``a @ b`` with an ``acc``-dtype result (half inputs on CUDA: cuBLAS with a float32 output)."""
    if a.dtype == acc:
        return torch.mm(a, b)
    if _half_on_cuda(a):
        return torch.mm(a, b, out_dtype=acc)
    return torch.mm(a.to(acc), b.to(acc))


def add_mm(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``out += a @ b`` in place (half inputs on CUDA: cuBLAS accumulating into the float32 ``out``
    with beta = 1), so no ``out``-sized temporary per chunk."""
    if a.dtype == out.dtype:
        out.addmm_(a, b)
    elif _half_on_cuda(a):
        torch.addmm(out, a, b, out_dtype=out.dtype, out=out)
    else:
        out += _mm_acc(a, b, out.dtype)


def _padded(h: torch.Tensor) -> torch.Tensor:
    if h.shape[0] >= _MIN_GEMM_ROWS:
        return h
    out = h.new_zeros(_MIN_GEMM_ROWS, h.shape[1])
    out[:h.shape[0]] = h
    return out


def chunk_logits(a: LinearArgs, w: torch.Tensor, h_chunk: torch.Tensor) -> torch.Tensor:
    """``z = softcap * tanh(logit_scale * (h @ W^T + b) / softcap)`` (``logit_scale * (...)`` without
    softcap) of a chunk of rows, ``[max(rows, 16), V]`` contiguous in the accumulation dtype; the
    temperature is left to the row kernels."""
    acc = acc_dtype(a.hidden.dtype)
    z = _mm_acc(_padded(h_chunk), w.t(), acc)
    if a.bias is not None:
        z.add_(a.bias.to(acc))
    if a.logit_scale != 1.0:
        z.mul_(a.logit_scale)
    if a.softcap:
        z.div_(a.softcap).tanh_().mul_(a.softcap)
    return z


def _per_row_slice(t, start, end):
    return None if t is None else t[start:end]


def gather_logp(z, labels, temperature, temperature_scalar, ignore_index, mask, row_max, log_norm):
    """``logp_k = (z_{y_k} - row_max) / T - log_norm`` for ``[rows, K]`` labels, in float64 and
    rounded once (as the row kernels' ``label_log_prob``, so K = 1 and K > 1 give the same bits): 0
    where ignored or masked, NaN where the label is out of range or the row is bad (NaN log_norm)."""
    vocab = z.shape[1]
    y = labels.long()
    in_range = (y >= 0) & (y < vocab)
    t = temperature_scalar if temperature is None else temperature[:, None]
    z_y = z.gather(1, y.clamp(0, vocab - 1))
    logp = torch.where(in_range, label_log_prob(z_y, row_max[:, None], log_norm[:, None], t), float("nan"))
    logp = torch.where(y == ignore_index, 0, logp)
    return logp if mask is None else torch.where(mask[:, None], logp, 0)


def chunk_row_states(row_kernel: RowKernel, a: LinearArgs, z, start, end):
    """``(row_max, log_norm, entropy, logp [rows, K])`` of one chunk of logits ``z [rows, V]``: the
    one place where per-chunk row states are produced."""
    t, m = _per_row_slice(a.temperature, start, end), _per_row_slice(a.mask, start, end)
    y = a.labels[start:end]
    if y.shape[1] == 1:  # the row kernel's own logp
        row_max, log_norm, h, logp = row_kernel.fwd(z, y[:, 0], t, a.temperature_scalar, a.ignore_index, m)
        return row_max, log_norm, h, logp[:, None]
    row_max, log_norm, h, _ = row_kernel.fwd(z, None, t, a.temperature_scalar, a.ignore_index, m)
    return row_max, log_norm, h, gather_logp(z, y, t, a.temperature_scalar, a.ignore_index, m, row_max,
                                             log_norm)


def linear_fwd_chunked(row_kernel: RowKernel, a: LinearArgs):
    n_rows, vocab = a.hidden.shape[0], a.weight.shape[0]
    acc = acc_dtype(a.hidden.dtype)
    dev = a.hidden.device
    logp = torch.empty(n_rows, a.labels.shape[1], dtype=acc, device=dev)
    entropy = torch.empty(n_rows, dtype=acc, device=dev)
    state = torch.empty(n_rows, 2, dtype=acc, device=dev)
    w = product_weight(a.weight)
    for start, end in _chunks(n_rows, chunk_rows(vocab, dev, a.chunk_size)):
        z = chunk_logits(a, w, a.hidden[start:end])[:end - start]
        row_max, log_norm, entropy[start:end], logp[start:end] = chunk_row_states(row_kernel, a, z, start, end)
        state[start:end, 0], state[start:end, 1] = row_max, log_norm
        del z  # before the next chunk's product allocates its own
    return logp, entropy, state


def _label_grads(g, z, a, start, end, row_max, log_norm, grad_logp):
    """Adds ``sum_k g_k (1[j = y_k] - p_j) / T`` to ``g`` for ``[rows, K]`` labels (K > 1)."""
    vocab = z.shape[1]
    y = a.labels[start:end].long()
    live = (y != a.ignore_index) & (grad_logp != 0)
    if a.mask is not None:
        live &= a.mask[start:end, None]
    g_k = torch.where(live, grad_logp, 0)
    total = g_k.sum(1, keepdim=True)
    t = a.temperature_scalar if a.temperature is None else a.temperature[start:end, None]
    # At the label columns, (c (1 - q) - o q) / t with c the upstream gradient of the candidates on
    # that column and o that of the others (c + o = total): `total q / t` and a scatter of g_k / t
    # cancel only to ulp(total) / t where q ~ 1 (every candidate on the argmax at a low T; 5e-4 at
    # T = 1e-3 where the gradient is ~0). Duplicate columns get the same value from each candidate.
    y = y.clamp(0, vocab - 1)
    same = y.unsqueeze(2) == y.unsqueeze(1)
    c = torch.where(same, g_k.unsqueeze(1), 0).sum(2)
    o = torch.where(same, 0, g_k.unsqueeze(1)).sum(2)
    q_y = z.gather(1, y).sub_(row_max[:, None]).div_(t).sub_(log_norm[:, None]).exp_()
    at_labels = g.gather(1, y).add_(torch.where((g_k != 0).any(1, keepdim=True), (c * (1 - q_y) - o * q_y) / t, 0))
    # One chunk-sized buffer, in place: total * p / t, and exactly 0 where total is 0 (p may be NaN).
    p = z.sub(row_max[:, None]).div_(t).sub_(log_norm[:, None]).exp_().mul_(total).div_(t)
    p.masked_fill_(total == 0, 0)
    g.sub_(p)
    g.scatter_(1, y, at_labels)


def _chunk_grad_logits(row_kernel, a, w, start, end, row_max, log_norm, entropy, grad_logp, grad_entropy):
    """``dL/d(h W^T + b)`` of one chunk, ``[max(rows, 16), V]`` in the accumulation dtype (padding
    rows 0): the row kernel's ``dL/dz``, then the chain through softcap and logit_scale."""
    rows = end - start
    z_full = chunk_logits(a, w, a.hidden[start:end])
    z = z_full[:rows]
    factor = None
    if a.softcap:  # d z / d pre = logit_scale * (1 - tanh^2), tanh = z / softcap
        factor = (z / a.softcap).square_().neg_().add_(1.0).mul_(a.logit_scale)
    t, m = _per_row_slice(a.temperature, start, end), _per_row_slice(a.mask, start, end)
    y = a.labels[start:end]
    one_label = y.shape[1] == 1
    g_full = z_full if one_label else torch.empty_like(z_full)  # the kernel may overwrite its input
    g = g_full[:rows]
    row_kernel.bwd(z, y[:, 0] if one_label else None, t, a.temperature_scalar, a.ignore_index, m,
                   row_max[start:end], log_norm[start:end], entropy[start:end],
                   _per_row_slice(grad_entropy, start, end),
                   grad_logp[start:end, 0] if one_label and grad_logp is not None else None, g)
    if not one_label and grad_logp is not None:
        _label_grads(g, z, a, start, end, row_max[start:end], log_norm[start:end], grad_logp[start:end])
    g_full[rows:] = 0
    if factor is not None:
        # Zeroed where g is 0 first: a masked row's factor may be NaN (NaN hidden), its gradient is 0.
        g.mul_(factor.masked_fill_(g == 0, 0))
    elif a.logit_scale != 1.0:
        g.mul_(a.logit_scale)
    return g_full


def gradient_rows(a: LinearArgs, grad_logp: Optional[torch.Tensor],
                  grad_entropy: Optional[torch.Tensor]) -> torch.Tensor:
    """Bool ``[N]``: the rows whose logits get a gradient (not masked, with a nonzero upstream
    gradient of H or of a non-ignored label's logp). Only their hidden states enter grad_weight's
    product: a NaN hidden state times its row's zero gradient would still be NaN (SPEC §2: masked,
    ignored and zero-gradient rows contribute exactly 0)."""
    live = (torch.zeros(a.hidden.shape[0], dtype=torch.bool, device=a.hidden.device)
            if grad_entropy is None else grad_entropy != 0)
    if grad_logp is not None:
        live = live | ((a.labels != a.ignore_index) & (grad_logp != 0)).any(1)
    return live if a.mask is None else live & a.mask


def linear_bwd_chunked(row_kernel: RowKernel, a: LinearArgs, state, entropy, grad_logp, grad_entropy,
                       need_hidden: bool, need_weight: bool):
    n_rows, vocab = a.hidden.shape[0], a.weight.shape[0]
    acc = acc_dtype(a.hidden.dtype)
    w = product_weight(a.weight)
    # Half GEMMs on CUDA (cuBLAS, float32 accumulation inside); float32 ones elsewhere.
    mm_dtype = a.weight.dtype if _half_on_cuda(a.weight) else acc
    live = gradient_rows(a, grad_logp, grad_entropy) if need_weight else None
    grad_hidden = torch.empty(a.hidden.shape, dtype=a.hidden.dtype, device=a.hidden.device) if need_hidden else None
    grad_w = torch.zeros(a.weight.shape, dtype=acc, device=a.weight.device) if need_weight else None
    grad_b = torch.zeros(vocab, dtype=acc, device=a.weight.device) if need_weight and a.bias is not None else None
    row_max, log_norm = state[:, 0].contiguous(), state[:, 1].contiguous()
    for start, end in _chunks(n_rows, chunk_rows(vocab, a.hidden.device, a.chunk_size)):
        rows = end - start
        g = _chunk_grad_logits(row_kernel, a, w, start, end, row_max, log_norm, entropy, grad_logp,
                               grad_entropy)
        g_mm = g.to(mm_dtype)
        if need_hidden:
            grad_hidden[start:end] = _mm_acc(g_mm, w.to(mm_dtype), acc)[:rows]
        if need_weight:
            h = torch.where(live[start:end, None], a.hidden[start:end], 0)
            add_mm(grad_w, g_mm.t(), _padded(h).to(mm_dtype))
            if grad_b is not None:
                grad_b += g.sum(0)
        del g, g_mm  # before the next chunk's product allocates its own
    cast = (lambda t: None if t is None else t.to(a.weight.dtype))
    return grad_hidden, cast(grad_w), cast(grad_b)


def linear_kernel(row_kernel: RowKernel) -> LinearKernel:
    """The chunked driver around a backend's row kernels."""
    return LinearKernel(
        lambda a: linear_fwd_chunked(row_kernel, a),
        lambda a, *rest: linear_bwd_chunked(row_kernel, a, *rest),
    )


def _register_torch():
    from .._backends import register_kernel
    from .torch_backend import _KERNEL
    register_kernel("torch", "linear_logprobs_and_entropy", linear_kernel(_KERNEL))


_register_torch()
