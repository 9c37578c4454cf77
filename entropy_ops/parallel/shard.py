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
from ..ops._rows import check_values, flat_temperature, per_row, rows
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
    """The local shard as rows, with its per-row inputs flattened (as the row kernels take them)."""
    x: Tensor  # [N, V_r], last dim contiguous
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


def layout_of(op: str, logits: Tensor, temperature, t_scalar: float, mask, group, vocab_start,
              *args: float) -> ShardLayout:
    """The checked layout of this rank's shard ``logits [..., V_r]`` and the check that every rank
    makes the same call (``args``: the op's scalars). Before any other per-rank work, so that an
    empty shard raises on every rank."""
    call = Call(op, math.prod(logits.shape[:-1]), logits.dtype, t_scalar, temperature is not None,
                mask is not None, args)
    return shard_layout(group, logits.shape[-1], vocab_start, call, logits.device)


def make_shard(logits: Tensor, temperature, t_scalar: float, mask, ignore_index: int = -100) -> Shard:
    x = rows(logits)
    n = x.shape[0]
    t = flat_temperature(temperature, x, n)
    m = per_row(mask, n)
    check_values(x, None, t, ignore_index, m)
    live = m if m is not None else torch.ones(n, dtype=torch.bool, device=x.device)
    row_max = x.amax(-1).to(acc_dtype(x.dtype))  # NaN-propagating
    bad = (torch.isnan(row_max) | (row_max == float("inf"))) & live
    present = live & ~bad & (row_max > float("-inf"))
    return Shard(x, t, t_scalar, m, live, row_max, bad, present)


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
    n = shard.x.shape[0]
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


def gather_raw(x: Tensor, index: Tensor) -> Tensor:
    """``x[i, index[i]]`` (``index [N]``) or ``x[i, index[i, k]]`` (``[N, K]``) in float64."""
    if index.dim() == 2:
        return x.gather(1, index).to(F64)
    return x.gather(1, index[:, None]).squeeze(1).to(F64)


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
