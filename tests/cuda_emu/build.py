"""Builds the CUDA emulator's `_C_cuda`: the sources of csrc/cuda compiled by the host compiler for
the CPU (emu.h says what is emulated and what is not), with the real bindings. Under
``ENTROPY_OPS_CUDA_EMULATOR=<the module's path>`` the ``cuda`` backend loads it and runs on CPU
tensors, so the GPU tests run the CUDA kernels' code on a machine without a GPU.

    python tests/cuda_emu/build.py [--asan] [OUT_DIR]   # prints the module's path
                                                         # exit code 3: no CUDA headers

``--asan`` adds AddressSanitizer to the UBSan checks: a kernel's read or write outside its tensors
then aborts with a report (compute-sanitizer's memcheck, on the CPU); `make test` runs so. Python
must load the runtime first, with libstdc++ (else ASan's exception interceptor finds no
``__cxa_throw`` when torch throws): ``LD_PRELOAD="$(g++ -print-file-name=libasan.so)
$(g++ -print-file-name=libstdc++.so)" ASAN_OPTIONS=detect_leaks=0``.

Each ``kernel<<<grid, block, smem, stream>>>(args)`` becomes ``::eo_emu::launch(grid, block, smem,
stream, kernel, args)`` in a copy of the source, and each ``__shared__`` declaration is followed by
its registration with the runtime (register_shared); nothing else is changed. The module is rebuilt
only when a source, this script or a flag changes (a hash of them names the build).
"""
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CUDA_INCLUDE = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "include")
# -ffp-contract=off: no contraction into FMAs (emu.h's __fmul_rn / __fsub_rn rely on it). nvcc
# contracts where it chooses, so the emulator's bits are not a GPU's either way (emu.h).
# -fsanitize=alignment: a vectorized load from a misaligned address aborts, as it faults on a
# GPU; signed-integer-overflow and shift catch 32-bit offset arithmetic past 2^31.
CXXFLAGS = ["-std=c++17", "-O2", "-g0", "-fPIC", "-fvisibility=hidden", "-ffp-contract=off",
            "-fsanitize=alignment,signed-integer-overflow,shift", "-fno-sanitize-recover=all",
            "-Wno-attributes"]
ASAN_CXXFLAGS = [*CXXFLAGS, "-fsanitize=address", "-fno-omit-frame-pointer"]


def rewrite_launches(text, name="<source>"):
    """``kernel<<<a, b, c, d>>>(args);`` -> ``::eo_emu::launch(a, b, c, d, kernel, args);``."""
    out, pos = [], 0
    while True:
        start = text.find("<<<", pos)
        if start < 0:
            out.append(text[pos:])
            return "".join(out)
        k = start
        while text[k - 1].isspace():
            k -= 1
        if text[k - 1] == ">":  # the kernel's template arguments (a '>' inside parentheses is not theirs)
            angle = paren = 0
            while True:
                k -= 1
                ch = text[k]
                paren += {")": 1, "(": -1}.get(ch, 0)
                if paren == 0:
                    angle += {">": 1, "<": -1}.get(ch, 0)
                if angle == 0 and paren == 0 and ch == "<":
                    break
        while k > 0 and (text[k - 1].isalnum() or text[k - 1] in "_:"):
            k -= 1
        kernel = text[k:start].strip()
        end = text.index(">>>", start)
        config = text[start + 3:end].strip()
        if len(_split_top(config)) != 4:
            raise ValueError(f"{name}: a launch needs all four of grid, block, smem, stream: <<<{config}>>>")
        p = end + 3
        while text[p].isspace():
            p += 1
        if text[p] != "(":
            raise ValueError(f"{name}: no argument list after <<<{config}>>>")
        q, depth = p, 0
        while True:
            depth += {"(": 1, ")": -1}.get(text[q], 0)
            if depth == 0:
                break
            q += 1
        args = text[p + 1:q].strip()
        out.append(text[pos:k])
        out.append(f"::eo_emu::launch({config}, {kernel}{', ' + args if args else ''})")
        pos = q + 1


_SHARED = re.compile(r"__shared__\s+([^;{}]*?)\b(\w+)\s*((?:\[[^\]]*\]\s*)*);")


def register_shared(text, name="<source>"):
    """``__shared__ T name[...];`` -> ``static T name[...];`` and, once per declaration, its
    registration with the runtime, which fills it with garbage before each block (emu.h). A
    declaration with two declarators is refused; one this does not match stays ``__shared__``,
    which emu.h turns into a compile error."""
    def one(m):
        if len(_split_top(m.group(1))) > 1:
            raise ValueError(f"{name}: one declarator per __shared__ declaration: {m.group(0)}")
        var = m.group(2)
        return (f"static {m.group(1)}{var}{m.group(3)}; "
                f"{{ static const bool eo_shared_ = ::eo_emu::shared_region(&{var}, sizeof({var})); (void)eo_shared_; }}")
    return _SHARED.sub(one, text)


