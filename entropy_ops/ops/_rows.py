"""Shared plumbing of the vocabulary-row ops: flatten ``[..., V]`` to rows, value checks inside
the op (SPEC §2: always on CPU tensors, on CUDA only under ``ENTROPY_OPS_CHECK=1``)."""
import math
from typing import Optional, Tuple

import torch

from .. import _value_checks
from .._validate import normal_range
from ..backends.kernel import acc_dtype


def rows(x: torch.Tensor) -> torch.Tensor:
    """``[..., V] -> [N, V]`` (a view when the leading dims collapse, a copy otherwise)."""
    return x.reshape(-1, x.shape[-1])


# A grid of rows is read in place while it spans at most this many rows per row of the tensor.
GRID_SLACK = 1.25


class Rows:
    """``logits [..., V]`` (last dim contiguous) as the ``[M, V]`` rows, with a row stride, that a
    kernel reads:

    - the leading dims collapse (contiguous rows, a padded vocab ``x[..., :V]``): ``x`` is a view,
      ``M = N``;
    - they do not, but every row sits on one grid of equally spaced rows, none shared
      (``logits[:, :-1]``, ``logits[:, -L:]`` with a short prompt, a transposed ``[T, B, V]``):
      ``x`` views the grid from the first row to the last (``M <= GRID_SLACK * N``) and ``index``
      says where each of the N rows is; the rows between are masked out (never read), per-row
      inputs are scattered to the grid and outputs gathered from it (O(N), no copy of the logits);
    - otherwise (rows that share memory, rows far apart): ``x`` is a copy.
    """

    def __init__(self, logits: torch.Tensor):
        self.leading = logits.shape[:-1]
        self.vocab = logits.shape[-1]
        self.n = math.prod(self.leading)
        grid = grid_of(logits)
        self.index = None
        if grid is None:
            self.x = logits.reshape(-1, self.vocab)
            self.m = self.n
            return
        row, self.steps, self.m = grid
        self.x = logits.as_strided((self.m, self.vocab), (row, 1))
        index = torch.zeros((), dtype=torch.int64, device=logits.device)
        for i, (size, step) in enumerate(zip(self.leading, self.steps)):
            shape = [1] * len(self.leading)
            shape[i] = size
            index = index + torch.arange(size, device=logits.device).mul_(step).view(shape)
        self.index = index.reshape(-1)

    @property
    def on_grid(self) -> bool:
        return self.index is not None

    def between(self) -> torch.Tensor:
        """On a grid, the ``[M - N]`` grid rows that are not rows of the tensor, ascending (found by a
        stable sort, not ``nonzero``: no host sync)."""
        on = torch.zeros(self.m, dtype=torch.uint8, device=self.x.device).index_fill_(0, self.index, 1)
        return torch.argsort(on, stable=True)[: self.m - self.n]

    def per_row(self, t: Optional[torch.Tensor], dtype=None, fill=0) -> Optional[torch.Tensor]:
        """:func:`per_row` of ``t`` on the kernel's rows (``fill`` on the grid rows between)."""
        t = per_row(t, self.n, dtype)
        if t is None or self.index is None:
            return t
        return t.new_full((self.m,), fill).index_copy_(0, self.index, t)

    def temperature(self, temperature) -> Optional[torch.Tensor]:
        return self.per_row(temperature, acc_dtype(self.x.dtype), fill=1)

    def mask(self, mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The row mask on the kernel's rows: on a grid, False on the rows between."""
        if self.index is not None and mask is None:
            mask = torch.ones(self.n, dtype=torch.bool, device=self.x.device)
        return self.per_row(mask, fill=False)

    def out(self, v: torch.Tensor) -> torch.Tensor:
        """A kernel's ``[M]`` output as the leading shape."""
        return (v if self.index is None else v.index_select(0, self.index)).view(self.leading)

    def as_logits(self, buf: torch.Tensor) -> torch.Tensor:
        """A contiguous ``[M, V]`` buffer written row for row with ``x`` (a gradient, a mask), seen as
        a tensor of the logits' shape: a view, on a grid too (the rows between are not in it)."""
        shape = (*self.leading, self.vocab)
        return buf.view(shape) if self.index is None else _grid_view(buf, shape, self.steps)

    def take(self, start: int, end: int) -> torch.Tensor:
        """Rows ``start:end`` of the N rows (in the order of the leading dims) as ``[end - start, V]``:
        a view, or on a grid a copy of those rows only (a chunk, never the whole tensor)."""
        return self.x[start:end] if self.index is None else self.x.index_select(0, self.index[start:end])

    def pick(self, index: torch.Tensor) -> torch.Tensor:
        """``x[i, index[i]]`` of every row ``i`` (``index [N]``), or ``x[i, index[i, k]]`` (``[N, K]``)."""
        cols = index if index.dim() == 2 else index[:, None]
        picked = self.x.gather(1, cols) if self.index is None else self.x[self.index[:, None], cols]
        return picked if index.dim() == 2 else picked.squeeze(1)


def grid_of(x: torch.Tensor):
    """:func:`_grid` of ``x`` when its leading dims do not collapse, else None: the layout
    :class:`Rows` and :func:`full_empty` agree on."""
    return None if collapses(x) else _grid(x)


def collapses(x: torch.Tensor) -> bool:
    """Whether ``x.view(-1, V)`` works (decided from the strides: under tracing a failing ``view``
    raises ValueError, not RuntimeError)."""
    dims = [(size, stride) for size, stride in zip(x.shape[:-1], x.stride()[:-1]) if size != 1]
    return all(outer == inner * size for (_, outer), (size, inner) in zip(dims, dims[1:]))


def _grid(x: torch.Tensor, slack: Optional[float] = GRID_SLACK):
    """``(row stride, per-dim steps in rows, M)`` when the rows of ``x`` sit on one grid of rows
    ``row`` elements apart, no two rows on one grid row, spanning ``M <= slack * N`` rows (any M
    with ``slack=None``: no ``inf * N``, which symbolic sizes under torch.compile turn into NaN);
    else None."""
    vocab = x.shape[-1]
    dims = [(size, stride) for size, stride in zip(x.shape[:-1], x.stride()[:-1]) if size != 1]
    n = math.prod(x.shape[:-1])
    if not dims or n == 0:
        return None
    row = min(stride for _, stride in dims)
    if row < vocab or any(stride % row for _, stride in dims):
        return None  # rows overlap, or are not on one grid
    span = 1  # grid rows spanned by the dims seen, smallest stride first
    for size, stride in sorted(dims, key=lambda d: d[1]):
        if stride // row < span:
            return None  # two rows on one grid row
        span += (size - 1) * (stride // row)
    if slack is not None and span > slack * n:
        return None
    steps = tuple(0 if size == 1 else stride // row for size, stride in zip(x.shape[:-1], x.stride()[:-1]))
    return row, steps, span


def distinct_rows(x: torch.Tensor) -> bool:
    """Whether every row of ``x`` has its own memory (no expanded or unfolded rows), decided from
    the strides; ``torch._debug_has_internal_overlap`` answers "too hard" for padded rows."""
    if collapses(x):
        flat = x.reshape(-1, x.shape[-1])
        return flat.shape[0] <= 1 or flat.stride(0) >= x.shape[-1]
    return _grid(x, slack=None) is not None or torch._debug_has_internal_overlap(x) == 0


def full_empty(logits: torch.Tensor, dtype=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(out, out_rows)``: an uninitialized tensor of ``logits.shape`` and the ``[M, V]`` rows a
    kernel writes it through, row for row with :class:`Rows`' ``x``. On a grid, ``out`` views a
    fresh ``[M, V]`` buffer with the logits' layout (the rows between hold whatever the kernel
    writes to masked rows). The fake (meta) implementations call this too: same strides."""
    dtype = logits.dtype if dtype is None else dtype
    vocab = logits.shape[-1]
    grid = grid_of(logits)
    if grid is None:
        out = torch.empty(logits.shape, dtype=dtype, device=logits.device)
        return out, out.view(-1, vocab)
    _, steps, m = grid
    buf = torch.empty((m, vocab), dtype=dtype, device=logits.device)
    return _grid_view(buf, logits.shape, steps), buf


def _grid_view(buf: torch.Tensor, shape, steps) -> torch.Tensor:
    """``buf [M, V]`` (contiguous) as ``shape``, each leading dim ``steps`` rows apart."""
    return buf.as_strided(shape, tuple(step * shape[-1] for step in steps) + (1,))


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


def check_values(x, labels, temperature, ignore_index: int, mask) -> None:
    """Checks that read tensor values; on CUDA they run as device-side asserts (no host sync)."""
    if not _value_checks.enabled(x.device):
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
        _value_checks.require(ok, message)
