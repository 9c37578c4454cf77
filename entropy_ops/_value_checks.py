"""The checks that read tensor values (SPEC §2: label range, per-row temperature, ``cu_seqlens``,
quantile values, 0/1 float masks), decided in one place so that none of them ever costs a GPU a
host synchronization:

- on CPU tensors they always run: a host read (free there) that raises ``ValueError``; inside a
  graph being compiled, where a host read would break the graph, a device assert instead;
- on other devices they run only under ``ENTROPY_OPS_CHECK=1``, as device-side asserts
  (``torch._assert_async``: a failure surfaces at the next synchronization), and not at all
  otherwise (an unchecked bad value gives NaN in its own row, never a crash).

``host_reads`` is the only place that says which tensors the host may read. The tests' host-sync
detector (``tests/host_sync.py``) replaces it to run CPU tensors down the GPU's code paths.
"""
import os

import torch


def host_reads(device: torch.device) -> bool:
    """Whether reading a value of a tensor on ``device`` costs no host synchronization."""
    return device.type == "cpu"


def enabled(device: torch.device) -> bool:
    """Whether the value checks of tensors on ``device`` run."""
    return host_reads(device) or os.environ.get("ENTROPY_OPS_CHECK", "0") == "1"


def require(ok: torch.Tensor, message: str) -> None:
    """``ValueError(message)`` unless the 0-d bool ``ok`` is True (a device assert off the host)."""
    if host_reads(ok.device) and not torch.compiler.is_compiling():
        if not bool(ok):
            raise ValueError(message)
    else:
        torch._assert_async(ok, message)
