"""``masked_quantile``, ``peak_entropy_mask`` and ``EntropyThreshold``: exact quantiles of the
valid tokens, per sequence or over the batch, without a host sync (SPEC §3.2).

With ``n`` valid entries (mask True and not NaN, as ``torch.nanquantile`` skips NaN) and ``v_(k)``
their k-th smallest (0-based), the q-quantile is ``torch.quantile``'s 'linear' rule in float64:

    r = q (n - 1),  quantile = lerp(v_(floor r), v_(ceil r), r - floor r),  NaN where n = 0

SIREN's peak mask is ``entropy > quantile`` on valid tokens (ARES's high-window-entropy mask with
``window_entropy`` input). Kernels find the two order statistics on the device, with no
16M-element cap (``backends/token_kernel.py`` has their rules; ``backends/torch_tokens.py`` why
the torch path sorts per sequence but selects over the batch).
"""
import copy
from typing import Optional

import torch
from torch import Tensor

from .. import _backends, _validate, _validate_tokens
from ..backends.kernel import acc_dtype
from ._tokens import check_offsets, check_quantiles, flat_mask, flat_tokens, segment_ids


@torch.library.custom_op("entropy_ops::masked_quantile", mutates_args=())
def _masked_quantile_op(values: Tensor, mask: Optional[Tensor], q: Optional[Tensor], q_scalar: float,
                        per_sequence: bool, cu_seqlens: Optional[Tensor], backend: str) -> Tensor:
    """float64 ``[S]`` per sequence (``[]`` over all tokens), after a leading ``[Q]`` for a 1-d ``q``."""
    check_quantiles(q)
    if per_sequence:
        x, m, cu = flat_tokens(values, mask, cu_seqlens)
    else:
        if cu_seqlens is not None:
            check_offsets(cu_seqlens.long(), values.shape[0])
        x, m, cu = values.reshape(-1).contiguous(), flat_mask(mask), None
    qs = torch.full((1,), q_scalar, dtype=torch.float64, device=values.device) if q is None else q.reshape(-1)
    out = _backends.get_kernel(backend, "masked_quantile")(x, m, cu, qs.to(torch.float64))
    out = out if per_sequence else out.view(-1)
    return out if q is not None and q.dim() == 1 else out[0].clone()


@_masked_quantile_op.register_fake
def _(values, mask, q, q_scalar, per_sequence, cu_seqlens, backend):
    shape = []
    if per_sequence:
        shape = [values.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1]
    if q is not None and q.dim() == 1:
        shape = [q.shape[0]] + shape
    return values.new_empty(shape, dtype=torch.float64)


def _setup_no_grad(ctx, inputs, output):
    ctx.mark_non_differentiable(output)


def _no_grad(ctx, grad):
    raise RuntimeError("entropy_ops: masked_quantile is not differentiable")


_masked_quantile_op.register_autograd(_no_grad, setup_context=_setup_no_grad)


def _checked(values, mask, cu_seqlens, per_sequence, name, process_group=None):
    if process_group is not None:
        _validate_tokens.process_group(process_group)
    _validate_tokens.tokens(name, values, cu_seqlens, allow_flat=not per_sequence)
    cu_seqlens = _validate_tokens.cu_seqlens(cu_seqlens, name, values)
    return _validate_tokens.mask(mask, name, values), cu_seqlens


def _data_parallel():
    # Imported on first use with a process group: ``parallel.data`` builds on torch.distributed.
    from ..parallel import data
    return data


def _quantile64(values, mask, q, q_scalar, per_sequence, cu_seqlens):
    backend = _backends.resolve("masked_quantile", values.device, values.dtype)
    return _masked_quantile_op(values, mask, q, q_scalar, per_sequence, cu_seqlens, backend)


