"""Validation at the Python entry of the token-level ops (SPEC §2, §3.2): layouts (``[B, T]`` rows
or packed ``[N]`` tokens with ``cu_seqlens``), masks, windows and quantiles, each error naming the
argument and the fix. Nothing here reads tensor values: the checks of ``cu_seqlens`` offsets and of
quantile tensors live inside the ops (``ops/_tokens.py``), so compiled graphs stay whole."""
from typing import Optional, Tuple

import torch

from . import _validate

FLOAT_DTYPES = _validate.LOGIT_DTYPES
OFFSET_DTYPES = (torch.int32, torch.int64)


def _dtype_or_type(x) -> str:
    return str(x.dtype) if isinstance(x, torch.Tensor) else type(x).__name__


def _same_device(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name}: is on {t.device} but {ref_name} is on {ref.device}; "
                         f"move it with .to({ref_name}.device)")


def cu_seqlens(cu, name: str, x: torch.Tensor) -> Optional[torch.Tensor]:
    """``cu_seqlens``: None, or int32/int64 ``[S + 1]`` offsets on the device of ``x``."""
    if cu is None:
        return None
    if not isinstance(cu, torch.Tensor) or cu.dtype not in OFFSET_DTYPES:
        raise TypeError(f"cu_seqlens: expected an int32 or int64 tensor of sequence offsets, got "
                        f"{_dtype_or_type(cu)}; e.g. cu_seqlens.to(torch.int32)")
    _validate.not_dtensor("cu_seqlens", cu)
    if cu.dim() != 1 or cu.numel() == 0:
        raise ValueError(f"cu_seqlens: expected a 1-d tensor [S + 1] of offsets [0, ..., N], got shape "
                         f"{list(cu.shape)}")
    _same_device("cu_seqlens", cu, name, x)
    return cu


def tokens(name: str, x, cu, *, allow_flat: bool = False) -> None:
    """``x``: a float tensor ``[B, T]`` (one row per sequence), or ``[N]`` with ``cu_seqlens``;
    ``allow_flat`` also accepts ``[N]`` without ``cu_seqlens`` (reductions over all tokens)."""
    _validate.tensor(name, x)
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: dtype {x.dtype} is not supported; pass float32, bfloat16, float16 or "
                        f"float64 (e.g. {name}.float())")
    if cu is not None:
        if x.dim() != 1:
            raise ValueError(f"{name}: with cu_seqlens the tokens are packed and must be 1-d [N], got shape "
                             f"{list(x.shape)}; pass the packed tokens, or drop cu_seqlens for [B, T] rows")
    elif not (x.dim() == 2 or (allow_flat and x.dim() == 1)):
        want = "[B, T] (or [N])" if allow_flat else "[B, T] (one row per sequence)"
        raise ValueError(f"{name}: expected shape {want} without cu_seqlens, got {list(x.shape)}; "
                         f"pass packed [N] tokens with cu_seqlens for the padding-free layout")


def mask(m, name: str, x: torch.Tensor) -> Optional[torch.Tensor]:
    """``mask``: None or a bool tensor of the shape and device of ``x`` (True = valid token)."""
    if m is None:
        return None
    if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
        raise TypeError(f"mask: expected a bool tensor (True = valid token), got {_dtype_or_type(m)}; "
                        f"use mask.bool()")
    _validate.not_dtensor("mask", m)
    if m.shape != x.shape:
        raise ValueError(f"mask: expected shape {list(x.shape)} (the shape of {name}), got {list(m.shape)}")
    _same_device("mask", m, name, x)
    return m


def window(v) -> int:
    v = _validate.integer("window", v)
    if v < 1:
        raise ValueError(f"window: must be >= 1 (the number of tokens averaged), got {v}")
    return v


def offset(v) -> int:
    v = _validate.integer("offset", v)
    if v < 0:
        raise ValueError(f"offset: must be >= 0 (0 starts the window at the token itself), got {v}")
    return v


def quantile(q, x: torch.Tensor, *, allow_vector: bool) -> Tuple[Optional[torch.Tensor], float]:
    """``q``: a Python float in [0, 1] -> ``(None, q)``; a float tensor (0-d, or 1-d when
    ``allow_vector``) -> ``(q as float64, 0.0)``, its values checked inside the op."""
    if isinstance(q, torch.Tensor):
        _validate.not_dtensor("q", q)
        if not q.is_floating_point():
            raise TypeError(f"q: tensor dtype {q.dtype} is not floating point; use a float tensor")
        if q.dim() > (1 if allow_vector else 0):
            want = "a 0-d or 1-d tensor" if allow_vector else "a Python float or a 0-d tensor"
            raise ValueError(f"q: expected {want}, got shape {list(q.shape)}")
        _same_device("q", q, "the values", x)
        return q.detach().to(torch.float64), 0.0
    return None, _validate.probability("q", q, open_low=False)


def momentum(v) -> float:
    if not _validate.is_real(v):
        raise TypeError(f"momentum: expected a Python float in [0, 1], got {type(v).__name__}")
    if not 0.0 <= float(v) <= 1.0:
        raise ValueError(f"momentum: must be in [0, 1] (the weight kept by the old value), got {v}")
    return float(v)


def process_group(g):
    return _validate.process_group(g, "e.g. dist.group.WORLD or the data-parallel group of your trainer")
