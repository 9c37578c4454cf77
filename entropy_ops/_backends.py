"""Backend registry and dispatch (SPEC §1 "Backends").

A backend is a name, an ``available() -> (bool, reason)`` probe, the device types it runs on, and a
table ``op name -> kernel``. The public function of an op resolves the backend once, at the Python
entry, and passes its name into the custom op as a string.
"""
import contextlib
import os
import threading
from dataclasses import dataclass, field
from typing import Callable, Dict, Tuple

import torch

from . import _native

BACKEND_NAMES = ("auto", "cuda", "triton", "cpu", "torch")
# `auto` on CUDA tensors: the fastest GPU backend verified on a GPU comes first. No GPU
# measurement exists yet (issue 4), so until then Triton is preferred over hand-written CUDA.
GPU_PREFERENCE = ("triton", "cuda")


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here (not built, no GPU, Triton missing, ...)."""


class NoKernelError(NotImplementedError):
    """The requested backend has no kernel for this op yet."""


@dataclass
class Backend:
    name: str
    available: Callable[[], Tuple[bool, str]]
    devices: Tuple[str, ...]
    kernels: Dict[str, object] = field(default_factory=dict)

    def supports_device(self, device: torch.device) -> bool:
        if device.type in self.devices:
            return True
        # CPU tensors under the Triton interpreter or the CUDA emulator (tests/cuda_emu).
        return device.type == "cpu" and (
            (self.name == "triton" and _triton_interpret()) or (self.name == "cuda" and bool(_native.cuda_emulator()))
        )


_REGISTRY: Dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    _REGISTRY[backend.name] = backend
    return backend


def register_kernel(backend_name: str, op: str, kernel) -> None:
    _REGISTRY[backend_name].kernels[op] = kernel


def get_kernel(backend_name: str, op: str):
    return _REGISTRY[backend_name].kernels[op]


def registered_backends() -> Dict[str, Backend]:
    return dict(_REGISTRY)


def _triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _check_name(name: str) -> str:
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend: unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    return name


_env_backend = os.environ.get("ENTROPY_OPS_BACKEND", "auto")
# A bad ENTROPY_OPS_BACKEND must not make `import entropy_ops` crash: it is reported by the first
# op call (and by `info`) instead.
_default = _env_backend if _env_backend in BACKEND_NAMES else None
# use_backend's stack, one per thread (a `with` in one thread must not change another's ops).
# A threading.local, not a ContextVar, which torch.compile cannot trace: dynamo guards on it, so
# changing the backend recompiles instead of silently reusing a graph built for another backend.
_local = threading.local()


def _overrides() -> list:
    stack = getattr(_local, "overrides", None)
    if stack is None:
        stack = _local.overrides = []
    return stack


def set_backend(name: str) -> None:
    """Set the process-wide backend: one of ``auto``, ``cuda``, ``triton``, ``cpu``, ``torch``."""
    global _default
    _default = _check_name(name)


def get_backend() -> str:
    """The backend name in force (``use_backend`` > ``set_backend`` > ``ENTROPY_OPS_BACKEND`` > auto)."""
    overrides = getattr(_local, "overrides", None)
    if overrides:
        return overrides[-1]
    if _default is None:
        raise ValueError(
            f"ENTROPY_OPS_BACKEND={_env_backend!r} is not a backend; choose one of {', '.join(BACKEND_NAMES)}"
        )
    return _default


@contextlib.contextmanager
def use_backend(name: str):
    """``with eo.use_backend("torch"): ...`` runs the ops inside on that backend, in this thread
    (other threads keep theirs; :func:`set_backend` is process-wide)."""
    overrides = _overrides()
    overrides.append(_check_name(name))
    try:
        yield
    finally:
        overrides.pop()


def available_backends() -> Dict[str, Tuple[bool, str]]:
    """``{name: (available, reason)}`` for every registered backend."""
    return {name: b.available() for name, b in _REGISTRY.items()}


def _usable(backend: Backend, op: str, device: torch.device) -> bool:
    return op in backend.kernels and backend.supports_device(device) and backend.available()[0]


def resolve(op: str, device: torch.device, dtype: torch.dtype) -> str:
    """Pick the backend for ``op`` on ``device``; raise a named error if the choice cannot run."""
    return _resolve(op, device, dtype, get_backend())


@torch.compiler.assume_constant_result
def _resolve(op: str, device: torch.device, dtype: torch.dtype, name: str) -> str:
    # Under torch.compile this runs once at trace time: its result is a constant of the graph.
    if name == "auto":
        if device.type == "cuda" and dtype != torch.float64:
            preference = tuple(b for b in GPU_PREFERENCE if not (b == "cuda" and torch.version.hip))
        elif device.type == "cpu":
            preference = ("cpu",)
        else:
            preference = ()
        for candidate in preference:
            if candidate in _REGISTRY and _usable(_REGISTRY[candidate], op, device):
                return candidate
        return "torch"
    backend = _REGISTRY[name]
    ok, reason = backend.available()
    if not ok:
        raise BackendUnavailableError(f"backend {name!r} is not available: {reason}")
    if op not in backend.kernels:
        raise NoKernelError(f"{name}: no kernel for `{op}` yet; use backend 'torch' or 'auto'")
    if not backend.supports_device(device):
        hint = " (set TRITON_INTERPRET=1 to run Triton kernels on CPU tensors)" if name == "triton" else ""
        raise BackendUnavailableError(
            f"backend {name!r} runs on {', '.join(backend.devices)} tensors, got a {device.type} tensor{hint}"
        )
    if dtype == torch.float64 and name in ("cuda", "triton"):
        # SPEC §2: float64 input is computed by the torch and cpu backends only.
        return "torch"
    return name
