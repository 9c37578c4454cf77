"""`_C` builds off x86-64 (aarch64: Grace / GH200 servers), where it holds only the scalar kernels
(csrc/cpu/isa.h). Every source of `_C` is cross-compiled for aarch64 with the flags setup.py uses
there, the CPU sources linked into one shared object that must leave no symbol undefined (a
reference to the x86-only AVX tables would), and, where an aarch64 emulator is installed, a small
driver (tests/portable_driver.cpp) runs six row ops on it: its bytes must equal this machine's
scalar path (`ENTROPY_OPS_CPU_ISA=scalar`) bit for bit; a second one (tests/fp_mode_driver.cpp)
checks that the thread pool's workers compute in the caller's FPCR. And setup.py finds the CUDA
runtime of an aarch64 toolkit (targets/sbsa-linux).

Skipped without the tools, saying which: `apt-get install g++-aarch64-linux-gnu` (the cross
compiler; `ENTROPY_OPS_AARCH64_CXX` names another) and `apt-get install qemu-user-static`."""
import os
import shutil
import struct
import subprocess
import sysconfig
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from conftest import REPO_ROOT
from test_packaging import load_setup_py

CXX = os.environ.get("ENTROPY_OPS_AARCH64_CXX") or shutil.which("aarch64-linux-gnu-g++")
QEMU = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
CPU_SOURCES = sorted(
    os.path.join("csrc", "cpu", f) for f in os.listdir(os.path.join(REPO_ROOT, "csrc", "cpu"))
    if f.endswith(".cpp")
)
CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2, torch.float64: 3}

needs_cxx = pytest.mark.skipif(
    CXX is None, reason="no aarch64 cross compiler: apt-get install g++-aarch64-linux-gnu "
    "(or set ENTROPY_OPS_AARCH64_CXX)")
needs_qemu = pytest.mark.skipif(
    QEMU is None, reason="no aarch64 emulator: apt-get install qemu-user-static")


def _run(cmd):
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def aarch64(tmp_path_factory):
    """Every source of `_C` compiled for aarch64, as setup.py compiles them there: (flags, dir of
    the objects, the CPU objects)."""
    setup = load_setup_py()
    out = tmp_path_factory.mktemp("aarch64")
    flags = [*setup.host_cxx_flags("aarch64"), "-Icsrc/include", "-Icsrc"]
    py_include = sysconfig.get_paths()["include"]
    import pybind11

    def compile_one(src):
        obj = str(out / (os.path.basename(src) + ".o"))
        extra = []
        if src.endswith("cpu_bindings.cpp"):
            # This Python's headers: pyconfig.h of x86-64 Linux describes aarch64 Linux as well
            # (LP64, little-endian), so the check is a real compile of the bindings.
            extra = ["-I" + pybind11.get_include(), "-I" + py_include]
        _run([CXX, *flags, *extra, "-c", src, "-o", obj])
        return obj

    sources = CPU_SOURCES + [os.path.join("csrc", "cpu_bindings.cpp")]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        objects = list(pool.map(compile_one, sources))
    return flags, out, objects[:-1]


def _driver(aarch64, source):
    """tests/SOURCE linked, static, with the aarch64 CPU objects: the path of the executable."""
    flags, out, objects = aarch64
    exe = str(out / os.path.splitext(source)[0])
    if not os.path.exists(exe):
        _run([CXX, *flags, "-static", os.path.join("tests", source), *objects, "-o", exe])
    return exe


@needs_cxx
def test_cpu_module_compiles_and_links_for_aarch64(aarch64):
    flags, out, objects = aarch64
    assert "-ffp-contract=off" in flags  # the scalar kernels round as written (setup.py)
    # -z defs: a reference to a table that exists on x86-64 only fails here, not at import.
    _run([CXX, "-shared", "-pthread", "-Wl,-z,defs", *objects, "-o", str(out / "cpu.so")])
    nm = CXX[: -len("g++")] + "nm" if CXX.endswith("g++") else None
    if nm and shutil.which(nm):
        for obj in objects:
            if "_avx" in os.path.basename(obj):
                defined = _run([nm, "--defined-only", obj]).split()
                assert not defined, f"{obj} defines symbols off x86-64: {defined[:6]}"


