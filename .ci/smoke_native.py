"""Smoke test of an installed entropy-ops wheel that needs no torch: run by `.ci/run` for every wheel
`make wheel` built (one per CPython), in a fresh venv of that Python holding only the wheel
(installed with --no-deps), from a temporary directory, so that the source tree is never imported.
CI has a CPU torch for one Python only; `.ci/smoke_wheel.py` then runs the ops there.

    python smoke_native.py

Checks, without importing the package (its __init__ imports torch):
  - the wheel's files: metadata, only `entropy_ops` at the top level, every module compiles under
    this interpreter;
  - `_C` loads and computes the entropy and label log-prob of a few rows on every ISA this CPU
    runs, against float64 math;
  - `_C_cuda` loads on a machine with no GPU driver (no CUDA call at import) and was built for the
    archs setup.py asks for.
A check that fails raises, naming itself; the exit status is then non-zero.
"""
import ast
import ctypes
import importlib.machinery
import importlib.metadata
import importlib.util
import math
import os
import random
import re
import sys

SOURCE_TREE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOAT32 = 0  # the dtype code of float32 in the native ABI (csrc/README.md)


def expected_archs():
    """ENTROPY_OPS_CUDA_ARCHS as the build normalized it ("sm_90,80" -> "80;90"), by setup.py's
    own ``cuda_archs`` and default, compiled from its source: importing setup.py would need
    setuptools, which this venv need not have (Python >= 3.12 venvs come without it)."""
    path = os.path.join(SOURCE_TREE, "setup.py")
    tree = ast.parse(open(path).read(), path)
    nodes = [n for n in tree.body if (isinstance(n, ast.FunctionDef) and n.name == "cuda_archs")
             or (isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "DEFAULT_CUDA_ARCHS" for t in n.targets))]
    assert len(nodes) == 2, f"{path} no longer defines DEFAULT_CUDA_ARCHS and cuda_archs()"
    namespace = {"os": os, "re": re, "sys": sys}
    exec(compile(ast.Module(body=nodes, type_ignores=[]), path, "exec"), namespace)
    return namespace["cuda_archs"]()[0]


def package_dir():
    """Where ``entropy_ops`` is installed; finding a package's spec does not run its __init__."""
    spec = importlib.util.find_spec("entropy_ops")
    assert spec is not None and spec.submodule_search_locations, "entropy_ops is not installed"
    where = os.path.realpath(spec.submodule_search_locations[0])
    assert not where.startswith(SOURCE_TREE + os.sep), f"found the source tree ({where}), not the wheel"
    assert where.startswith(os.path.realpath(sys.prefix) + os.sep), f"{where} is outside this venv"
    return where


def check_files(where):
    dist = importlib.metadata.distribution("entropy-ops")
    init = open(os.path.join(where, "__init__.py")).read()
    version = re.search(r'^__version__ = "([^"]+)"', init, re.M)
    assert version and version.group(1) == dist.version, f"metadata version {dist.version}, __init__ {version}"
    tops = sorted({str(f).split("/")[0] for f in dist.files})
    assert all(t == "entropy_ops" or t.endswith(".dist-info") for t in tops), (
        f"the wheel installs top-level {tops}: only entropy_ops (never a top-level triton_kernels)")
    sources = [os.path.join(d, f) for d, _, fs in os.walk(where) for f in fs if f.endswith(".py")]
    assert any(s.endswith(os.path.join("triton_kernels", "__init__.py")) for s in sources), "no triton_kernels"
    for path in sources:
        compile(open(path).read(), path, "exec")  # a SyntaxError names the file
    print(f"entropy-ops {dist.version} at {where}: {len(sources)} modules compile under Python "
          f"{sys.version.split()[0]}")


def load_native(where, name):
    """``entropy_ops.<name>`` loaded from its file alone (the package's __init__ would import torch)."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    path = os.path.join(where, name + suffix)
    assert os.path.exists(path), f"{path} is missing: the wheel was built for another Python?"
    spec = importlib.util.spec_from_file_location(f"entropy_ops.{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def entropy_ref(row, label, temperature):
    """(H, log p_label) of one row in float64."""
    z = [x / temperature for x in row]
    m = max(z)
    s = sum(math.exp(v - m) for v in z)
    lse = m + math.log(s)
    h = lse - sum(math.exp(v - lse) * v for v in z)
    return h, z[label] - lse


def check_cpu(C):
    rng = random.Random(0)
    n, vocab, temperature = 5, 37, 0.7
    rows = [[rng.gauss(0, 3) for _ in range(vocab)] for _ in range(n)]
    labels = [rng.randrange(vocab) for _ in range(n)]
    logits = (ctypes.c_float * (n * vocab))(*[x for row in rows for x in row])
    # The kernel computes from the float32 logits: the reference does too.
    rows = [list(logits[i * vocab:(i + 1) * vocab]) for i in range(n)]
    label_buf = (ctypes.c_int64 * n)(*labels)
    isas = C.supported_isas()
    for isa in isas:
        C.set_isa(isa)
        outs = [(ctypes.c_float * n)() for _ in range(4)]  # row_max, log_norm, entropy, logp
        C.entropy_fwd_cpu(ctypes.addressof(logits), FLOAT32, n, vocab, vocab, 0, temperature,
                          ctypes.addressof(label_buf), False, -100, 0,
                          *[ctypes.addressof(o) for o in outs], 1)
        for i in range(n):
            h, logp = entropy_ref(rows[i], labels[i], temperature)
            for what, ours, ref in (("entropy", outs[2][i], h), ("logp", outs[3][i], logp)):
                assert abs(ours - ref) <= 1e-5 + 1e-5 * abs(ref), f"_C {isa}: row {i} {what} {ours}, want {ref}"
    print(f"_C: entropy and logp of {n} rows match float64 on ISAs {', '.join(isas)}")


def check_cuda(C_cuda):
    archs = expected_archs()
    assert C_cuda.compiled_archs() == archs, f"_C_cuda archs {C_cuda.compiled_archs()}, want {archs}"
    ok, reason = C_cuda.available()
    assert isinstance(ok, bool) and isinstance(reason, str), f"_C_cuda.available() gave {ok!r}, {reason!r}"
    print(f"_C_cuda: archs {archs}, available={ok} ({reason})")


def main():
    where = package_dir()
    check_files(where)
    check_cpu(load_native(where, "_C"))
    check_cuda(load_native(where, "_C_cuda"))
    print("native smoke test passed")


if __name__ == "__main__":
    sys.exit(main())
