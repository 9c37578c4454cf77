"""Launchers of the fused linear + entropy kernels (linear_entropy.py): choose tile and split sizes
(functions of V and the dtype alone, so a row's bits never depend on the batch), allocate, launch,
merge the per-split row states, and run the two backward GEMMs in cuBLAS.

What is fused: forward entirely (product tiles, bias, scale, softcap, online softmax state, label
logits; the ``[N, V]`` logits never exist); backward's recomputation of the logits and the gradient
``dL/d(h W^T + b)`` of a chunk of vocabulary columns. Not fused: the merge of the per-split states
(O(N * splits) torch ops) and backward's ``grad_hidden += g @ W[cols]`` and ``grad_weight[cols] =
g^T @ h`` (cuBLAS on an ``[N, cols]`` chunk of ``g`` in the weight's dtype).

Bits: the forward is batch invariant (tiles and splits depend on V and the dtype only). In the
backward the column chunk is sized from the memory budget and N, so grad_hidden's float32 sums over
chunks round differently for different N or chunk_size; grad_weight and grad_bias are one GEMM / sum
per column chunk over all rows.
"""
import contextlib

import torch
import triton

from ..backends.kernel import acc_dtype
from ..backends.torch_backend import label_log_prob
from ..backends.torch_linear import _mm_acc, add_mm, chunk_rows, gradient_rows
from . import FP_FUSION
from .linear_entropy import linear_entropy_bwd_kernel, linear_entropy_fwd_kernel

_SPLIT = 16384  # vocabulary entries per forward program (a multiple of BLOCK_N)
# 64 x 128 tiles on 8 warps: the largest that ptxas fits without spills on sm80/90/100/120 with
# every flag on (128 x 128, 64 x 256 and 4-warp variants spill: tests/test_triton_compile_linear.py).
BLOCK_M, BLOCK_N = 64, 128
NUM_WARPS = 8


def tile_sizes(dtype: torch.dtype):
    """``(BLOCK_K, precision, num_stages)``: float32 products in full IEEE precision (TF32 would be
    ~1e-3 off eager float32), half products on tensor cores. BLOCK_K 64 (half) and 32 (float32)
    spill on sm80."""
    return (16, "ieee", 2) if dtype == torch.float32 else (32, "tf32", 3)


def split_sizes(vocab: int):
    split_size = min(_SPLIT, triton.cdiv(vocab, BLOCK_N) * BLOCK_N)
    return split_size, triton.cdiv(vocab, split_size)


def _on_device(x):
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _common(a):
    block_k, precision, num_stages = tile_sizes(a.hidden.dtype)
    flags = dict(HAS_BIAS=a.bias is not None, HAS_TEMP=a.temperature is not None, HAS_MASK=a.mask is not None,
                 SOFTCAP=bool(a.softcap), PRECISION=precision, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=block_k,
                 UPCAST=a.hidden.dtype == torch.bfloat16 and not a.hidden.is_cuda)
    return flags, dict(num_warps=NUM_WARPS, num_stages=num_stages)