def masked_quantile(values: Tensor, mask: Optional[Tensor], q, per_sequence: bool = True,
                    cu_seqlens: Optional[Tensor] = None, process_group=None) -> Tensor:
    """Exact q-quantile of the valid entries, per sequence or over all of them.

    Args:
        values: float32, bfloat16, float16 or float64: ``[B, T]`` (each row one sequence), or packed
            ``[N]`` with ``cu_seqlens``; with ``per_sequence=False`` also ``[N]`` alone.
        mask: bool of ``values``' shape (True = valid), or None (every entry valid). NaN values
            are skipped like masked ones (``torch.nanquantile``'s rule).
        q: a Python float in [0, 1] (a compile-time constant under ``torch.compile``), or a float
            tensor of quantiles, 0-d or 1-d ``[Q]`` (values in [0, 1], checked on CPU tensors and on
            CUDA under ``ENTROPY_OPS_CHECK=1``).
        per_sequence: True: one quantile per sequence (row of ``[B, T]``, or ``cu_seqlens``
            segment); False: one over all valid entries of the batch.
        cu_seqlens: optional int32/int64 ``[S + 1]`` offsets of packed sequences (from 0,
            non-decreasing, to ``N``; empty sequences allowed).
        process_group: a ``torch.distributed`` data-parallel group: with ``per_sequence=False`` the
            quantile is over the valid entries of all its ranks (exact, the same on every rank, as
            on their batches concatenated; a fixed number of collectives, see
            ``entropy_ops.parallel.data``). Per sequence, each sequence lives on one rank: no
            collective, this rank's sequences.

    Returns:
        float32 (float64 for float64 values): ``[B]`` / ``[S]`` per sequence, ``[]`` over all; a
        1-d ``q`` adds a leading ``[Q]`` dimension (as ``torch.quantile``). ``r = q (n - 1)``,
        ``lerp(v_(floor r), v_(ceil r), r - floor r)`` over the ``n`` valid entries sorted
        ascending, rank and interpolation in float64 (so it equals ``torch.nanquantile`` on the
        valid entries upcast to float64, then rounded); NaN where ``n = 0``. No element-count cap.
        Not differentiable.
    """
    per_sequence = _validate.flag("per_sequence", per_sequence)
    mask, cu_seqlens = _checked(values, mask, cu_seqlens, per_sequence, "values", process_group)
    q, q_scalar = _validate_tokens.quantile(q, values, allow_vector=True)
    if process_group is not None and not per_sequence:
        out = _data_parallel().masked_quantile(values, mask, q, q_scalar, cu_seqlens, process_group)
        return out.to(acc_dtype(values.dtype))
    out = _quantile64(values, mask, q, q_scalar, per_sequence, cu_seqlens)
    return out.to(acc_dtype(values.dtype))


def peak_entropy_mask(entropy: Tensor, mask: Optional[Tensor], q=0.8, per_sequence: bool = True,
                      cu_seqlens: Optional[Tensor] = None, process_group=None) -> Tensor:
    """SIREN's peak mask: the valid tokens whose entropy exceeds the q-quantile.

    Args:
        entropy, mask, per_sequence, cu_seqlens, process_group: as in :func:`masked_quantile`
            (``entropy`` the values).
        q: a Python float in [0, 1] or a 0-d float tensor.

    Returns:
        bool of ``entropy``'s shape: ``entropy > masked_quantile(entropy, mask, q, ...)`` and
        ``mask``, compared in float64 against the unrounded quantile of the token's own sequence
        (or of the batch); all False in a sequence without valid tokens (NaN quantile).
    """
    per_sequence = _validate.flag("per_sequence", per_sequence)
    mask, cu_seqlens = _checked(entropy, mask, cu_seqlens, per_sequence, "entropy", process_group)
    q, q_scalar = _validate_tokens.quantile(q, entropy, allow_vector=False)
    if process_group is not None and not per_sequence:
        return _data_parallel().peak_entropy_mask(entropy, mask, q, q_scalar, cu_seqlens, process_group)
    threshold = _quantile64(entropy, mask, q, q_scalar, per_sequence, cu_seqlens)
    if per_sequence:
        if cu_seqlens is None:
            threshold = threshold[:, None]
        else:
            threshold = threshold[segment_ids(cu_seqlens.long(), entropy.shape[0])]
    peak = entropy.double() > threshold  # False against a NaN threshold
    return peak if mask is None else peak & mask


