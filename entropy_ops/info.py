"""``python -m entropy_ops info``: versions, built modules, CUDA archs, devices, backend per device."""
import platform

import torch

from . import __version__, _backends, _native


def _module_line(name):
    module, reason = _native.load(name)
    return f"built ({module.__file__})" if module is not None else f"missing: {reason}"


def report() -> str:
    lines = [
        f"entropy_ops {__version__}",
        f"python      {platform.python_version()} ({platform.machine()})",
        f"torch       {torch.__version__} (cuda {torch.version.cuda}, hip {torch.version.hip})",
    ]
    try:
        import triton
        lines.append(f"triton      {triton.__version__}")
    except ImportError:
        lines.append("triton      not installed")
    lines.append(f"_C          {_module_line('_C')}")
    cpu, _ = _native.cpu_module()
    if cpu is not None:
        lines.append(f"  cpu isa   {cpu.get_isa()} (supported: {', '.join(cpu.supported_isas())})")
    lines.append(f"_C_cuda     {_module_line('_C_cuda')}")
    cuda, _ = _native.cuda_module()
    if cuda is not None:
        lines.append(f"  archs     {cuda.compiled_archs()}")
    lines.append(f"threads     {torch.get_num_threads()}")
    try:
        chosen = _backends.get_backend()
    except ValueError as e:
        chosen = f"invalid: {e}"
    lines.append(f"backend     {chosen} (set_backend / use_backend / ENTROPY_OPS_BACKEND)")
    lines.append("backends:")
    for name, (ok, reason) in _backends.available_backends().items():
        kernels = ", ".join(sorted(_backends.registered_backends()[name].kernels)) or "none yet"
        state = "available" if ok else f"unavailable: {reason}"
        lines.append(f"  {name:<7} {state}; kernels: {kernels}")
    devices = [torch.device("cpu")]
    devices += [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    lines.append("auto picks:")
    for device in devices:
        label = device if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})"
        picks = {op: _auto(op, device) for op in ("entropy", "logprobs_and_entropy")}
        lines.append(f"  {label}: " + ", ".join(f"{op} -> {b}" for op, b in picks.items()))
    return "\n".join(lines)


def _auto(op, device):
    with _backends.use_backend("auto"):
        return _backends.resolve(op, device, torch.bfloat16)
