"""Per-rank plumbing shared by the vocab-parallel row ops: the flattened local shard, where its
labels fall, its raw row max, and the two collectives every merge uses.

Merges are done in float64 on ``[N]``-sized tensors (a few bytes per token next to the ``V_r``
logits per token): the between-shard moments of ``token_stats`` subtract terms of size ``H^2``,
which float64 keeps exact; the communication cost of the wider type is negligible.
"""
import functools
import math
from typing import NamedTuple, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from ..backends.kernel import acc_dtype
from .. import _value_checks
from ..ops._rows import Rows, check_values, flat_temperature, per_row
from .layout import Call, ShardLayout, shard_layout

F64 = torch.float64

# Eager under torch.compile (a graph break), forward and backward alike: the backward recomputes
# what the forward decided (top-p's nucleus, min-p's kept set) and must see the same bits (inductor's
# exp differs from ATen's by an ulp); the collectives need eager c10d calls anyway.
eager = torch.compiler.disable


class _NoDoubleBackward(torch.autograd.Function):
    """Passes gradients through; differentiating them again raises, naming the op."""
    @staticmethod
    def forward(ctx, op, anchor, *grads):
        ctx.op = op
        return tuple(g.view_as(g) for g in grads)

    @staticmethod
    def backward(ctx, *_):
        raise RuntimeError(f"entropy_ops: double backward through {ctx.op} (with process_group) is not supported")


def first_order_only(op: str):
    """Decorates an ``autograd.Function``'s backward (SPEC §1: double backward is not supported, and
    raises, as in the single-process ops): the backward builds no graph, and under
    ``create_graph=True`` its gradients are marked so that differentiating them raises. They hang
    off the first saved tensor that requires grad (the backward's own results need none)."""
    def decorate(backward):
        @functools.wraps(backward)
        def run(ctx, *grad_outputs):
            with torch.no_grad():
                grads = backward(ctx, *grad_outputs)
            anchor = next((t for t in ctx.saved_tensors if t is not None and t.requires_grad), None)
            if not torch.is_grad_enabled() or anchor is None:
                return grads
            marked = iter(_NoDoubleBackward.apply(op, anchor, *(g for g in grads if isinstance(g, Tensor))))
            return tuple(next(marked) if isinstance(g, Tensor) else g for g in grads)
        return run
    return decorate


class Shard(NamedTuple):
    """The local shard as rows, with its per-row inputs flattened. The shard is read where it lies:
    ``rows`` views it as the ``[M, V_r]`` rows a kernel reads, a grid of rows for a ``logits[:, :-1]``
    whose leading dims do not collapse (``ops/_rows.py``; ``kernel_args`` puts the per-row inputs on
    that grid), and the torch passes take it in chunks of the N rows (``rows.take``). Everything
    else here, and every collective, is per row of the N rows, the same N on every rank."""
    rows: Rows  # the shard [..., V_r] (last dim contiguous) as kernel rows
    t: Optional[Tensor]  # [N] acc dtype, or None (the scalar applies)
    t_scalar: float
    mask: Optional[Tensor]  # [N] bool or None
    live: Tensor  # [N] bool: mask, or all True
    m: Tensor  # [N] acc dtype: the raw max of the local row (NaN if it holds a NaN, -inf if all -inf)
    bad: Tensor  # [N] bool: the local row holds NaN/+inf (live rows only)
    present: Tensor  # [N] bool: live, not bad, and not all -inf: the shard has mass in this row

    @property
    def temperature64(self):
        """Per-row temperature in float64 (or the Python float)."""
        return self.t_scalar if self.t is None else self.t.to(F64)

    @property
    def n(self) -> int:
        return self.rows.n

    def kernel_args(self):
        """``(x [M, V_r], temperature [M] or None, mask [M] or None)`` for a row kernel, whose ``[M]``
        outputs ``self.rows.out(v).view(-1)`` turns into the N rows (``mask`` False between rows)."""
        r = self.rows
        return r.x, r.per_row(self.t, fill=1), r.mask(self.mask)


