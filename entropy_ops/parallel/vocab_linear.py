"""Vocab-parallel ``linear_logprobs_and_entropy`` (SPEC §3.3): the LM head is sharded over the
vocabulary (Megatron's ``ColumnParallelLinear``: ``weight [V_r, D]``, ``bias [V_r]`` on each rank,
``hidden [N, D]`` replicated), every rank gets the unsharded ``(logp, H)``.

Forward: chunks of rows as ``backends/torch_linear.py`` (the shard's logits ``z [rows, V_r]`` by
``chunk_logits``, never more than one chunk), each chunk's row state from the row kernel
(``vocab.local_state``), then one merge of all rows (``vocab.merge``: all-reduce MAX + one SUM).
Backward: per chunk the shard's logits are recomputed, ``dL/dz`` comes from the saved global state
(``vocab.grad_from_state``, no collective), chained through softcap and logit_scale; then
``grad_weight``/``grad_bias`` are this rank's shard, and ``grad_hidden`` (a sum over the vocab)
is summed over the group: the one collective of backward (all-reduce SUM of ``[N, D]``, what
Megatron's copy-to-tensor-parallel-region does), so every rank returns the full ``grad_hidden``.
Labels ``[N, K]`` (K = 1 for one label per row): every label's logp is merged, and its gradient
``sum_k g_k (1[j = y_k] - p_j)`` is folded into the same backward kernel pass.
"""
import torch
import torch.distributed as dist

from .. import _backends
from ..backends.kernel import acc_dtype
from ..backends.torch_linear import (
    _chunks, _half_on_cuda, _mm_acc, add_mm, chunk_logits, chunk_rows, gradient_rows, product_weight,
)
from .layout import Call, shard_layout
from .shard import eager, first_order_only, localize, make_shard
from .vocab import LocalState, grad_from_state, local_state, merge, saved_log_norm


def _rows_of(t, start, end):
    return None if t is None else t[start:end]


def _cat(values):
    """One field of the per-chunk states joined over the rows (a Python float temperature is shared)."""
    return values[0] if not isinstance(values[0], torch.Tensor) else torch.cat(values)


def _chunk_shard(a, w, start, end, ignore_index):
    z = chunk_logits(a, w, a.hidden[start:end])[:end - start]
    return z, make_shard(z, _rows_of(a.temperature, start, end), a.temperature_scalar,
                         _rows_of(a.mask, start, end), ignore_index)


def _chain(g, z, a):
    """``dL/dpre`` from ``dL/dz``: softcap's ``logit_scale (1 - tanh^2)`` or ``logit_scale``; ``where``
    keeps a masked row (NaN hidden, zero gradient) at 0, as ``torch_linear`` does."""
    if a.softcap:  # in place on the chunk-sized buffers; the factor zeroed where g is 0 first
        factor = (z / a.softcap).square_().neg_().add_(1.0).mul_(a.logit_scale)
        return g.mul_(factor.masked_fill_(g == 0, 0))
    return g.mul_(a.logit_scale) if a.logit_scale != 1.0 else g


class _VocabParallelLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, a, group, vocab_start, backends):
        n, vocab = hidden.shape[0], weight.shape[0]
        call = Call("linear_logprobs_and_entropy", n, hidden.dtype, a.temperature_scalar, a.temperature is not None,
                    a.mask is not None, (a.ignore_index, hidden.shape[1], a.labels.shape[1], a.logit_scale, a.softcap))
        layout = shard_layout(group, vocab, vocab_start, call, hidden.device)
        w = product_weight(weight)
        parts = []
        # N = 0: one empty chunk, so that the row states (and the merge's collectives) exist.
        for start, end in list(_chunks(n, chunk_rows(vocab, hidden.device, a.chunk_size))) or [(0, 0)]:
            _, shard = _chunk_shard(a, w, start, end, a.ignore_index)
            y = localize(a.labels[start:end], shard, layout, a.ignore_index, k_labels=True)
            parts.append((local_state(shard, y, backends[0]), y))
        st = LocalState(*(_cat(v) for v in zip(*(p[0] for p in parts))))
        y = type(parts[0][1])(*(_cat(v) for v in zip(*(p[1] for p in parts))))
        acc = acc_dtype(hidden.dtype)
        h, logp, m_glob, log_total, bad = merge(st, y, group, acc)
        ctx.save_for_backward(hidden, weight, bias, st.m, saved_log_norm(st, m_glob, log_total, bad, acc), h,
                              logp, y.local, y.owned, y.valid)
        ctx.a, ctx.group, ctx.backend = a, group, backends[1]
        return logp, h

    @staticmethod
    @first_order_only("linear_logprobs_and_entropy")
    def backward(ctx, grad_logp, grad_h):
        hidden, weight, bias, row_max, log_norm, h, logp, local, owned, valid = ctx.saved_tensors
        a = ctx.a._replace(hidden=hidden, weight=weight, bias=bias)
        n, vocab = hidden.shape[0], weight.shape[0]
        acc = acc_dtype(hidden.dtype)
        w = product_weight(weight)
        mm_dtype = weight.dtype if _half_on_cuda(weight) else acc
        grad_hidden = torch.empty(hidden.shape, dtype=acc, device=hidden.device)
        # A frozen head (LoRA) needs no grad_weight: neither its [V_r, D] buffer nor its product.
        # grad_hidden is always formed and summed, so that every rank joins the same collective.
        need_w, need_b = ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2]
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(vocab, dtype=acc, device=weight.device) if need_b else None
        live = gradient_rows(a, grad_logp, grad_h)
        for start, end in _chunks(n, chunk_rows(vocab, hidden.device, a.chunk_size)):
            z = chunk_logits(a, w, hidden[start:end])[:end - start]
            rows = slice(start, end)
            g = grad_from_state(z, _rows_of(a.temperature, start, end), a.temperature_scalar,
                                _rows_of(a.mask, start, end), row_max[rows], log_norm[rows], h[rows],
                                (logp[rows], local[rows], owned[rows], valid[rows]),
                                _rows_of(grad_h, start, end), _rows_of(grad_logp, start, end), ctx.backend)
            g = _chain(g, z, a).to(mm_dtype)
            grad_hidden[rows] = _mm_acc(g, w.to(mm_dtype), acc)
            if grad_w is not None:
                h_rows = torch.where(live[rows, None], hidden[rows], 0)  # NaN x a zero gradient is NaN
                add_mm(grad_w, g.t(), h_rows.to(mm_dtype))
            if grad_b is not None:
                grad_b += g.to(acc).sum(0)
        dist.all_reduce(grad_hidden, op=dist.ReduceOp.SUM, group=ctx.group)
        cast = (lambda t: None if t is None else t.to(weight.dtype))
        return grad_hidden.to(hidden.dtype), cast(grad_w), cast(grad_b), None, None, None, None


@eager
def linear_logprobs_and_entropy(a, group, vocab_start):
    """``(logp [N, K], H [N])`` of :func:`entropy_ops.linear_logprobs_and_entropy` over the vocab
    shards of ``group``; ``a`` the validated, flattened ``LinearArgs`` (``labels [N, K]``)."""
    acc = acc_dtype(a.hidden.dtype)
    backends = (_backends.resolve("logprobs_and_entropy", a.hidden.device, acc),
                _backends.resolve("top_p_entropy", a.hidden.device, acc))
    return _VocabParallelLinear.apply(a.hidden, a.weight, a.bias, a, group, vocab_start, backends)
