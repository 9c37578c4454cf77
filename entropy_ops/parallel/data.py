"""Data-parallel token statistics (SPEC §3.2, §3.3): the ``process_group=`` paths of
``token_covariance``, ``clip_cov_policy_loss``, ``kl_cov_policy_loss``,
``masked_quantile(per_sequence=False)``, ``peak_entropy_mask(per_sequence=False)`` and
``EntropyThreshold``.

Each rank holds its own tokens; every result equals what one process computes on the batch
concatenated over the ranks of the group in rank order (rank 0's tokens first), sliced back to this
rank's tokens where the output is per token:

- means and counts: one all-reduce of a packed float64 vector (sums, counts, and each rank's
  token count in its own slot). Counts are exact; a mean is the exact global sum's quotient, so it
  equals the single-process mean whenever the sums are exact (else within the rounding of a sum).
- order statistics (quantiles, the k-th largest): radix selection on order-preserving integer
  keys (``backends/torch_select.py``) with the digit histogram of each round all-reduced. Digits
  are ``_DIGIT_BITS`` wide, so the number of rounds is fixed by the key width (2 for 16-bit
  values, 3 for 32-bit, 6 for 64-bit) and never depends on the data. Exact.
- ties of the top-k go to the lowest global flat index (rank-major): one all-reduce of the per-rank
  counts of tied entries gives each rank the ties held by the ranks before it.

Under ``torch.compile`` the collectives are ``torch.distributed._functional_collectives``, so the
paths trace with ``fullgraph=True`` (eagerly they are c10d's in-place all-reduce on a copy).
Nothing reads a tensor on the host: Clip-Cov's random keys come from a counter-based stream whose
offset (the tokens of the ranks before this one) stays on the device. Every rank must call with the
same dtypes and arguments (the rounds and the packing depend on them), as with any collective.
"""
from typing import Callable, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import Tensor

from .. import _validate_tokens
from ..backends.token_kernel import quantile_lerp, quantile_rank
from ..backends.torch_select import order_keys
from ..ops._tokens import check_offsets, check_quantiles
from ..ops._types import PolicyLossOutput
from ..ops._policy_terms import (centred_product, clip_cov_loss_matrix, clip_cov_terms, count_k, kl_cov_loss_matrix,
                                 masked_inputs, selected_frac)
from ..ops.agg_loss import aggregate_masked
from ..ops.random_keys import clip_cov_keys

_DIGIT_BITS = 11  # 2048 bins: 16 KB of int64 counts per round, 3 rounds for fp32 keys
_REDUCE_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}


def _all_reduce(t: Tensor, op: str, group) -> Tensor:
    """A new tensor: ``t`` reduced over the group (``op`` "sum" or "max")."""
    if torch.compiler.is_compiling():  # the functional collective is what dynamo traces
        return funcol.wait_tensor(funcol.all_reduce(t, op, group))
    # Eager: c10d's in-place all-reduce on a copy; the functional one costs ~0.4 ms more per call
    # on CPU (gloo), measured.
    out = t.clone(memory_format=torch.contiguous_format)
    dist.all_reduce(out, _REDUCE_OPS[op], group=group)
    return out