def layout_of(op: str, logits: Tensor, temperature, t_scalar: float, mask, group, vocab_start,
              *args: float) -> ShardLayout:
    """The checked layout of this rank's shard ``logits [..., V_r]`` and the check that every rank
    makes the same call (``args``: the op's scalars). Before any other per-rank work, so that an
    empty shard raises on every rank."""
    call = Call(op, math.prod(logits.shape[:-1]), logits.dtype, t_scalar, temperature is not None,
                mask is not None, args)
    return shard_layout(group, logits.shape[-1], vocab_start, call, logits.device)


def make_shard(logits: Tensor, temperature, t_scalar: float, mask, ignore_index: int = -100) -> Shard:
    r = Rows(logits)
    n = r.n
    t = flat_temperature(temperature, r.x, n)
    m = per_row(mask, n)
    check_values(r.x, None, t, ignore_index, m)
    live = m if m is not None else torch.ones(n, dtype=torch.bool, device=logits.device)
    # On the logits as they lie (strided leading dims are fine for a reduction: no copy).
    row_max = logits.amax(-1).reshape(-1).to(acc_dtype(logits.dtype))  # NaN-propagating
    bad = (torch.isnan(row_max) | (row_max == float("inf"))) & live
    present = live & ~bad & (row_max > float("-inf"))
    return Shard(r, t, t_scalar, m, live, row_max, bad, present)


class Labels(NamedTuple):
    """Each ``[N]`` (one label per row) or ``[N, K]`` (K candidate labels per row)."""
    local: Tensor  # int64 index into the shard, clamped into [0, V_r) (valid only where owned)
    owned: Tensor  # bool: the label is in this shard (live rows, not ignored)
    valid: Tensor  # bool: live, not ignored, and in [0, V) (owned by exactly one rank)
    ignored: Tensor  # bool: label == ignore_index


def localize(labels: Tensor, shard: Shard, layout: ShardLayout, ignore_index: int,
             k_labels: bool = False) -> Labels:
    """Where each row's global label falls (``labels`` of the leading shape, or ``[N, K]`` with
    ``k_labels``); checks the range against the full V (SPEC §2: raising on CPU tensors, a
    device-side assert under ``ENTROPY_OPS_CHECK=1`` on CUDA)."""
    n = shard.n
    y = (labels.reshape(n, labels.shape[-1]) if k_labels else per_row(labels, n)).long()
    live = shard.live[:, None] if k_labels else shard.live
    ignored = y == ignore_index
    in_range = (y >= 0) & (y < layout.total)
    if _value_checks.enabled(y.device):
        _value_checks.require(~(~ignored & ~in_range & live).any(),
                              f"labels: every label must be in [0, {layout.total}) or equal ignore_index={ignore_index}")
    local = y - layout.start
    valid = live & ~ignored & in_range
    owned = valid & (local >= 0) & (local < layout.local)
    return Labels(local.clamp(0, max(layout.local - 1, 0)), owned, valid, ignored)


def gather_raw(shard: Shard, index: Tensor) -> Tensor:
    """The raw logit ``x[i, index[i]]`` of every row (``index [N]``), or ``x[i, index[i, k]]``
    (``[N, K]``), in float64."""
    return shard.rows.pick(index).to(F64)


def all_max(t: Tensor, group) -> Tensor:
    """All-reduce MAX in place (the input must hold no NaN: NaN rows are flagged separately)."""
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return t


def all_sum(columns, group) -> Tensor:
    """One all-reduce SUM of the float64 columns packed as ``[N, k]``; returns the ``[N, k]`` sums."""
    packed = torch.stack([c.to(F64) for c in columns], dim=-1)
    dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
    return packed


def global_max(shard: Shard, group) -> Tensor:
    """Collective 1: the raw max over all shards of each row (``-inf`` where no shard has mass)."""
    return all_max(torch.where(shard.present, shard.m, float("-inf")), group)


def shifted_max(shard: Shard, global_m: Tensor) -> Tensor:
    """``a_r = (m_r - M) / T`` in float64 (``<= 0``; ``-inf`` where this shard has no mass). The
    difference of raw maxima is taken before dividing, so rows shifted by 1e4 keep their digits."""
    a = (shard.m.to(F64) - global_m.to(F64)) / shard.temperature64
    return torch.where(shard.present, a, float("-inf"))
