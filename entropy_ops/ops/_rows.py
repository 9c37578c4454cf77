"""Shared plumbing of the vocabulary-row ops: flatten ``[..., V]`` to rows, value checks inside
the op (SPEC §2: always on CPU tensors, on CUDA only under ``ENTROPY_OPS_CHECK=1``)."""
import os
from typing import Optional

import torch

from .._validate import normal_range
from ..backends.kernel import acc_dtype


def rows(x: torch.Tensor) -> torch.Tensor:
    """``[..., V] -> [N, V]`` (a view when the leading dims collapse, a copy otherwise)."""
    return x.reshape(-1, x.shape[-1])


def leading_empty(logits: torch.Tensor) -> torch.Tensor:
    """An uninitialized per-row output: the leading shape of ``logits``, in its accumulation dtype."""
    return logits.new_empty(logits.shape[:-1], dtype=acc_dtype(logits.dtype))


def per_row(t: Optional[torch.Tensor], n_rows: int, dtype=None) -> Optional[torch.Tensor]:
    """A 0-d or leading-shape tensor as a contiguous ``[N]`` tensor (expanded when 0-d)."""
    if t is None:
        return None
    t = t.reshape(-1) if dtype is None else t.to(dtype).reshape(-1)
    if t.numel() == 1 and n_rows != 1:
        t = t.expand(n_rows)
    return t.contiguous()


def flat_temperature(temperature, x: torch.Tensor, n_rows: int):
    return per_row(temperature, n_rows, acc_dtype(x.dtype))


def _values_checked(device: torch.device) -> bool:
    return device.type == "cpu" or os.environ.get("ENTROPY_OPS_CHECK", "0") == "1"


def check_values(x, labels, temperature, ignore_index: int, mask) -> None:
    """Checks that read tensor values; on CUDA they run as device-side asserts (no host sync)."""
    if not _values_checked(x.device):
        return
    vocab = x.shape[-1]
    checks = []
    if temperature is not None:  # in the accumulation dtype: its normal range, as for a float T
        checks.append((normal_range("temperature", temperature, temperature.dtype),
                       f"temperature: every per-row temperature must be finite and in {temperature.dtype}'s "
                       f"normal range [{torch.finfo(temperature.dtype).tiny:.3g}, {torch.finfo(temperature.dtype).max:.3g}]"))
    if labels is not None:
        # An ignore_index that int32 labels cannot hold matches none of them (the kernels compare
        # in int64); comparing int32 labels with it would wrap it modulo 2^32.
        fits = labels.dtype != torch.int32 or -2**31 <= ignore_index < 2**31
        bad = (labels < 0) | (labels >= vocab)
        if fits:
            bad = bad & (labels != ignore_index)
        if mask is not None:
            bad = bad & mask
        checks.append((~bad.any(), f"labels: every label must be in [0, {vocab}) or equal ignore_index={ignore_index}"))
    for ok, message in checks:
        if x.device.type == "cpu":
            if not bool(ok):
                raise ValueError(message)
        else:
            torch._assert_async(ok, message)
