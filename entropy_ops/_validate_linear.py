"""Validation at the Python entry of ``linear_logprobs_and_entropy`` (SPEC §2, §3.1): shapes, dtypes,
devices and Python scalars, each error naming the argument and the fix. Nothing here reads tensor
values; the label range and per-row temperatures are checked inside the op."""
import math
from typing import Optional, Tuple

import torch

from . import _validate
from ._validate import LABEL_DTYPES, LOGIT_DTYPES


def _same_device(name: str, t: torch.Tensor, hidden: torch.Tensor) -> None:
    if t.device != hidden.device:
        raise ValueError(f"{name}: is on {t.device} but hidden is on {hidden.device}; move it with .to(hidden.device)")


def hidden_and_weight(hidden, weight, bias, sharded: bool = False) -> Tuple[int, ...]:
    """Check ``hidden [..., D]``, ``weight [V, D]``, ``bias [V]`` and return the leading shape.
    ``sharded``: a vocab shard of the head (with ``process_group``), whose ``V = 0`` the layout
    check rejects on every rank of the group."""
    _validate.tensor("hidden", hidden)
    _validate.tensor("weight", weight)
    if hidden.dtype not in LOGIT_DTYPES:
        raise TypeError(f"hidden: dtype {hidden.dtype} is not supported; pass float32, bfloat16, float16 or float64")
    if hidden.dim() < 1 or hidden.shape[-1] == 0:
        raise ValueError(f"hidden: expected shape [..., D] with D >= 1, got {list(hidden.shape)}")
    if weight.dim() != 2:
        raise ValueError(f"weight: expected shape [V, D] (the LM head, as nn.Linear stores it), got {list(weight.shape)}")
    if weight.shape[0] == 0 and not sharded:
        raise ValueError("weight: the vocabulary dimension V is 0; V must be >= 1")
    if weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"weight: shape {list(weight.shape)} does not match hidden's last dimension D={hidden.shape[-1]}; "
            f"expected [V, {hidden.shape[-1]}] (pass lm_head.weight, not its transpose)"
        )
    if weight.dtype != hidden.dtype:
        raise TypeError(f"weight: dtype {weight.dtype} differs from hidden's {hidden.dtype}; cast one of them "
                        f"(e.g. hidden.to(weight.dtype))")
    _same_device("weight", weight, hidden)
    if bias is not None:
        _validate.tensor("bias", bias)
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"bias: expected shape [{weight.shape[0]}] (one value per vocabulary entry), "
                             f"got {list(bias.shape)}")
        if bias.dtype != hidden.dtype:
            raise TypeError(f"bias: dtype {bias.dtype} differs from hidden's {hidden.dtype}; use bias.to(hidden.dtype)")
        _same_device("bias", bias, hidden)
    return tuple(hidden.shape[:-1])


def labels(y, hidden: torch.Tensor, leading) -> torch.Tensor:
    """``[...]`` (one label per row) or ``[..., K]`` (K candidate tokens per row, K >= 1)."""
    _validate.tensor("labels", y)
    if y.dtype not in LABEL_DTYPES:
        raise TypeError(f"labels: dtype {y.dtype} is not supported; pass int64 or int32 (e.g. labels.long())")
    shape = tuple(y.shape)
    if shape != leading and not (len(shape) == len(leading) + 1 and shape[:-1] == leading and shape[-1] >= 1):
        raise ValueError(f"labels: expected shape {list(leading)} (one label per row) or {list(leading) + ['K']} "
                         f"(K >= 1 candidate tokens per row), got {list(shape)}")
    _same_device("labels", y, hidden)
    return y


def temperature(t, hidden: torch.Tensor, leading) -> Tuple[Optional[torch.Tensor], float]:
    """``(tensor or None, python float)``; a tensor is detached (no gradient flows to T)."""
    return _validate.temperature(t, hidden, leading, source="hidden")


def row_mask(m, hidden: torch.Tensor, leading) -> Optional[torch.Tensor]:
    if m is None:
        return None
    if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
        got = m.dtype if isinstance(m, torch.Tensor) else type(m).__name__
        raise TypeError(f"mask: expected a bool tensor (True = compute the row), got {got}; use mask.bool()")
    _validate.not_dtensor("mask", m)
    if tuple(m.shape) != leading:
        raise ValueError(f"mask: expected shape {list(leading)} (hidden's leading shape), got {list(m.shape)}")
    _same_device("mask", m, hidden)
    return m


def positive_float(name: str, v, dtype: torch.dtype, *, allow_none: bool) -> float:
    """A Python float > 0 in the normal range of the type the kernels compute with for ``dtype``;
    ``None`` (when allowed) is returned as 0.0, the op's "absent"."""
    if v is None and allow_none:
        return 0.0
    if not _validate.is_real(v):
        raise TypeError(f"{name}: expected a Python float > 0{' or None' if allow_none else ''}, got {type(v).__name__}")
    if not 0 < v < math.inf:  # NaN fails it too; comparisons, not math.isfinite, trace under dynamic=True
        raise ValueError(f"{name}: must be a finite float > 0, got {v}")
    return float(_validate.normal_range(name, v, dtype))


def chunk_size(v) -> int:
    """``None`` -> 0 (the op picks a size from V); else an int >= 1."""
    if v is None:
        return 0
    if not _validate.is_integer(v):
        raise TypeError(f"chunk_size: expected an int >= 1 (rows per chunk) or None, got {type(v).__name__}")
    if v < 1:
        raise ValueError(f"chunk_size: must be >= 1 (rows per chunk) or None for the default, got {v}")
    return int(v)
