"""Layout plumbing of the token-level ops (SPEC §3.2). Kernels see one layout: flat ``[N]`` tokens
and int64 offsets ``cu [S + 1]`` (a ``[B, T]`` batch is ``S = B`` rows of length ``T``). Checks that
read ``cu_seqlens`` or quantile values run here, inside the ops (SPEC §2: always on CPU tensors, on
CUDA only under ``ENTROPY_OPS_CHECK=1`` as device-side asserts)."""
from typing import Optional, Tuple

import torch

from .. import _value_checks


def row_offsets(n_rows: int, row_len: int, device) -> torch.Tensor:
    """The offsets ``[0, T, 2T, ..., B T]`` of a ``[B, T]`` batch seen as packed sequences."""
    return torch.arange(n_rows + 1, dtype=torch.int64, device=device) * row_len


def flat_tokens(x: torch.Tensor, mask: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor]
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """``(x [N], mask [N] or None, cu int64 [S + 1])``, all contiguous (the kernels read them with
    unit stride: a strided or expanded mask or offsets tensor would be misread), of ``[B, T]`` rows
    (``cu_seqlens`` None) or of packed ``[N]`` tokens, checking user-given offsets."""
    if cu_seqlens is None:
        cu = row_offsets(x.shape[0], x.shape[1], x.device)
    else:
        cu = cu_seqlens.long()
        check_offsets(cu, x.shape[0])
        cu = in_range_offsets(cu, x.shape[0])
    return x.reshape(-1).contiguous(), flat_mask(mask), cu


def in_range_offsets(cu: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """Offsets that are non-decreasing and within ``[0, n_tokens]`` (the same tensor's values when
    it is valid): offsets left unchecked (CUDA without ``ENTROPY_OPS_CHECK``) then give wrong
    numbers, never a read outside the tokens. Elementwise on ``S + 1`` values, no host sync."""
    return torch.cummax(cu.clamp(0, n_tokens), 0).values


def flat_mask(mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if mask is None else mask.reshape(-1).contiguous()


def segment_ids(cu: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """int64 ``[N]``: the sequence each token belongs to (empty sequences own no token), found by
    a binary search of the offsets, so no host round trip. Clamped so that offsets that were never
    checked (CUDA without ``ENTROPY_OPS_CHECK``) give wrong numbers, never a fault."""
    pos = torch.arange(n_tokens, dtype=cu.dtype, device=cu.device)
    return torch.searchsorted(cu[1:], pos, right=True).clamp(max=max(cu.shape[0] - 2, 0))


def check_offsets(cu: torch.Tensor, n_tokens: int) -> None:
    if not _value_checks.enabled(cu.device):
        return
    ok = (cu[0] == 0) & (cu[-1] == n_tokens) & (cu[1:] >= cu[:-1]).all()
    _value_checks.require(ok, f"cu_seqlens: must start at 0, be non-decreasing and end at N={n_tokens} "
                              f"(the number of packed tokens)")


def check_quantiles(q: Optional[torch.Tensor]) -> None:
    if q is None or not _value_checks.enabled(q.device):
        return
    _value_checks.require(((q >= 0) & (q <= 1)).all(), "q: every quantile must be in [0, 1]")
