"""Lazy access to the native modules, with the reason when one is missing.

Importing entropy_ops never fails because a native module is absent: the backend that needs it
reports itself unavailable, with the reason, when it is asked for (SPEC §1).
"""
import functools
import importlib


@functools.lru_cache(maxsize=None)
def load(name):
    """Return ``(module or None, reason)`` for ``entropy_ops._C`` or ``entropy_ops._C_cuda``."""
    try:
        return importlib.import_module(f"entropy_ops.{name}"), ""
    except ImportError as e:
        return None, f"entropy_ops.{name} is not built ({e}); reinstall with `pip install -e .`"


def cpu_module():
    return load("_C")


def cuda_module():
    return load("_C_cuda")
