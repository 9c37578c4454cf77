"""The CUDA module's build contract (SPEC §1, §5), checked without a GPU.

- Every CUDA object is free of allocation, free, synchronous copy/memset and synchronization
  calls: torch allocates every buffer, and CUDA graph capture forbids the rest. Checked on the
  `.o` files (`nm -u`), since the linked module defines cudaMalloc & co. itself (static cudart).
- Importing `_C_cuda` makes no CUDA call, and it answers `available()` without crashing on a
  machine with no driver.
- `_C_cuda` carries the CUDA runtime statically (no `libcudart.so` dependency).
"""
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_SOURCES = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))

FORBIDDEN = re.compile(
    r"^(cudaMalloc\w*"
    r"|cudaFree\w*"
    # Synchronous copies and memsets: every cudaMemcpy*/cudaMemset* entry point without Async
    # (cudaMemcpy, _v2, _ptds, cudaMemcpy2D, ToSymbol, Peer, ...).
    r"|cudaMem(?:cpy|set)(?!\w*Async)\w*"
    r"|\w*Synchronize\w*)$"
)


def find_nvcc():
    home = os.environ.get("CUDA_HOME")
    candidates = [os.path.join(home, "bin", "nvcc")] if home else []
    candidates += ["/usr/local/cuda/bin/nvcc", shutil.which("nvcc")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


NVCC = find_nvcc()
needs_nvcc = pytest.mark.skipif(
    NVCC is None, reason="nvcc not found (no CUDA_HOME, /usr/local/cuda or nvcc on PATH)"
)
needs_nm = pytest.mark.skipif(shutil.which("nm") is None, reason="nm (binutils) not found")


def forbidden_symbols(source, tmp_path):
    """Undefined symbols of `source` compiled for sm_90 that the CUDA code must never call."""
    obj = tmp_path / (os.path.basename(source) + ".o")
    cmd = [
        NVCC, "-c", source, "-o", str(obj), "-O3", "-std=c++17", "--expt-relaxed-constexpr",
        "-Xcompiler", "-fPIC", f"-I{ROOT}/csrc/include", f"-I{ROOT}/csrc",
        "-gencode", "arch=compute_90,code=sm_90",
    ]
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, f"nvcc failed on {source}:\n{build.stderr}"
    nm = subprocess.run(["nm", "-u", str(obj)], capture_output=True, text=True, check=True)
    names = [line.split()[-1] for line in nm.stdout.splitlines() if line.strip()]
    return sorted(n for n in names if FORBIDDEN.match(n))


@pytest.mark.parametrize(
    "name, forbidden",
    [
        ("cudaMalloc", True), ("cudaMallocAsync", True), ("cudaMallocHost", True),
        ("cudaFree", True), ("cudaFreeAsync", True),
        ("cudaMemcpy", True), ("cudaMemcpy_v2", True), ("cudaMemcpy_ptds", True),
        ("cudaMemset", True), ("cudaMemset_ptds", True), ("cudaMemcpy2D", True),
        ("cudaDeviceSynchronize", True), ("cudaStreamSynchronize", True),
        ("cudaEventSynchronize", True),
        ("cudaMemcpyAsync", False), ("cudaMemcpyAsync_ptsz", False), ("cudaMemsetAsync", False),
        ("cudaGetLastError", False), ("cudaLaunchKernel", False), ("memcpy", False),
    ],
)
def test_forbidden_pattern(name, forbidden):
    assert bool(FORBIDDEN.match(name)) == forbidden


def test_cuda_sources_exist():
    assert CUDA_SOURCES, "csrc/cuda/*.cu: no CUDA sources found"


@needs_nvcc
@needs_nm
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=os.path.basename)
def test_cuda_object_has_no_alloc_copy_or_sync(source, tmp_path):
    bad = forbidden_symbols(source, tmp_path)
    assert not bad, (
        f"{os.path.relpath(source, ROOT)} calls {bad}: CUDA code must not allocate, free, copy "
        "synchronously or synchronize (SPEC §1); torch allocates in Python, use *Async on the "
        "given stream"
    )


@needs_nvcc
@needs_nm
def test_symbol_check_catches_a_violation(tmp_path):
    bad_source = tmp_path / "bad.cu"
    bad_source.write_text(
        "#include <cuda_runtime.h>\n"
        "void bad(float** p) { cudaMalloc(p, 4); cudaMemset(*p, 0, 4);\n"
        "  cudaDeviceSynchronize(); cudaFree(*p); }\n"
    )
    bad = forbidden_symbols(str(bad_source), tmp_path)
    assert {"cudaDeviceSynchronize", "cudaFree"} <= set(bad)
    assert any(n.startswith("cudaMalloc") for n in bad)
    assert any(n.startswith("cudaMemset") for n in bad)


def cuda_module_path():
    try:
        spec = importlib.util.find_spec("entropy_ops._C_cuda")
    except ImportError:
        return None
    return spec.origin if spec is not None else None


CUDA_MODULE = cuda_module_path()
needs_module = pytest.mark.skipif(CUDA_MODULE is None, reason="entropy_ops._C_cuda is not built")

# Loads the extension by path (not through the package, whose import pulls in torch) and checks
# that libcuda was not loaded by the import: the static cudart opens it on the first CUDA call.
IMPORT_PROBE = r"""
import importlib.machinery, importlib.util, json, sys
path = sys.argv[1]
loader = importlib.machinery.ExtensionFileLoader("_C_cuda", path)
spec = importlib.util.spec_from_file_location("_C_cuda", path, loader=loader)
m = importlib.util.module_from_spec(spec)
loader.exec_module(m)
maps = open("/proc/self/maps").read()
loaded_at_import = "libcuda.so" in maps
archs = m.compiled_archs()
runtime = m.runtime_version()
ok, reason = m.available()
print(json.dumps({"libcuda_at_import": loaded_at_import, "archs": archs, "runtime": runtime,
                  "available": ok, "reason": reason, "devices": m.device_count()}))
"""


@needs_module
def test_cuda_module_import_makes_no_cuda_call():
    import json

    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE, CUDA_MODULE], capture_output=True, text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"probe crashed ({proc.returncode}):\n{proc.stderr}"
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not info["libcuda_at_import"], "importing _C_cuda loaded libcuda: a CUDA call at import"
    assert info["archs"], "compiled_archs() is empty"
    assert re.fullmatch(r"\d+[af]?(;\d+[af]?)*", info["archs"]), info["archs"]
    assert info["runtime"] >= 12000, info
    assert isinstance(info["available"], bool) and isinstance(info["reason"], str)
    if info["available"]:
        assert info["devices"] > 0
    else:
        assert info["reason"], "unavailable without a reason"


@needs_module
def test_cuda_module_api():
    from entropy_ops import _C_cuda

    for name in ("available", "driver_version", "runtime_version", "device_count",
                 "compiled_archs", "fill_f32"):
        assert callable(getattr(_C_cuda, name, None)), f"_C_cuda.{name} is missing"
    # n == 0 launches nothing, so it succeeds even without a GPU.
    assert _C_cuda.fill_f32(0, 0, 1.0, 0, 0) is None


@needs_module
@pytest.mark.skipif(shutil.which("readelf") is None, reason="readelf (binutils) not found")
def test_cuda_module_links_cudart_statically():
    out = subprocess.run(["readelf", "-d", CUDA_MODULE], capture_output=True, text=True,
                         check=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)
    assert needed, out
    assert not [lib for lib in needed if lib.startswith("libcudart")], (
        f"{CUDA_MODULE} needs {needed}: link with -lcudart_static"
    )
