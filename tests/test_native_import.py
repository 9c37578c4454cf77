"""`entropy_ops._C` is always built and exposes the ABI of csrc/README.md (names only here)."""
import re
import shutil
import subprocess

import pytest

C_FUNCTIONS = [
    "entropy_fwd_cpu",
    "entropy_bwd_cpu",
    "set_isa",
    "get_isa",
    "supported_isas",
    "bf16_to_float",
    "half_to_float",
    "float_to_bf16",
    "float_to_half",
]


def test_cpu_module_imports():
    import entropy_ops._C  # noqa: F401


@pytest.mark.parametrize("name", C_FUNCTIONS)
def test_cpu_module_exposes(name):
    from entropy_ops import _C

    assert callable(getattr(_C, name, None)), f"entropy_ops._C.{name} is missing (csrc/README.md)"


def _local_symbols(path):
    nm = subprocess.run(["nm", "-C", path], capture_output=True, text=True)
    if nm.returncode != 0:
        pytest.skip(f"nm failed on {path}: {nm.stderr.strip()}")
    return re.findall(r"^[0-9a-f]+ [tTdDrRbB] (.+)$", nm.stdout, flags=re.M)


@pytest.mark.skipif(shutil.which("nm") is None, reason="nm (binutils) not found")
def test_isa_code_runs_only_when_chosen():
    """The per-ISA files (`*_avx2.cpp`, `*_avx512.cpp`) hold no dynamic initializer: one would be
    compiled for that ISA and run at load, so `import entropy_ops._C` died with SIGILL on CPUs
    without AVX-512 (the selective kernels' tables once did). Their tables are constexpr."""
    from entropy_ops import _C

    names = _local_symbols(_C.__file__)
    if not any("SimdAvx512" in n for n in names):
        pytest.skip(f"{_C.__file__} carries no local symbols (stripped)")
    initializers = [n for n in names if n.startswith("_GLOBAL__sub_I_")]
    isa_initializers = [n for n in initializers if re.search(r"_avx(2|512)\.cpp$", n)]
    assert not isa_initializers, f"dynamic initializers compiled for a wider ISA: {isa_initializers}"
