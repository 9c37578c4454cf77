"""Validation at the Python entry of every op (SPEC §2): shapes, dtypes, devices and Python
scalars, each error naming the argument and the fix. Nothing here reads tensor values, so compiled
graphs stay whole; value checks (label range, temperature > 0) live inside the ops."""
import math
import numbers
import sys
from typing import Optional, Tuple

import torch
from torch.autograd import forward_ad

LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
LABEL_DTYPES = (torch.int64, torch.int32)


def tensor(name: str, t) -> torch.Tensor:
    """``t`` as the first tensor of an op: a torch.Tensor, and not a DTensor (a custom op on a DTensor
    needs a sharding rule, which these ops do not register: torch's error would not say what to do)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    return not_dtensor(name, t)


def not_dtensor(name: str, t: torch.Tensor) -> torch.Tensor:
    """Every tensor argument, not only the first: a DTensor anywhere gets this error, not torch's
    "mixed torch.Tensor and DTensor" one."""
    dtensor = getattr(sys.modules.get("torch.distributed.tensor"), "DTensor", None)  # imported only if in use
    if dtensor is not None and isinstance(t, dtensor):
        raise TypeError(f"{name}: a DTensor (placements {tuple(t.placements)}) is not supported; pass a local tensor: "
                        f"{name}.to_local() with process_group= for a sharded one (README, Scale-out), or "
                        f"{name}.full_tensor()")
    return t


def logits(x, sharded: bool = False) -> Tuple[int, ...]:
    """Check ``logits [..., V]`` and return its leading shape. ``sharded``: a vocab shard (with
    ``process_group``), whose ``V = 0`` the layout check rejects on every rank of the group."""
    tensor("logits", x)
    if x.dtype not in LOGIT_DTYPES:
        raise TypeError(
            f"logits: dtype {x.dtype} is not supported; pass float32, bfloat16, float16 or float64 "
            f"(e.g. logits.float())"
        )
    if x.dim() < 1:
        raise ValueError("logits: expected shape [..., V] with at least one dimension, got a 0-d tensor")
    if x.shape[-1] == 0 and not sharded:
        raise ValueError(f"logits: the vocabulary dimension V is 0 (shape {tuple(x.shape)}); V must be >= 1")
    if x.shape[-1] > 1 and x.stride(-1) != 1 and x.numel() > 0:  # an empty tensor reads nothing
        raise ValueError(
            f"logits: the last dimension must be contiguous (stride 1), got stride {x.stride(-1)}; "
            f"call logits.contiguous()"
        )
    return tuple(x.shape[:-1])


def reverse_mode_only(op: str, *tensors) -> None:
    """Raise under forward-mode AD (``torch.func.jvp`` / ``jacfwd``, ``torch.autograd.forward_ad``)
    of a differentiable op's inputs: torch.library custom ops have no forward-mode rule, and torch
    drops their tangent without a word (the output's tangent is 0 or None, a silently wrong
    derivative). Skipped under torch.compile."""
    if torch.compiler.is_compiling():
        return
    if any(t is not None and forward_ad.unpack_dual(t).tangent is not None for t in tensors):
        raise NotImplementedError(
            f"{op}: forward-mode AD (torch.func.jvp, torch.func.jacfwd, torch.autograd.forward_ad) is not "
            f"supported: the custom op has no forward-mode rule and torch would drop the tangent silently; "
            f"differentiate in reverse mode (loss.backward(), torch.autograd.grad)")


def _same_device(name: str, t: torch.Tensor, ref: torch.Tensor) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name}: is on {t.device} but logits is on {ref.device}; move it with .to(logits.device)")


def _leading(name: str, t: torch.Tensor, leading: Tuple[int, ...], what: str) -> None:
    if tuple(t.shape) != leading:
        raise ValueError(
            f"{name}: expected shape {list(leading)} ({what}), got {list(t.shape)}"
        )


def is_real(v) -> bool:
    """A real scalar: a Python int or float, or a NumPy scalar (``np.float32(0.7)`` read from a
    config); never a bool (NumPy's ``bool_`` is not a ``numbers.Real``)."""
    return not isinstance(v, bool) and (isinstance(v, (int, float)) or isinstance(v, numbers.Real))


def is_integer(v) -> bool:
    """A Python int or a NumPy integer scalar; never a bool."""
    return not isinstance(v, bool) and (isinstance(v, int) or isinstance(v, numbers.Integral))


def normal_range(name: str, v, dtype: torch.dtype):
    """A positive scale ``v`` (a number, or a tensor to compare on the device) checked against the
    normal range of the type the kernels compute with for ``dtype`` (float32; float64 for float64):
    outside it ``v`` or ``1/v`` becomes 0 or inf there, and rows NaN. Returns ``v``, or the
    tensor's all-in-range flag."""
    finfo = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32)
    if isinstance(v, torch.Tensor):
        return ((v >= finfo.tiny) & (v <= finfo.max)).all()
    if not finfo.tiny <= v <= finfo.max:
        raise ValueError(f"{name}: must lie in {finfo.dtype}'s normal range [{finfo.tiny:.3g}, {finfo.max:.3g}] "
                         f"(the kernels compute with it in {finfo.dtype}), got {v}")
    return v


