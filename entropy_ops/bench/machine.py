"""Which machine ran the benchmark: device name, slug for the CSV file name, versions, header line."""
import datetime
import platform
import re
from typing import Dict

import torch


def device_name(device: str) -> str:
    """The GPU's name; for the CPU its model and the ISA path of the `cpu` backend ("AMD EPYC
    (avx2)"): one model name covers CPUs with and without AVX-512, whose timings differ by 2x, so
    their rows go to different CSV files."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{_cpu_model()} ({_cpu_isa()})"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _cpu_isa() -> str:
    from .._native import cpu_module
    module, _ = cpu_module()
    return "no _C" if module is None else module.get_isa()


def slug(name: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def versions() -> Dict[str, str]:
    """The versions a CSV row carries: torch, triton ("" when not installed) and entropy_ops."""
    from .. import __version__
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = ""
    return {"torch": torch.__version__, "triton": triton_version, "entropy_ops": __version__}


def header(device: str, name: str, threads: int, bandwidth_gbs: float, date: str) -> str:
    return (f"device: {device} ({name}) | threads {threads} | torch {torch.__version__} | {date}\n"
            f"measured copy bandwidth: {bandwidth_gbs:.1f} GB/s (1 GiB dst.copy_(src), 2 x bytes / median time)")
