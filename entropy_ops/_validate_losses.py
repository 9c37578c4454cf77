"""Entry checks of the token-level losses: shapes, dtypes, devices and Python scalars, each error
naming the argument and the fix. Value checks (a float mask holding only 0 and 1) run inside, on
CPU tensors only or under ``ENTROPY_OPS_CHECK=1`` as device asserts (no host sync)."""
from typing import Optional, Sequence, Tuple

import torch

from . import _validate, _value_checks


def _float_tensor(name: str, t) -> torch.Tensor:
    _validate.tensor(name, t)
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating point tensor, got {t.dtype}; use {name}.float()")
    return t


def like(name: str, t, ref: torch.Tensor, ref_name: str, optional: bool = False) -> Optional[torch.Tensor]:
    """A floating tensor of ``ref``'s shape and device."""
    if t is None and optional:
        return None
    _float_tensor(name, t)
    if tuple(t.shape) != tuple(ref.shape):
        raise ValueError(f"{name}: expected shape {list(ref.shape)} (that of {ref_name}), got {list(t.shape)}")
    if t.device != ref.device:
        raise ValueError(f"{name}: is on {t.device} but {ref_name} is on {ref.device}; move it with .to()")
    return t


def matrix_and_mask(values, mask, name: str) -> Tuple[torch.Tensor, torch.Tensor]:
    _float_tensor(name, values)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask: expected a bool (or 0/1 float) tensor, got {type(mask).__name__}")
    _validate.not_dtensor("mask", mask)
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(f"mask: expected a bool or 0/1 floating point tensor, got {mask.dtype}; use mask.bool()")
    if tuple(mask.shape) != tuple(values.shape):
        raise ValueError(f"mask: expected shape {list(values.shape)} (that of {name}), got {list(mask.shape)}")
    if mask.device != values.device:
        raise ValueError(f"mask: is on {mask.device} but {name} is on {values.device}; move it with .to()")
    return values, mask


def binary_mask(mask: torch.Tensor) -> torch.Tensor:
    """A bool mask; a float mask must hold only 0 and 1: checked on CPU tensors (a host read in
    eager, a device assert inside a compiled graph, which a host read would break) and on CUDA
    tensors under ``ENTROPY_OPS_CHECK=1`` (a device assert: no host sync)."""
    if mask.dtype == torch.bool:
        return mask
    if _value_checks.enabled(mask.device):
        _value_checks.require(((mask == 0) | (mask == 1)).all(),
                              "mask: a floating point mask must hold only 0 and 1; pass a bool mask for selections")
    return mask != 0


def choice(name: str, value, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{name}: {value!r} is not one of {', '.join(allowed)}")
    return value


def positive_int(name: str, v) -> int:
    if not _validate.is_integer(v) or v < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
    return int(v)


def global_counts(mode: str, dp_size, batch_num_tokens, global_batch_size, loss_scale_factor,
                  device: torch.device) -> int:
    """verl's data-parallel aggregation arguments of a checked ``mode``: ``dp_size`` an int >= 1;
    with ``dp_size > 1``, ``token-mean`` needs ``batch_num_tokens`` and the ``seq-mean-*`` modes
    ``global_batch_size``; each count a number or a 0-d tensor (``_count``). Returns ``dp_size``."""
    dp_size = positive_int("dp_size", dp_size)
    _count("batch_num_tokens", batch_num_tokens, device)
    _count("global_batch_size", global_batch_size, device)
    _count("loss_scale_factor", loss_scale_factor, device, positive=True)
    if dp_size > 1 and mode == "token-mean" and batch_num_tokens is None:
        raise ValueError("batch_num_tokens: token-mean with dp_size > 1 needs the global token count")
    if dp_size > 1 and mode.startswith("seq-mean") and global_batch_size is None:
        raise ValueError(f"global_batch_size: {mode} with dp_size > 1 needs the global sequence count")
    return dp_size


def _count(name: str, v, device: torch.device, positive: bool = False) -> None:
    """None, a Python number (>= 0, or > 0 with ``positive``), or a 0-d real tensor on ``device`` or
    the CPU (a CPU scalar is an operand on any device). Numbers stay numbers in the loss: a tensor
    made of one on a GPU would be a blocking host-to-device copy."""
    if v is None:
        return
    if isinstance(v, torch.Tensor):
        _validate.not_dtensor(name, v)
        if v.dim() != 0 or v.dtype == torch.bool or v.is_complex():
            raise ValueError(f"{name}: expected a number or a 0-d real tensor, got a {v.dtype} tensor of shape "
                             f"{list(v.shape)}")
        if v.device.type != "cpu" and v.device != device:
            raise ValueError(f"{name}: is on {v.device} but the loss is on {device}; pass a Python number or "
                             f"move it with .to()")
        return
    if not _validate.is_real(v) or not (v > 0 if positive else v >= 0):
        raise ValueError(f"{name}: expected a Python number {'> 0' if positive else '>= 0'} or a 0-d tensor, "
                         f"got {v!r}")


def ratio(name: str, v, *, low_open: bool = True, high: float = 1.0) -> float:
    """A Python float in (0, high] (``low_open``) or [0, high]."""
    if not _validate.is_real(v):
        raise TypeError(f"{name}: expected a Python float, got {type(v).__name__}")
    v = float(v)
    ok = (0.0 < v <= high) if low_open else (0.0 <= v <= high)
    if not ok:
        raise ValueError(f"{name}: must be in {'(' if low_open else '['}0, {high:g}], got {v}")
    return v


def number(name: str, v) -> float:
    if not _validate.is_real(v) or v != v:
        raise TypeError(f"{name}: expected a real Python number, got {v!r}")
    return float(v)