class EntropyThreshold(torch.nn.Module):
    """A running entropy threshold: per-sequence q-quantile -> median over sequences -> EMA.

    Each training-mode ``forward`` computes ``new`` = the median (0.5-quantile with linear
    interpolation, i.e. numpy's ``nanmedian``; torch's ``nanmedian`` would take the lower middle
    value) of the per-sequence q-quantiles, skipping sequences without valid tokens, then updates
    the ``value`` buffer on the device:

        value = new                                        on the first update (``initialized`` False)
        value = momentum * value + (1 - momentum) * new    afterwards
        value unchanged                                    when new is NaN (every sequence empty, or
                                                           +-inf entropies whose median is NaN)

    computed in float64 and stored in ``value``'s dtype: float32, or float64 after ``.double()``;
    a conversion to a 16-bit dtype (``model.to(torch.bfloat16)``, ``.half()``) keeps it float32,
    since a bf16 EMA at momentum 0.99 cannot move (``0.01 * step`` is below half its ulp).
    ``value`` starts as NaN (no threshold yet); in eval mode ``forward`` only returns it.

    Args:
        q: Python float in [0, 1], the per-sequence quantile.
        momentum: Python float in [0, 1], the weight kept by the old value.
        process_group: a ``torch.distributed`` data-parallel group: the median is over the
            sequences of all its ranks (exact), so ``value`` is the same on every rank and equals
            the single-process value on the batches concatenated. The module then holds the group:
            ``copy.deepcopy`` shares it with the copy; pickling goes through ``state_dict`` only.
    """

    def __init__(self, q: float = 0.95, momentum: float = 0.99, process_group=None):
        super().__init__()
        self.q = _validate.probability("q", q, open_low=False)
        self.momentum = _validate_tokens.momentum(momentum)
        self.process_group = None if process_group is None else _validate_tokens.process_group(process_group)
        self.register_buffer("value", torch.tensor(float("nan")))
        self.register_buffer("initialized", torch.tensor(False))

    def extra_repr(self) -> str:
        return f"q={self.q}, momentum={self.momentum}"

    def _apply(self, fn, recurse=True):
        value = self.value
        super()._apply(fn, recurse)
        if self.value.dtype in (torch.float16, torch.bfloat16):  # the old value, never rounded to 16 bits
            self.value = value.to(device=self.value.device, dtype=torch.float32)
        return self

    def __deepcopy__(self, memo):
        """A copy whose tensors are copied and whose process group is shared (a ``ProcessGroup``
        cannot be copied; ``copy.deepcopy`` of a module that holds one would raise)."""
        if self.process_group is not None:
            memo.setdefault(id(self.process_group), self.process_group)
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new

    def forward(self, entropy: Tensor, mask: Optional[Tensor] = None,
                cu_seqlens: Optional[Tensor] = None) -> Tensor:
        """``entropy`` (and ``mask``, ``cu_seqlens``) as in :func:`masked_quantile`; returns the
        threshold after this step's update, a 0-d tensor of ``value``'s dtype."""
        mask, cu_seqlens = _checked(entropy, mask, cu_seqlens, True, "entropy")
        if entropy.device != self.value.device:
            raise ValueError(f"entropy: is on {entropy.device} but this EntropyThreshold's state is on "
                             f"{self.value.device}; move the module with .to({str(entropy.device)!r})")
        if self.training:
            per_sequence = _quantile64(entropy, mask, None, self.q, True, cu_seqlens)
            if self.process_group is None:
                new = _quantile64(per_sequence, None, None, 0.5, False, None)  # NaN sequences skipped
            else:
                new = _data_parallel().masked_quantile(per_sequence, None, None, 0.5, None, self.process_group)
            old = self.value.double()
            ema = self.momentum * old + (1.0 - self.momentum) * new
            updated = torch.where(self.initialized, ema, new)
            seen = ~torch.isnan(new)
            self.value.copy_(torch.where(seen, updated, old))
            self.initialized.logical_or_(seen)
        return self.value.clone()