def _inputs(dtype, n=6, vocab=3001):
    """Rows with special cases: -inf entries, a +1e4 shift, a dominant logit, an ignored label."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, vocab, generator=g, dtype=torch.float64) * 3
    x[1, ::7] = float("-inf")
    x[2] += 1e4
    x[3, 5] = 40.0
    labels = torch.randint(0, vocab, (n,), generator=g)
    labels[4] = -100
    return x.to(dtype), labels


def _host_scalar(x, labels, temperature):
    """What the driver computes, by this machine's `_C` on the scalar kernels, as its bytes."""
    from entropy_ops import _C

    n, vocab = x.shape
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32

    def new(dtype=acc):
        return torch.zeros(n, dtype=dtype)

    rows = (x.data_ptr(), CODES[x.dtype], n, vocab, vocab, 0, temperature, labels.data_ptr(),
            False, -100, 0)
    fwd = [new() for _ in range(4)]
    _C.entropy_fwd_cpu(*rows, *(t.data_ptr() for t in fwd), 2)
    grad = torch.zeros_like(x)
    g_h, g_lp = torch.full((n,), 0.5, dtype=acc), torch.full((n,), -1.0, dtype=acc)
    _C.entropy_bwd_cpu(*rows, *(t.data_ptr() for t in fwd[:3]), g_h.data_ptr(), g_lp.data_ptr(),
                       grad.data_ptr(), vocab, 2)
    top_p = [new(), new(), new(), new(torch.int32), new()]
    _C.top_p_entropy_fwd_cpu(*rows, 0.9, *(t.data_ptr() for t in top_p), 2)
    mask = torch.zeros(n, vocab, dtype=torch.uint8)
    _C.top_p_mask_cpu(*rows, 0.9, False, mask.data_ptr(), vocab, 2)
    min_p = [new() for _ in range(3)]
    _C.min_p_logprobs_fwd_cpu(*rows, 0.05, *(t.data_ptr() for t in min_p), 2)
    stats = [new() for _ in range(8)]
    _C.token_stats_cpu(*rows, *(t.data_ptr() for t in stats), 2)
    outs = [*fwd, grad, *top_p, mask, *min_p, *stats]
    return b"".join(t.contiguous().view(torch.uint8).numpy().tobytes() for t in outs)


@needs_cxx
@needs_qemu
def test_scalar_kernels_on_aarch64_match_x86_scalar_bits(aarch64, tmp_path):
    from entropy_ops import _C

    driver = _driver(aarch64, "portable_driver.cpp")
    isa = _C.get_isa()
    _C.set_isa("scalar")
    try:
        for dtype in CODES:
            for temperature in (1.0, 0.7):
                x, labels = _inputs(dtype)
                with open(tmp_path / "in.bin", "wb") as f:
                    f.write(struct.pack("<iqqd", CODES[dtype], *x.shape, temperature))
                    f.write(x.view(torch.uint8).numpy().tobytes())
                    f.write(labels.numpy().astype("<i8").tobytes())
                said = _run([QEMU, driver, str(tmp_path / "in.bin"), str(tmp_path / "out.bin")])
                assert said.splitlines() == [
                    "supported_isas: scalar ", "set_isa(avx2): 0", "set_isa(scalar): 1",
                    "get_isa: scalar"]
                got = (tmp_path / "out.bin").read_bytes()
                want = _host_scalar(x, labels, temperature)
                assert len(got) == len(want)
                assert got == want, (
                    f"{dtype}, T={temperature}: aarch64 differs from the x86-64 scalar path in "
                    f"{sum(a != b for a, b in zip(got, want))} of {len(want)} bytes")
    finally:
        _C.set_isa(isa)


@needs_cxx
@needs_qemu
@pytest.mark.parametrize("fz_at_start", [0, 1])
def test_thread_pool_carries_fpcr_to_workers(aarch64, fz_at_start):
    """The aarch64 twin of test_entropy_batch_invariance's flush-denormal test: the calling
    thread's FPCR.FZ travels with each job to the pool's threads, whichever mode they started in,
    so a row's gradient bits (denormal unless flushed) do not depend on the thread (SPEC §2)."""
    said = _run([QEMU, _driver(aarch64, "fp_mode_driver.cpp"), str(fz_at_start)])
    assert said.splitlines()[0] == "FZ changes one thread's bits: 1", said  # else proves nothing
    assert said.splitlines()[1] == "rows unlike one thread's: 0", said


def test_cuda_runtime_is_found_in_an_aarch64_toolkit(tmp_path, monkeypatch):
    """An arm64 server's toolkit keeps libcudart_static.a under targets/sbsa-linux/lib."""
    setup = load_setup_py()
    lib = tmp_path / "targets" / "sbsa-linux" / "lib"
    lib.mkdir(parents=True)
    (lib / "libcudart_static.a").touch()
    monkeypatch.setattr(setup.platform, "machine", lambda: "aarch64")
    assert setup._cuda_lib_dir(str(tmp_path)) == str(lib)
    monkeypatch.setattr(setup.platform, "machine", lambda: "x86_64")
    assert setup._cuda_lib_dir(str(tmp_path)) is None
    assert setup.host_cxx_flags() == setup.CXX_FLAGS  # x86-64 compiles exactly as before
