"""Where each rank's vocab shard sits in the full vocabulary (Megatron layout, SPEC §3.3).

Rank ``r`` of the group holds the logits of the global indices ``[start_r, start_r + V_r)``. Without
``vocab_start`` every rank must hold the same ``V_r`` and ``start_r = r * V_r`` (Megatron's
``VocabParallelEmbedding`` / ``ColumnParallelLinear`` split); with it the shards may be uneven but
must tile ``[0, V)`` without gaps or overlaps.

Every call gathers every rank's ``(V_r, vocab_start)``: one all-gather of two ints per rank, on
every rank. (It used to run only when a rank's cache missed; ranks whose own arguments repeated
while another's changed skipped it, and the group deadlocked.) The host reads the gathered pairs
on CPU tensors, and on CUDA tensors only the first time this rank sees its ``(group, V_r,
vocab_start)``: later calls compare them with the cached ones on the device (``_assert_async``, no
host sync). So a group whose layout changes while a rank's own shard stays the same fails that
assert on CUDA (call :func:`clear_cache` on every rank after changing a group's layout); on CPU
it is simply checked again.
"""
from typing import Dict, NamedTuple, Optional, Tuple

import torch
import torch.distributed as dist


class ShardLayout(NamedTuple):
    rank: int  # this process's rank in the group
    world: int
    start: int  # global index of this shard's first entry
    local: int  # V_r, entries in this shard
    total: int  # V, the full vocabulary
    starts: Tuple[int, ...]  # start of every rank's shard, in rank order
    sizes: Tuple[int, ...]  # V_r of every rank, in rank order


_CACHE: Dict[tuple, Tuple[object, ShardLayout, torch.Tensor]] = {}


def _gather_pairs(group, local: int, vocab_start: Optional[int], device) -> torch.Tensor:
    """``[world, 2]`` int64 on ``device``: every rank's ``(V_r, vocab_start or -1)``."""
    # NCCL groups need a CUDA tensor; gloo takes either. Filled on the device (no host-to-device
    # copy: every call gathers, a CUDA-graph capture included).
    mine = torch.full((2,), local, dtype=torch.int64, device=device)
    mine[1] = -1 if vocab_start is None else vocab_start
    out = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, mine, group=group)
    return torch.stack(out)


def _check(pairs, rank: int) -> ShardLayout:
    sizes = tuple(p[0] for p in pairs)
    given = [p[1] >= 0 for p in pairs]
    if any(given) and not all(given):
        missing = [r for r, g in enumerate(given) if not g]
        raise ValueError(f"vocab_start: given on some ranks but not on ranks {missing}; pass it on every "
                         f"rank of process_group or on none")
    if all(given):
        starts = tuple(p[1] for p in pairs)
    else:
        if len(set(sizes)) != 1:
            raise ValueError(f"vocab_start: the vocab shards are uneven (V per rank: {list(sizes)}); pass "
                             f"vocab_start=<global index of this rank's first entry> on every rank")
        starts = tuple(r * sizes[0] for r in range(len(sizes)))
    order = sorted(range(len(starts)), key=lambda r: starts[r])
    edge = 0
    for r in order:
        if starts[r] != edge:
            raise ValueError(f"vocab_start: the shards (start, V) per rank {list(zip(starts, sizes))} do not "
                             f"tile [0, V): rank {r} starts at {starts[r]}, expected {edge}; each rank's "
                             f"vocab_start must be the sum of the shard sizes before it")
        edge += sizes[r]
    return ShardLayout(rank, len(sizes), starts[rank], sizes[rank], edge, starts, sizes)


def shard_layout(group, local: int, vocab_start: Optional[int], device: torch.device) -> ShardLayout:
    """The checked layout of this rank's shard of ``local`` entries (see the module docstring)."""
    pairs = _gather_pairs(group, local, vocab_start, device)
    key = (id(group), local, vocab_start)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is group:
        torch._assert_async((pairs == hit[2]).all(),
                            "vocab_start: the shard layout of process_group changed while this rank's own "
                            "(V_r, vocab_start) stayed the same; call entropy_ops.parallel.layout.clear_cache() "
                            "on every rank after changing it")
        return hit[1]
    layout = _check([tuple(row) for row in pairs.tolist()], dist.get_rank(group))
    if pairs.device.type != "cpu":  # on CPU the host check costs no sync: done every call
        _CACHE[key] = (group, layout, pairs)
    return layout


def clear_cache() -> None:
    """Forget the layouts this rank has checked (every rank, after changing a group's layout)."""
    _CACHE.clear()
