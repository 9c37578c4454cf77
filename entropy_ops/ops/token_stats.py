"""``token_stats``: eight per-row statistics of the token distribution in one pass (SPEC §3.1).

    z = logits / T,  lse = log sum_j exp z_j,  p = softmax z,  H = lse - sum_j p_j z_j
    logp_y = z_y - lse,  max_logp = max_j z_j - lse,  collision = sum_j p_j^2
    varentropy = sum_j p_j (log p_j)^2 - H^2 = sum_j p_j (log p_j + H)^2
    self_certainty = lse - mean_j z_j - log V,  entropy_drift = sum_j p_j^2 (log p_j + H)

Diagnostics, not losses: the outputs are marked non-differentiable (``backward`` through them
raises torch's usual "does not require grad" error).
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _backends, _validate, _validate_vocab
from ..parallel import vocab_stats as _vocab_parallel
from ._rows import Rows, check_values, leading_empty
from ._types import TokenStats

_N_OUT = len(TokenStats._fields)


@torch.library.custom_op("entropy_ops::token_stats", mutates_args=())
def _token_stats_op(logits: Tensor, labels: Optional[Tensor], temperature: Optional[Tensor],
                    temperature_scalar: float, ignore_index: int, mask: Optional[Tensor],
                    backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The fields of :class:`TokenStats` in order; ``logp`` is zeros when ``labels`` is None."""
    r = Rows(logits)
    y, t, m = r.per_row(labels), r.temperature(temperature), r.mask(mask)
    check_values(r.x, y, t, ignore_index, m)
    stats = _backends.get_kernel(backend, "token_stats")(r.x, y, t, temperature_scalar, ignore_index, m)
    if stats.logp is None:
        stats = stats._replace(logp=torch.zeros_like(stats.lse))
    return tuple(r.out(v) for v in stats)


@_token_stats_op.register_fake
def _(logits, labels, temperature, temperature_scalar, ignore_index, mask, backend):
    return tuple(leading_empty(logits) for _ in range(_N_OUT))


def _setup_no_grad(ctx, inputs, output):
    ctx.mark_non_differentiable(*output)


def _no_grad(ctx, *grads):
    raise RuntimeError("entropy_ops: token_stats outputs are not differentiable")


_token_stats_op.register_autograd(_no_grad, setup_context=_setup_no_grad)


def token_stats(logits: Tensor, labels: Optional[Tensor] = None, temperature=1.0, *,
                ignore_index: int = -100, mask: Optional[Tensor] = None, process_group=None,
                vocab_start: Optional[int] = None) -> TokenStats:
    """Per-row statistics of ``p = softmax(logits / temperature)``, all in one pass over the logits.

    Args:
        logits: ``[..., V]`` float32, bfloat16, float16 or float64; last dim contiguous.
        labels: optional ``[...]`` int64 or int32; as in :func:`logprobs_and_entropy` (a label equal
            to ``ignore_index`` gives ``logp = 0``; labels outside ``[0, V)`` raise on CPU tensors).
        temperature: a Python float > 0 (a compile-time constant under ``torch.compile``: each new
            value recompiles), a 0-d tensor, or a tensor of the leading shape ``[...]``. Detached.
        ignore_index: the label value that marks rows without a target.
        mask: optional bool ``[...]``; rows where it is False are not read and give 0 everywhere.
        process_group, vocab_start: vocab parallel, as in :func:`entropy`: ``logits`` is this
            rank's vocab shard, every rank gets the statistics of the full row (``self_certainty``
            averages over the full V).

    Returns:
        :class:`TokenStats` ``(lse, entropy, logp, max_logp, collision, varentropy, self_certainty,
        entropy_drift)``, each ``[...]`` float32 (float64 for float64 logits); ``logp`` is None when
        ``labels`` is None. With ``z = logits / T``:
        ``lse = log sum_j exp z_j``, ``entropy = H = lse - sum_j p_j z_j``, ``logp = z_y - lse``,
        ``max_logp = max_j z_j - lse``, ``collision = sum_j p_j^2``,
        ``varentropy = sum_j p_j (log p_j)^2 - H^2`` (computed as ``sum_j p_j (log p_j + H)^2``,
        never negative), ``self_certainty = lse - mean_j z_j - log V`` (the mean is over all V
        entries: ``+inf`` on rows with ``-inf`` logits), ``entropy_drift = sum_j p_j^2 (log p_j + H)``
        (a policy-gradient step ``z += eta A (onehot(y) - p)`` changes the entropy by
        ``-eta A [p_y (log p_y + H) - entropy_drift]`` to first order). Rows that are all ``-inf`` or
        hold NaN/+inf give NaN in every statistic of that row. Terms with ``p_j = 0`` contribute
        exactly 0. The outputs are not differentiable.
    """
    leading = _validate.logits(logits, sharded=process_group is not None)
    if labels is not None:
        labels = _validate.labels(labels, logits, leading)
    t, t_scalar = _validate.temperature(temperature, logits, leading)
    ignore_index = _validate.integer("ignore_index", ignore_index)
    mask = _validate.row_mask(mask, logits, leading)
    if process_group is not None or vocab_start is not None:
        group, vocab_start = _validate_vocab.vocab_parallel(process_group, vocab_start)
        return _vocab_parallel.token_stats(logits, labels, t, t_scalar, ignore_index, mask, group, vocab_start)
    backend = _backends.resolve("token_stats", logits.device, logits.dtype)
    out = _token_stats_op(logits, labels, t, t_scalar, ignore_index, mask, backend)
    stats = TokenStats(*out)
    return stats if labels is not None else stats._replace(logp=None)