def _contiguous_rows(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def merge_split_states(part, inv_t):
    """``(max, log s, entropy)`` per row from ``part [N, n_splits, 3] = (m, s, sz)``: the per-split
    row states merged in split order (SPEC §2: shifted accumulation), as ``online_softmax.merge``."""
    m, s, sz = part.unbind(-1)
    top = m.amax(1)
    base = torch.where(top == float("-inf"), 0, top)
    d = m - base[:, None]
    f = torch.exp(d * inv_t[:, None])
    s_row = (s * f).sum(1)
    sz_row = torch.where((s > 0) & (f > 0), (sz + d * s) * f, 0).sum(1)
    log_s = torch.where(s_row > 0, torch.log(s_row), float("nan"))
    return top, log_s, log_s - sz_row * inv_t / s_row


def _inv_t(a, n_rows, device):
    if a.temperature is None:
        return torch.full((n_rows,), 1.0 / a.temperature_scalar, dtype=torch.float32, device=device)
    return 1.0 / a.temperature


def linear_fwd_triton(a):
    h, w = _contiguous_rows(a.hidden), _contiguous_rows(a.weight)
    (n_rows, dim), vocab, n_labels = h.shape, w.shape[0], a.labels.shape[1]
    dev = h.device
    logp = torch.empty(n_rows, n_labels, dtype=torch.float32, device=dev)
    entropy = torch.empty(n_rows, dtype=torch.float32, device=dev)
    state = torch.empty(n_rows, 2, dtype=torch.float32, device=dev)
    if n_rows == 0:
        return logp, entropy, state
    split_size, n_splits = split_sizes(vocab)
    part = torch.empty(n_rows, n_splits, 3, dtype=torch.float32, device=dev)
    z_y = torch.zeros(n_rows, n_labels, dtype=torch.float32, device=dev)
    flags, launch = _common(a)
    with _on_device(h):
        linear_entropy_fwd_kernel[(triton.cdiv(n_rows, BLOCK_M), n_splits)](
            h, h.stride(0), w, w.stride(0), a.bias, n_rows, vocab, dim, split_size,
            a.temperature, float(a.temperature_scalar), a.labels, n_labels, a.mask,
            float(a.logit_scale), float(a.softcap or 1.0), part, n_splits, z_y, **flags, **launch,
            enable_fp_fusion=FP_FUSION,
        )
    inv_t = _inv_t(a, n_rows, dev)
    top, log_s, h_row = merge_split_states(part, inv_t)
    y = a.labels.long()
    t = a.temperature_scalar if a.temperature is None else a.temperature[:, None]
    label_lp = label_log_prob(z_y, top[:, None], log_s[:, None], t)
    lp = torch.where((y >= 0) & (y < vocab), label_lp, float("nan"))
    lp = torch.where(y == a.ignore_index, 0, lp)
    if a.mask is not None:
        lp, h_row = torch.where(a.mask[:, None], lp, 0), torch.where(a.mask, h_row, 0)
    logp.copy_(lp)
    entropy.copy_(h_row)
    state[:, 0], state[:, 1] = top, log_s
    return logp, entropy, state


def _label_grads(a, grad_logp):
    """``(g_k, G)``: the upstream logp gradients with ignored labels and masked rows zeroed, and
    their per-row sum."""
    live = a.labels != a.ignore_index
    if a.mask is not None:
        live &= a.mask[:, None]
    g_k = torch.where(live, grad_logp, 0).contiguous()
    return g_k, g_k.sum(1).contiguous()


def vocab_chunk(vocab: int, n_rows: int, device, chunk_size: int) -> int:
    """Columns of ``g`` per backward step: the memory of ``chunk_rows`` full rows spent on all N rows
    (a multiple of BLOCK_N, at least one tile)."""
    budget = chunk_rows(vocab, device, chunk_size) * vocab
    cols = max(BLOCK_N, budget // max(n_rows, 1) // BLOCK_N * BLOCK_N)
    return min(cols, triton.cdiv(vocab, BLOCK_N) * BLOCK_N)


def linear_bwd_triton(a, state, entropy, grad_logp, grad_entropy, need_hidden, need_weight):
    """Walks the vocabulary in chunks of columns (every row at once): per chunk the kernel writes
    ``g = dL/d(h W^T + b)`` ``[N, cols]`` in the weight's dtype, then ``grad_weight[cols] = g^T @ h``
    in one GEMM (a single rounding, no ``[V, D]`` accumulator) and ``grad_hidden += g @ W[cols]``
    into a float32 ``[N, D]`` accumulator (cheaper than accumulating ``[V, D]``: N*D << V*D)."""
    h, w = _contiguous_rows(a.hidden), _contiguous_rows(a.weight)
    (n_rows, dim), vocab, n_labels = h.shape, w.shape[0], a.labels.shape[1]
    acc = acc_dtype(h.dtype)
    grad_h = torch.zeros(n_rows, dim, dtype=acc, device=h.device) if need_hidden else None
    grad_w = torch.empty_like(w) if need_weight else None
    grad_b = torch.empty_like(a.bias) if need_weight and a.bias is not None else None
    if n_rows == 0:
        zero = (lambda t: None if t is None else t.zero_())
        return None if grad_h is None else grad_h.to(h.dtype), zero(grad_w), zero(grad_b)
    g_k = total = None
    if grad_logp is not None:
        g_k, total = _label_grads(a, grad_logp)
    # Rows without a gradient (masked, ignored, zero upstream) read 0: a NaN hidden state x 0 is NaN.
    h_w = torch.where(gradient_rows(a, grad_logp, grad_entropy)[:, None], h, 0) if need_weight else None
    cols = vocab_chunk(vocab, n_rows, h.device, a.chunk_size)
    flags, launch = _common(a)
    flags.update(HAS_GRAD_ENTROPY=grad_entropy is not None, HAS_GRAD_LOGP=grad_logp is not None)
    # The interpreter truncates float32 -> bf16 (GPUs round to nearest): there the kernel writes
    # float32 and torch rounds, so the interpreter tests see the GPU's numerics.
    g_buf = torch.empty(n_rows, cols, dtype=acc if flags["UPCAST"] else w.dtype, device=w.device)
    for v0 in range(0, vocab, cols):
        v1 = min(vocab, v0 + cols)
        g = g_buf[:, :v1 - v0]
        with _on_device(h):
            linear_entropy_bwd_kernel[(triton.cdiv(n_rows, BLOCK_M), triton.cdiv(v1 - v0, BLOCK_N))](
                h, h.stride(0), w[v0:v1], w.stride(0), None if a.bias is None else a.bias[v0:v1],
                n_rows, v1 - v0, dim, v0, a.temperature, float(a.temperature_scalar), a.labels, n_labels,
                a.mask, float(a.logit_scale), float(a.softcap or 1.0), state, entropy, grad_entropy, g_k,
                total, g, g.stride(0), **flags, **launch,
                enable_fp_fusion=FP_FUSION,
            )
        g = g.to(w.dtype)
        if need_hidden:
            add_mm(grad_h, g, w[v0:v1])
        if need_weight:
            grad_w[v0:v1] = torch.mm(g.t(), h_w) if g.is_cuda else _mm_acc(g.t(), h_w, acc)
            if grad_b is not None:
                grad_b[v0:v1] = g.sum(0, dtype=acc)
    return None if grad_h is None else grad_h.to(h.dtype), grad_w, grad_b