def _split_top(s):
    parts, depth, cur = [], 0, ""
    for ch in s:
        depth += {"(": 1, "<": 1, "[": 1, ")": -1, ">": -1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur]


def _inputs():
    csrc = sorted(glob.glob(os.path.join(ROOT, "csrc", "**", "*"), recursive=True))
    return [p for p in csrc if os.path.isfile(p)] + sorted(glob.glob(os.path.join(HERE, "*")))


def _digest(flags):
    h = hashlib.sha256(" ".join(flags).encode())
    for path in _inputs():
        if os.path.isfile(path):
            h.update(os.path.relpath(path, ROOT).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()[:16]


def _run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"cuda_emu build failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")


def _includes():
    return [f"-I{ROOT}/csrc/include", f"-I{ROOT}/csrc", f"-I{CUDA_INCLUDE}"]


def compile_program(cu_path, exe_path, flags=CXXFLAGS):
    """A stand-alone CUDA program (a .cu with a main) built with the emulator (the emulator's own
    tests use this)."""
    with open(cu_path) as f:
        text = register_shared(rewrite_launches(f.read(), cu_path), cu_path)
    src = exe_path + ".cpp"
    with open(src, "w") as f:
        f.write(f'#line 1 "{cu_path}"\n{text}')
    obj = exe_path + ".runtime.o"
    _run(["g++", *flags, *_includes(), "-c", os.path.join(HERE, "runtime.cpp"), "-o", obj])
    _run(["g++", *flags, "-include", os.path.join(HERE, "emu.h"), *_includes(), src, obj, "-o", exe_path])


def build(out_dir=None, asan=False):
    """Build (or reuse) the emulated module; return its path."""
    import pybind11

    flags = ASAN_CXXFLAGS if asan else CXXFLAGS
    out_dir = out_dir or os.path.join(ROOT, "build", "cuda_emu_asan" if asan else "cuda_emu")
    target = os.path.join(out_dir, _digest(flags), "_C_cuda" + sysconfig.get_config_var("EXT_SUFFIX"))
    if os.path.exists(target):
        return target
    work = os.path.dirname(target)
    os.makedirs(os.path.join(work, "src"), exist_ok=True)
    # The headers of csrc/cuda declare __shared__ variables too: rewritten copies come first on the
    # include path.
    os.makedirs(os.path.join(work, "include", "cuda"), exist_ok=True)
    for header in sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cuh"))):
        with open(header) as f:
            text = register_shared(f.read(), header)
        with open(os.path.join(work, "include", "cuda", os.path.basename(header)), "w") as f:
            f.write(f'#line 1 "{header}"\n{text}')
    includes = [f"-I{work}/include", *_includes()]
    jobs = []
    for cu in sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))):
        with open(cu) as f:
            text = register_shared(rewrite_launches(f.read(), cu), cu)
        src = os.path.join(work, "src", os.path.basename(cu) + ".cpp")
        with open(src, "w") as f:
            f.write(f'#line 1 "{cu}"\n{text}')
        jobs.append(["g++", *flags, "-include", os.path.join(HERE, "emu.h"), *includes, "-c", src])
    jobs.append(["g++", *flags, *includes, "-c", os.path.join(HERE, "runtime.cpp")])
    for binding in ("cuda_bindings.cpp", "cuda_token_bindings.cpp"):
        jobs.append(["g++", *flags, *includes, f"-I{pybind11.get_include()}",
                     f"-I{sysconfig.get_paths()['include']}", '-DENTROPY_OPS_CUDA_ARCHS="emulated"',
                     "-c", os.path.join(ROOT, "csrc", binding)])
    objects = []
    for cmd in jobs:
        obj = os.path.join(work, os.path.basename(cmd[-1]) + ".o")
        cmd += ["-o", obj]
        objects.append(obj)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(_run, jobs))
    tmp = target + f".tmp{os.getpid()}"
    _run(["g++", "-shared", *flags, "-o", tmp, *objects])
    os.replace(tmp, target)
    for old in glob.glob(os.path.join(out_dir, "*")):  # the builds of earlier sources
        if old != work and os.path.isdir(old):
            shutil.rmtree(old, ignore_errors=True)
    return target


NO_CUDA_HEADERS = 3  # the exit code the Makefile reads as "skip the emulator"

if __name__ == "__main__":
    if not os.path.isfile(os.path.join(CUDA_INCLUDE, "cuda_runtime.h")):
        print(f"cuda_emu: no CUDA headers at {CUDA_INCLUDE} (set CUDA_HOME)", file=sys.stderr)
        sys.exit(NO_CUDA_HEADERS)
    args = sys.argv[1:]
    asan = "--asan" in args
    args = [a for a in args if a != "--asan"]
    print(build(args[0] if args else None, asan=asan))