def _sum_over_ranks(group, scalars: List[Tensor], per_rank: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """One all-reduce: ``(sums of scalars float64 [S], per_rank float64 [P] or [0])``; ``per_rank``
    is a 0-d value of this rank, placed in its own slot so that every rank learns every rank's."""
    device = (scalars or [per_rank])[0].device
    slots = torch.zeros(0, dtype=torch.float64, device=device)
    if per_rank is not None:
        size, rank = dist.get_world_size(group), dist.get_rank(group)
        slots = torch.where(torch.arange(size, device=device) == rank, per_rank.double(), 0.0)
    packed = _all_reduce(torch.cat([s.double().view(1) for s in scalars] + [slots]), "sum", group)
    return packed[:len(scalars)], packed[len(scalars):]


def _select(key: Tensor, key_bits: int, alive: Tensor, ranks_of: Callable[[Tensor], Tensor], group):
    """``M`` radix selections at once over the entries of all ranks.

    ``key`` int ``[N]`` (this rank's keys), ``alive`` bool ``[N]`` (the entries taking part);
    ``ranks_of(total)`` gives the 0-based ascending ranks ``[M]`` to select from the global count
    of alive entries. Returns ``(below, tied, residual, total)``: ``below`` / ``tied`` bool
    ``[M, N]``, this rank's entries whose key is smaller than / equal to the selected one;
    ``residual`` ``[M]`` the selected entry's rank among all tied entries of all ranks; ``total``
    the global alive count (0-d)."""
    rank = total = None
    below = torch.zeros_like(alive)[None]
    alive = alive[None]
    high = key_bits
    while high > 0:  # digits from the top: bits [low, high)
        low = max(high - _DIGIT_BITS, 0)
        n_bins = 1 << (high - low)
        digit = (key >> low) & (n_bins - 1)
        if high == key_bits:
            digit = digit ^ (n_bins >> 1)  # flip the sign bit: signed order -> unsigned digits
        digit = digit.long()[None]
        hist = torch.zeros(alive.shape[0], n_bins, dtype=torch.int64, device=key.device)
        hist = _all_reduce(hist.scatter_add_(1, digit.expand_as(alive), alive.long()), "sum", group)
        if rank is None:  # the first round counts every alive entry of every rank
            total = hist[0].sum()
            rank = ranks_of(total)
            hist = hist.expand(rank.shape[0], n_bins)
        cum = hist.cumsum(1)
        best = (cum <= rank[:, None]).sum(1, keepdim=True).clamp(max=n_bins - 1)
        equal = hist.gather(1, best)
        rank = rank - (cum.gather(1, best) - equal).squeeze(1)
        below = below | (alive & (digit < best))
        alive = alive & (digit == best)
        high = low
    return below, alive, rank, total


def top_k(scores: Tensor, eligible: Tensor, k: Tensor, group) -> Tuple[Tensor, Tensor]:
    """This rank's part of the top ``k`` over all ranks: ``(selected bool of scores' shape, n_selected)``.

    ``scores`` floating point (no NaN among the eligible) or int64, ``eligible`` bool, ``k`` a 0-d
    integer tensor equal on every rank; ``min(k, #eligible over all ranks)`` entries of largest
    score, ties to the lowest global flat index; ``n_selected`` int64 0-d, the global count."""
    flat, ok = scores.reshape(-1), eligible.reshape(-1)
    if flat.is_floating_point():
        key, key_bits = order_keys(-(flat + 0.0)), 8 * flat.element_size()  # -0.0 -> +0.0 first
    else:
        key, key_bits = ~flat, 64  # -1 - flat: order-reversing, no overflow at -2**63
    # The k-th largest is the entry of rank k - 1 in ascending order of -score.
    k_th = lambda n: (torch.minimum(k, n) - 1).clamp(min=0).view(1)  # noqa: E731
    below, tied, residual, total = _select(key, key_bits, ok, k_th, group)
    n_selected = torch.minimum(k, total)
    _, ties_before = _sum_over_ranks(group, [], tied[0].sum())
    rank = dist.get_rank(group)
    position = ties_before[:rank].sum().long() + tied[0].long().cumsum(0)  # 1-based over all ranks
    chosen = below[0] | (tied[0] & (position <= residual + 1))
    return (chosen & (n_selected > 0)).view(scores.shape), n_selected


def quantile_over_all(values: Tensor, mask: Optional[Tensor], q: Tensor, group) -> Tensor:
    """``masked_quantile(per_sequence=False)`` over all ranks: float64 ``[Q]`` for float64 ``q [Q]``.

    Both order statistics ``v_(floor r)`` and ``v_(ceil r)`` of every quantile are selected in the
    same rounds (``2Q`` histograms per all-reduce); their values then come from one all-reduce max
    over the tied entries (the ranks holding none give ``-inf``). ``r = max(q (n - 1), 0)`` and the
    lerp in float64, as the single-process kernels compute them; NaN where ``n = 0``."""
    x = values.reshape(-1) + 0.0  # -0.0 + 0.0 = +0.0 (IEEE): value order and key order then agree
    valid = ~torch.isnan(x) if mask is None else mask.reshape(-1) & ~torch.isnan(x)

    def ranks_of(n):  # torch.quantile's ranks in float64, clamped at 0 when n = 0
        rank = quantile_rank(q, n)
        return torch.cat([rank.long(), rank.ceil().long()])

    _, tied, _, total = _select(order_keys(x), 8 * x.element_size(), valid, ranks_of, group)
    # One -inf column, so that a rank without tokens reduces over a non-empty row too.
    picked = torch.where(tied, x.double()[None], float("-inf"))
    picked = _all_reduce(torch.nn.functional.pad(picked, (0, 1), value=float("-inf")).amax(1), "max", group)
    v_lo, v_hi = picked.chunk(2)
    return quantile_lerp(v_lo, v_hi, quantile_rank(q, total), total)


def global_token_counts(mask: Tensor, process_group) -> Tuple[Tensor, Tensor]:
    """``(batch_num_tokens, global_batch_size)`` int64 0-d over all ranks, in one all-reduce: the
    valid tokens, and the sequences (rows of a ``[B, T]`` mask) holding at least one, that
    :func:`agg_loss` takes with ``dp_size`` (a ``[N]`` mask counts as one sequence)."""
    _validate_tokens.process_group(process_group)
    mask = mask if mask.dtype == torch.bool else mask != 0
    rows = mask if mask.dim() == 2 else mask.reshape(1, -1)
    sums, _ = _sum_over_ranks(process_group, [mask.sum(), rows.any(-1).sum()])
    return sums[0].long(), sums[1].long()


class _Stats:
    """The global sums of one loss call, in one all-reduce: the valid count, the sequences holding
    a valid token, the masked means of advantages, logp and a KL term (each in its own dtype, 0
    without valid tokens), and each rank's token count."""

    def __init__(self, logp, advantages, mask, kl, group):
        means = (advantages, logp) if kl is None else (advantages, logp, kl)
        rows = mask if mask.dim() == 2 else mask.reshape(1, -1)
        sums = [torch.where(mask, t.detach().double(), 0).sum() for t in means]
        sums, self.sizes = _sum_over_ranks(group, sums + [mask.sum(), rows.any(-1).sum()],
                                           torch.full((), logp.numel(), device=logp.device))
        self.n_valid, self.n_seqs = sums[-2].long(), sums[-1].long()
        self.means = [(s / self.n_valid.clamp(min=1)).to(t.dtype) for s, t in zip(sums, means)]

    def covariance(self, logp, advantages):
        """``cov`` with the global means (any value at the masked tokens)."""
        return centred_product(logp, advantages, self.means[1], self.means[0])


def token_covariance(logp: Tensor, advantages: Tensor, mask: Tensor, process_group) -> Tensor:
    """``(A - mean A)(logp - mean logp)`` with the means over the valid tokens of all ranks; one
    all-reduce of 4 + P float64 values."""
    _validate_tokens.process_group(process_group)
    return torch.where(mask, _Stats(logp, advantages, mask, None, process_group).covariance(logp, advantages), 0)


def _loss(masked, mask, mode, stats, group, loss_scale_factor):
    """The single-process loss of the concatenated batch (``masked``: this rank's loss matrix, 0 at
    the masked tokens) as the value on every rank; backward gives ``world_size x`` the gradient of
    this rank's share of it, so that the gradient average of DDP / FSDP over the group is the
    single-process gradient (verl's ``dp_size`` factor)."""
    share = aggregate_masked(masked, mask, mode, batch_num_tokens=stats.n_valid, global_batch_size=stats.n_seqs,
                             loss_scale_factor=loss_scale_factor)
    total = _all_reduce(share.detach(), "sum", group)
    return total + (share - share.detach()) * dist.get_world_size(group)


def _outputs(masked, mask, selected, n_selected, stats, mode, group, loss_scale_factor, dtype) -> PolicyLossOutput:
    loss = _loss(masked, mask, mode, stats, group, loss_scale_factor)
    return PolicyLossOutput(loss, stats.means[2], selected, selected_frac(n_selected, stats.n_valid, dtype))


def _random_keys(logp, stats, generator, group):
    """Clip-Cov's keys of this rank: its slice of the keys of the concatenated batch, from the
    counter-based stream (``ops/random_keys.py``) at the offset of its first token, the sizes of
    the ranks before it summed on the device (no host read)."""
    first = stats.sizes[:dist.get_rank(group)].sum().long().view(1)
    return clip_cov_keys(generator, first, logp)


def clip_cov_policy_loss(logp, old_logp, advantages, mask, *, low, high, clip_cov_ratio, lb, ub,
                         loss_agg_mode, weights, generator, random_keys, process_group,
                         loss_scale_factor=None) -> PolicyLossOutput:
    """Clip-Cov over all ranks (arguments validated by the public function).

    Random keys: with ``random_keys`` given, each rank passes the keys of its own tokens (a slice of
    keys drawn for the concatenated batch reproduces the single-process choice; independent draws
    per rank still give a uniform choice). Otherwise each rank draws one seed from ``generator``
    (or the global RNG) and computes its slice of the stream of that seed at its global token
    offset, so the same generator state on every rank gives exactly the single-process choice, and
    differently seeded ranks still give a uniform one. Sync-free either way.

    Collectives: the packed sums, 6 histogram rounds of the int64 keys, the tie counts, the loss."""
    group = _validate_tokens.process_group(process_group)
    log_ratio, advantages, weights = masked_inputs(logp, old_logp, advantages, weights, mask)
    stats = _Stats(logp, advantages, mask, -log_ratio, group)
    pg, candidate = clip_cov_terms(log_ratio, advantages, stats.covariance(logp, advantages), mask, low, high, lb, ub)
    keys = random_keys if random_keys is not None else _random_keys(logp, stats, generator, group)
    selected, n_selected = top_k(keys, candidate, count_k(clip_cov_ratio, stats.n_valid), group)
    return _outputs(clip_cov_loss_matrix(pg, selected, mask, weights), mask, selected, n_selected, stats,
                    loss_agg_mode, group, loss_scale_factor, logp.dtype)


def kl_cov_policy_loss(logp, old_logp, advantages, mask, *, kl_cov_ratio, kl_coef, loss_agg_mode, weights,
                       process_group, loss_scale_factor=None) -> PolicyLossOutput:
    """KL-Cov over all ranks (arguments validated by the public function). Collectives: the packed
    sums, the histogram rounds of ``cov`` (2 for 16-bit, 3 for 32-bit, 6 for 64-bit logp), the tie
    counts, the loss."""
    group = _validate_tokens.process_group(process_group)
    log_ratio, advantages, weights = masked_inputs(logp, old_logp, advantages, weights, mask)
    abs_kl = log_ratio.abs()
    stats = _Stats(logp, advantages, mask, abs_kl, group)
    # Non-valid tokens are not eligible; valid ones have no NaN cov unless the inputs do.
    selected, n_selected = top_k(stats.covariance(logp, advantages), mask, count_k(kl_cov_ratio, stats.n_valid), group)
    masked = kl_cov_loss_matrix(log_ratio, abs_kl, advantages, selected, kl_coef, mask, weights)
    return _outputs(masked, mask, selected, n_selected, stats, loss_agg_mode, group, loss_scale_factor, logp.dtype)


def masked_quantile(values: Tensor, mask: Optional[Tensor], q: Optional[Tensor], q_scalar: float,
                    cu_seqlens: Optional[Tensor], process_group) -> Tensor:
    """``masked_quantile(per_sequence=False)`` over all ranks (arguments validated by the public
    function): float64 ``[Q]`` for a 1-d ``q``, else 0-d. Collectives: the histogram rounds (2, 3
    or 6 by the width of ``values``' dtype), then one all-reduce max of ``2Q`` values."""
    group = _validate_tokens.process_group(process_group)
    if not torch.compiler.is_compiling():  # value checks read the host: eager only
        check_quantiles(q)
        if cu_seqlens is not None:
            check_offsets(cu_seqlens.long(), values.shape[0])
    qs = torch.full((1,), q_scalar, dtype=torch.float64, device=values.device) if q is None else q.reshape(-1)
    out = quantile_over_all(values, mask, qs, group)
    return out if q is not None and q.dim() == 1 else out[0]


def peak_entropy_mask(entropy: Tensor, mask: Optional[Tensor], q: Optional[Tensor], q_scalar: float,
                      cu_seqlens: Optional[Tensor], process_group) -> Tensor:
    """``peak_entropy_mask(per_sequence=False)`` over all ranks: ``entropy > quantile`` (float64,
    the unrounded global quantile) and ``mask``; all False when no rank holds a valid token."""
    peak = entropy.double() > masked_quantile(entropy, mask, q, q_scalar, cu_seqlens, process_group)
    return peak if mask is None else peak & mask
