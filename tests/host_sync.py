"""A host-sync detector for CPU tensors: what ``torch.cuda.set_sync_debug_mode("error")`` checks on
a GPU (SPEC §3.2: no host synchronization), as far as it can be seen without one.

Inside ``no_host_sync()``:
- the ops take the code paths they take on a GPU: ``entropy_ops._value_checks.host_reads`` says no
  tensor may be read on the host, so the value checks are skipped (or, under
  ``ENTROPY_OPS_CHECK=1``, device asserts);
- the profiler records every aten op, and the block fails when one of them would bring a CUDA
  tensor's values to the host: a scalar read (``item()``, ``bool(t)``, ``int(t)``:
  ``aten::_local_scalar_dense``), an output shape that depends on values (``nonzero``, boolean
  indexing, ``masked_select``, ``unique``, ``repeat_interleave`` without ``output_size``), or an op
  whose CUDA kernel reads values on the host (``bincount``, ``histc``, ``one_hot`` without
  ``num_classes``);
- it also fails when the package's own code (a caller in ``entropy_ops``) calls ``tolist()``,
  ``numpy()`` or ``cpu()`` on a tensor (a copy to the host on a GPU, no aten op on a CPU tensor),
  or ``torch.tensor`` / ``torch.as_tensor`` on host data with a ``device`` (a blocking copy to the
  device, which the sync debug mode reports as a sync: pytorch/pytorch#120996).

Not flagged: the host reads of CPU kernels that CUDA does on the device (inside
``aten::_assert_async``; inside ``aten::one_hot`` given ``num_classes``, where CUDA relies on
scatter's device assert).
Not seen: other copies to the host (``.to("cpu")``, ``copy_`` into a CPU tensor: on CPU tensors
they look like any copy), syncs in native code (the CUDA module's are ruled out by test_cuda_build's
symbol check), and syncs of a CUDA kernel that its CPU kernel does not make unless listed here.
"""
import contextlib
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from entropy_ops import _value_checks

SYNCING_OPS = frozenset({
    "aten::_local_scalar_dense", "aten::is_nonzero", "aten::equal",
    "aten::nonzero", "aten::nonzero_numpy", "aten::argwhere", "aten::masked_select",
    "aten::_unique", "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive",
    "aten::unique_dim_consecutive",
    "aten::bincount", "aten::histc",
})
HOST_COPIES = ("tolist", "numpy", "cpu")
FROM_HOST = ("tensor", "as_tensor")
# Ops whose CPU kernel reads values on the host where the CUDA one asserts on the device.
DEVICE_SIDE_ON_CUDA = frozenset({"aten::_assert_async"})


def _ancestors(event):
    parent = event.cpu_parent
    while parent is not None:
        yield parent
        parent = parent.cpu_parent


def _syncs_on_cuda(event) -> bool:
    if event.name == "aten::one_hot":  # num_classes = -1: CUDA reads the max on the host
        return event.concrete_inputs[1:2] == [-1]
    if event.name not in SYNCING_OPS:
        return False
    for a in _ancestors(event):
        if a.name in DEVICE_SIDE_ON_CUDA or (a.name == "aten::one_hot" and not _syncs_on_cuda(a)):
            return False
    return True


def host_syncs(events):
    """``'aten::op (in parent < grandparent < ...)'`` for each recorded op that would sync."""
    found = []
    for e in events:
        if _syncs_on_cuda(e):
            chain = " < ".join(a.name for a in _ancestors(e))
            found.append(f"{e.name} (in {chain})" if chain else e.name)
    return found


def _package_caller() -> str:
    """The module of the caller's caller when it is entropy_ops' code, else ''."""
    caller = sys._getframe(2).f_globals.get("__name__", "")
    return caller if caller.split(".")[0] == "entropy_ops" else ""


@contextlib.contextmanager
def _copies_from_the_package(found):
    """Host-to-device and device-to-host copies that entropy_ops' code asks for, recorded in
    ``found``."""
    methods = {name: getattr(torch.Tensor, name) for name in HOST_COPIES}
    factories = {name: getattr(torch, name) for name in FROM_HOST}

    def to_host(name, method):
        def call(self, *args, **kwargs):
            caller = _package_caller()
            if caller:
                found.append(f"Tensor.{name} (in {caller})")
            return method(self, *args, **kwargs)
        return call

    def to_device(name, factory):
        def call(data, *args, **kwargs):
            caller = _package_caller()
            if caller and kwargs.get("device") is not None and not isinstance(data, torch.Tensor):
                found.append(f"torch.{name} of host data with device= (in {caller})")
            return factory(data, *args, **kwargs)
        return call

    for name, method in methods.items():
        setattr(torch.Tensor, name, to_host(name, method))
    for name, factory in factories.items():
        setattr(torch, name, to_device(name, factory))
    try:
        yield
    finally:
        for name, method in methods.items():
            setattr(torch.Tensor, name, method)
        for name, factory in factories.items():
            setattr(torch, name, factory)


@contextlib.contextmanager
def gpu_code_paths():
    """CPU tensors take the code paths of GPU tensors: no value check reads them on the host, and
    what is cached for GPU tensors only (the vocab-parallel layout) is cached for them too."""
    saved = _value_checks.host_reads
    _value_checks.host_reads = lambda device: False
    try:
        yield
    finally:
        _value_checks.host_reads = saved


@contextlib.contextmanager
def no_host_sync():
    """Fails (AssertionError naming the ops and their callers) if the block would synchronize a GPU
    with the host. The block runs on CPU tensors, down the GPU's code paths (see above). A first
    call that may sync by design (the vocab-parallel layout check) runs before, in
    ``gpu_code_paths()``."""
    copies = []
    with gpu_code_paths(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof, \
            _copies_from_the_package(copies):
        yield
    found = copies + host_syncs(prof.events())
    assert not found, f"{len(found)} host synchronization(s) on a GPU: " + "; ".join(dict.fromkeys(found))