def temperature(t, x: torch.Tensor, leading, source: str = "logits") -> Tuple[Optional[torch.Tensor], float]:
    """Return ``(tensor or None, python float)``; a tensor is detached (no gradient flows to T).
    ``source`` names the tensor whose leading shape a per-row temperature must have."""
    if not isinstance(t, torch.Tensor) and not is_real(t):
        raise TypeError(f"temperature: expected a float > 0 or a tensor, got {type(t).__name__}")
    if not isinstance(t, torch.Tensor):
        # Comparisons, not math.isfinite: they trace under dynamic=True (NaN fails them too).
        if not 0 < t < math.inf:
            raise ValueError(f"temperature: must be a finite float > 0, got {t}")
        return None, float(normal_range("temperature", t, x.dtype))
    not_dtensor("temperature", t)
    if not t.is_floating_point():
        raise TypeError(f"temperature: tensor dtype {t.dtype} is not floating point; use a float tensor")
    if t.dim() != 0:
        _leading("temperature", t, leading, f"a 0-d tensor or one value per row, the full leading shape of "
                 f"{source}; partial shapes are not broadcast")
    _same_device("temperature", t, x)
    return t.detach(), 1.0


def labels(y, x: torch.Tensor, leading) -> torch.Tensor:
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"labels: expected an int64 or int32 tensor, got {type(y).__name__}")
    not_dtensor("labels", y)
    if y.dtype not in LABEL_DTYPES:
        raise TypeError(f"labels: dtype {y.dtype} is not supported; pass int64 or int32 (e.g. labels.long())")
    _leading("labels", y, leading, "the leading shape of logits")
    _same_device("labels", y, x)
    return y


def row_mask(m, x: torch.Tensor, leading) -> Optional[torch.Tensor]:
    if m is None:
        return None
    if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
        got = m.dtype if isinstance(m, torch.Tensor) else type(m).__name__
        raise TypeError(f"mask: expected a bool tensor (True = compute the row), got {got}; use mask.bool()")
    not_dtensor("mask", m)
    _leading("mask", m, leading, "the leading shape of logits")
    _same_device("mask", m, x)
    return m


def integer(name: str, v) -> int:
    if not is_integer(v):
        raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
    v = int(v)
    if not -(2**63) <= v < 2**63:
        raise ValueError(f"{name}: {v} does not fit in int64")
    return v


def flag(name: str, v) -> bool:
    """A Python bool, or NumPy's ``bool_`` (from a config) as a Python bool; never an int."""
    if type(v).__module__ == "numpy" and type(v).__name__ in ("bool", "bool_"):  # NumPy 2 / 1
        return bool(v)
    if not isinstance(v, bool):
        kind = type(v).__name__ if type(v).__module__ == "builtins" else f"{type(v).__module__}.{type(v).__name__}"
        raise TypeError(f"{name}: expected a bool (True or False), got {kind}")
    return v


def probability(name: str, v, *, open_low: bool) -> float:
    """A Python float in (0, 1] (``open_low``) or [0, 1]."""
    if not is_real(v):
        raise TypeError(f"{name}: expected a Python float, got {type(v).__name__}")
    v = float(v)
    ok = (0.0 < v <= 1.0) if open_low else (0.0 <= v <= 1.0)
    if not ok:
        interval = "(0, 1]" if open_low else "[0, 1]"
        raise ValueError(f"{name}: must be in {interval}, got {v}")
    return v


def process_group(g, example: str):
    """``process_group``: a ``torch.distributed`` ProcessGroup that this rank belongs to; ``example``
    names the group a trainer would pass (the error message's hint)."""
    import torch.distributed as dist  # only when a group is passed: a build without distributed imports fine
    if not dist.is_available() or not isinstance(g, dist.ProcessGroup):
        raise TypeError(f"process_group: expected a torch.distributed ProcessGroup ({example}), "
                        f"got {type(g).__name__}")
    if dist.get_rank(g) < 0:
        raise ValueError("process_group: this process is not a member of the group; pass a group it belongs to")
    return g
