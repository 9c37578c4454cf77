"""Lazy access to the native modules, with the reason when one is missing.

Importing entropy_ops never fails because a native module is absent: the backend that needs it
reports itself unavailable, with the reason, when it is asked for (SPEC §1).

``ENTROPY_OPS_CUDA_EMULATOR=<path>`` (tests only) loads ``_C_cuda`` from that file instead: the
CUDA kernels compiled for the CPU by tests/cuda_emu/build.py, which the ``cuda`` backend then runs
on CPU tensors.
"""
import functools
import importlib
import importlib.util
import os


@functools.lru_cache(maxsize=None)
def load(name):
    """Return ``(module or None, reason)`` for ``entropy_ops._C`` or ``entropy_ops._C_cuda``."""
    if name == "_C_cuda" and cuda_emulator():
        return _load_file(f"entropy_ops.{name}", cuda_emulator())
    try:
        return importlib.import_module(f"entropy_ops.{name}"), ""
    except ImportError as e:
        return None, f"entropy_ops.{name} is not built ({e}); reinstall with `pip install -e .`"


def cpu_module():
    return load("_C")


def cuda_module():
    return load("_C_cuda")


def cuda_emulator():
    """The emulated ``_C_cuda``'s path when ``ENTROPY_OPS_CUDA_EMULATOR`` names one, else ``""``."""
    return os.environ.get("ENTROPY_OPS_CUDA_EMULATOR", "")


def _load_file(name, path):
    if not os.path.isfile(path):
        return None, f"ENTROPY_OPS_CUDA_EMULATOR={path} is not a file (build it: python tests/cuda_emu/build.py)"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, ""
