"""Where each rank's vocab shard sits in the full vocabulary (Megatron layout, SPEC §3.3).

Rank ``r`` of the group holds the logits of the global indices ``[start_r, start_r + V_r)``. Without
``vocab_start`` every rank must hold the same ``V_r`` and ``start_r = r * V_r`` (Megatron's
``VocabParallelEmbedding`` / ``ColumnParallelLinear`` split); with it the shards may be uneven but
must tile ``[0, V)`` without gaps or overlaps.

Every call gathers every rank's ``(V_r, vocab_start)`` and its :class:`Call` (below): one all-gather
of ``2 + len(_FIELDS)`` int64s per rank, on every rank. (It used to run only when a rank's cache
missed; ranks whose own arguments repeated while another's changed skipped it, and the group
deadlocked.) The host reads the gathered pairs on CPU tensors, and on CUDA tensors only the first
time this rank sees its ``(group, V_r, vocab_start)``: later calls compare them with the cached ones
on the device (``_assert_async``, no host sync). So a group whose layout changes while a rank's own
shard stays the same fails that assert on CUDA (call :func:`clear_cache` on every rank after
changing a group's layout); on CPU it is simply checked again.

The same all-gather carries each rank's :class:`Call`: the op, the number of rows, the dtype, the
scalar temperature, the op's own scalars, and whether a per-row temperature or a row mask came.
Ranks that disagree would otherwise wait in a collective until the group's timeout (N differs),
abort inside gloo (the dtype differs) or return a wrong value (T differs): a mismatch raises on
every rank instead (on CUDA tensors after the first call, a device-side assert). The values of a
per-row temperature or of a row mask are not compared (that would cost a collective of their size):
every rank must pass the same ones.
"""
import struct
from typing import Dict, NamedTuple, Optional, Tuple

import torch
import torch.distributed as dist

from .. import _value_checks

OPS = ("entropy", "logprobs_and_entropy", "token_stats", "top_p_entropy", "top_p_mask", "min_p_logprobs",
       "linear_logprobs_and_entropy")
DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


class Call(NamedTuple):
    """What every rank of the group must agree on in one vocab-parallel call."""
    op: str
    rows: int  # N, the flattened leading shape
    dtype: torch.dtype
    temperature: float  # the scalar temperature (per_row: a tensor came instead)
    per_row: bool
    masked: bool
    args: Tuple[float, ...] = ()  # the op's own: top_p, min_p, ignore_index, the linear head's D, K, ...

    def encode(self) -> Tuple[int, ...]:
        """``len(_FIELDS)`` int64s; floats by their bits, so that equal is bitwise equal."""
        assert len(self.args) <= _ARGS, self.args
        args = (*self.args, *(0.0,) * (_ARGS - len(self.args)))
        return (OPS.index(self.op), self.rows, DTYPES.index(self.dtype), _bits(self.temperature),
                int(self.per_row), int(self.masked), *(_bits(a) for a in args))


_ARGS = 5


def _bits(v: float) -> int:
    return struct.unpack("<q", struct.pack("<d", float(v)))[0]


def _float(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<q", bits))[0]


# The encoded columns: what each one means in an error, and how to print its values.
_FIELDS = (("the op", OPS.__getitem__), ("the number of rows N (the flattened leading shape)", int),
           ("the dtype", DTYPES.__getitem__), ("the scalar temperature", _float),
           ("whether the temperature is a per-row tensor", bool), ("whether a row mask is passed", bool),
           *((f"the op's scalar arguments (top_p, min_p, ignore_index; the linear head's D, K, "
               f"logit_scale, softcap): argument {i}", _float) for i in range(_ARGS)))


class ShardLayout(NamedTuple):
    rank: int  # this process's rank in the group
    world: int
    start: int  # global index of this shard's first entry
    local: int  # V_r, entries in this shard
    total: int  # V, the full vocabulary
    starts: Tuple[int, ...]  # start of every rank's shard, in rank order
    sizes: Tuple[int, ...]  # V_r of every rank, in rank order


_CACHE: Dict[tuple, Tuple[object, ShardLayout, torch.Tensor]] = {}


def _gather(group, local: int, vocab_start: Optional[int], call: Call, device) -> torch.Tensor:
    """``[world, 2 + len(_FIELDS)]`` int64 on ``device``: every rank's ``(V_r, vocab_start or -1)``
    and its encoded call."""
    # NCCL groups need a CUDA tensor; gloo takes either. Filled on the device, a fill per value (no
    # host-to-device copy: every call gathers, a CUDA-graph capture included).
    values = (local, -1 if vocab_start is None else vocab_start, *call.encode())
    mine = torch.empty(len(values), dtype=torch.int64, device=device)
    for i, v in enumerate(values):
        mine[i] = v
    out = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, mine, group=group)
    return torch.stack(out)


def _check_calls(rows, call: Call) -> None:
    """Every rank's encoded call equals this rank's, or a ValueError naming the first field that differs."""
    for i, (what, decode) in enumerate(_FIELDS):
        seen = [row[2 + i] for row in rows]
        if len(set(seen)) > 1:
            raise ValueError(f"process_group: the ranks disagree on {what} (per rank: {[decode(v) for v in seen]}); "
                             f"every rank of the group must call {call.op} with the same leading shape, dtype, "
                             f"temperature, mask and scalar arguments")


def _check(rows, rank: int) -> ShardLayout:
    sizes = tuple(p[0] for p in rows)
    if 0 in sizes:
        raise ValueError(f"logits: rank {sizes.index(0)}'s vocab shard is empty (V per rank: {list(sizes)}); "
                         f"every rank of process_group must hold at least one vocabulary entry")
    given = [p[1] >= 0 for p in rows]
    if any(given) and not all(given):
        missing = [r for r, g in enumerate(given) if not g]
        raise ValueError(f"vocab_start: given on some ranks but not on ranks {missing}; pass it on every "
                         f"rank of process_group or on none")
    if all(given):
        starts = tuple(p[1] for p in rows)
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


def shard_layout(group, local: int, vocab_start: Optional[int], call: Call, device: torch.device) -> ShardLayout:
    """The checked layout of this rank's shard of ``local`` entries, and the check that every rank
    makes the same ``call`` (see the module docstring)."""
    gathered = _gather(group, local, vocab_start, call, device)
    pairs = gathered[:, :2]
    key = (id(group), local, vocab_start)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is group:
        torch._assert_async((gathered[:, 2:] == gathered[:1, 2:]).all(),
                            f"process_group: the ranks disagree on the arguments of {call.op} (the op, N, "
                            f"dtype, temperature, mask or scalar arguments); every rank must make the same call")
        torch._assert_async((pairs == hit[2]).all(),
                            "vocab_start: the shard layout of process_group changed while this rank's own "
                            "(V_r, vocab_start) stayed the same; call entropy_ops.parallel.layout.clear_cache() "
                            "on every rank after changing it")
        return hit[1]
    rows = [tuple(row) for row in gathered.tolist()]
    _check_calls(rows, call)
    layout = _check(rows, dist.get_rank(group))
    if not _value_checks.host_reads(pairs.device):  # where the host check costs no sync: every call
        _CACHE[key] = (group, layout, pairs)
    return layout


def clear_cache() -> None:
    """Forget the layouts this rank has checked (every rank, after changing a group's layout)."""
    _CACHE.clear()
