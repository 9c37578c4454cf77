"""Build of entropy_ops: the torch-free native modules `_C` (C++ CPU) and `_C_cuda` (CUDA).

Neither module includes a torch header (SPEC §1), so the build needs no torch: `pip install .`
works with build isolation, and one wheel serves every torch >= 2.4.

Objects are cached in build/objects/ and shared by every build of the tree (the editable install,
`setup.py build_ext --inplace`, `make wheel`): a source is compiled again only when it, a header
it includes or its compile command changed (see `build_object`). `make clean` empties the cache.

Environment knobs:
  ENTROPY_OPS_CUDA_ARCHS    SASS targets, default "80;90;100;120"; PTX of the newest is added.
  ENTROPY_OPS_NO_CUDA=1     never build `_C_cuda`.
  ENTROPY_OPS_REQUIRE_CUDA=1  a missing CUDA toolkit is an error (wheel builds).
  CUDA_HOME                 the toolkit root; when set it is the only place looked at.
  MAX_JOBS                  parallel compile jobs (default: all cores).
"""

import glob
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "80;90;100;120"
CXX_FLAGS = ["-O3", "-std=c++17", "-fPIC", "-pthread", "-fvisibility=hidden"]
# Off x86-64 the CPU module holds only the scalar kernels (the AVX files compile to nothing, see
# csrc/cpu/isa.h). There g++ would fuse a * b + c into one fma wherever the target has one
# (aarch64 always does; g++'s default for C++ is -ffp-contract=fast), rounding the scalar kernels
# differently from x86-64, whose baseline has no fma to fuse into: off, they compute as written,
# the bits of the x86-64 scalar path. Not on x86-64, where the AVX2/AVX-512 files' plain
# expressions are fused (measured: those objects change with the flag, the others do not).
PORTABLE_CXX_FLAGS = ["-ffp-contract=off"]
X86_64_MACHINES = ("x86_64", "amd64")
NVCC_FLAGS = [
    "-O3",
    "-std=c++17",
    "-Xcompiler",
    "-fPIC,-fvisibility=hidden",
    "--expt-relaxed-constexpr",
    "-Icsrc/include",
    "-Icsrc",
]
# Static cudart: the module runs on any driver >= the toolkit's minimum, whatever CUDA torch has.
CUDA_LINK_LIBS = ["cudart_static", "rt", "dl", "pthread"]
# Binds the modules' references to older symbol versions, so that one wheel runs on glibc 2.28
# (manylinux_2_28); csrc/glibc_compat.cpp says how. Linked into both modules.
GLIBC_COMPAT = "csrc/glibc_compat.cpp"
# The libraries that held the pthread, dl and shm functions before glibc 2.34 (and libm): NEEDED,
# so that an older glibc finds the older versions there.
GLIBC_COMPAT_LIBS = ["libpthread.so.0", "libdl.so.2", "librt.so.1", "libm.so.6"]


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _jobs():
    return max(1, int(os.environ.get("MAX_JOBS") or os.cpu_count() or 1))


def host_cxx_flags(machine=None):
    """The host compiler's flags for a machine (as platform.machine() names it), default this one."""
    machine = (machine or platform.machine()).lower()
    return list(CXX_FLAGS) + ([] if machine in X86_64_MACHINES else PORTABLE_CXX_FLAGS)


def cuda_targets(machine=None):
    """The toolkit's targets/ directory names for a host machine: arm64 servers (Grace, GH200) are
    sbsa-linux, Jetson is aarch64-linux."""
    machine = (machine or platform.machine()).lower()
    if machine in X86_64_MACHINES:
        return ["x86_64-linux"]
    if machine in ("aarch64", "arm64"):
        return ["sbsa-linux", "aarch64-linux"]
    return []


def _cuda_lib_dir(root):
    """The directory holding libcudart_static.a under a toolkit root, or None."""
    subs = ["lib64", "lib"] + [os.path.join("targets", t, "lib") for t in cuda_targets()]
    for sub in subs:
        if os.path.isfile(os.path.join(root, sub, "libcudart_static.a")):
            return os.path.join(root, sub)
    return None


def _root_from_nvcc(nvcc):
    """Toolkit root of an nvcc executable.

    /usr/local/bin/nvcc may be a wrapper script (`exec /usr/local/cuda-13.0/bin/nvcc`), so the
    parent of its directory is not the root; nvcc's own dry run names it (TOP / _HERE_).
    """
    guess = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    if _cuda_lib_dir(guess):
        return guess
    with tempfile.TemporaryDirectory() as tmp:
        probe = os.path.join(tmp, "probe.cu")
        open(probe, "w").close()
        try:
            out = subprocess.run(
                [nvcc, "--dryrun", "-c", probe, "-o", os.path.join(tmp, "probe.o")],
                capture_output=True, text=True, timeout=60,
            )
        except (OSError, subprocess.SubprocessError):
            return None
    text = out.stdout + out.stderr
    for key in ("TOP", "_HERE_"):
        m = re.search(rf"^#\$ {key}=(.*)$", text, re.MULTILINE)
        if m:
            path = os.path.realpath(m.group(1).strip())
            root = path if key == "TOP" else os.path.dirname(path)
            if _cuda_lib_dir(root):
                return root
    return None


def find_cuda():
    """(root, None) for a usable toolkit, or (None, why not)."""
    home = os.environ.get("CUDA_HOME")
    if home:
        if not os.access(os.path.join(home, "bin", "nvcc"), os.X_OK):
            return None, f"CUDA_HOME={home} has no bin/nvcc"
        if not _cuda_lib_dir(home):
            return None, f"CUDA_HOME={home} has no libcudart_static.a"
        return os.path.realpath(home), None
    if os.access("/usr/local/cuda/bin/nvcc", os.X_OK) and _cuda_lib_dir("/usr/local/cuda"):
        return os.path.realpath("/usr/local/cuda"), None
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None, "no CUDA_HOME, no /usr/local/cuda, no nvcc on PATH"
    root = _root_from_nvcc(nvcc)
    if root is None:
        return None, f"cannot find the toolkit root (libcudart_static.a) of {nvcc}"
    return root, None


def cuda_archs():
    """The normalized arch list ("80;90;...") and the nvcc -gencode flags for it."""
    raw = os.environ.get("ENTROPY_OPS_CUDA_ARCHS", "").strip() or DEFAULT_CUDA_ARCHS
    archs = [a for a in re.split(r"[;,\s]+", raw.replace("sm_", "")) if a]
    bad = [a for a in archs if not re.fullmatch(r"\d+[af]?", a)]
    if bad or not archs:
        sys.exit(f"ENTROPY_OPS_CUDA_ARCHS={raw!r}: expected e.g. '80;90;100;120', bad: {bad}")
    archs = sorted(set(archs), key=lambda a: (int(re.match(r"\d+", a).group()), a))
    flags = []
    for a in archs:
        flags += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    newest = archs[-1]
    flags += ["-gencode", f"arch=compute_{newest},code=compute_{newest}"]
    return ";".join(archs), flags


# Objects live in build/objects/, named by source and a hash of the compile command, and are
# shared by every build of this tree: the editable install (whose setuptools build_temp is a fresh
# temporary directory each time) and `make wheel` compile the CUDA sources once between them.
# An object is reused only while no prerequisite in its compiler-written depfile (the source and
# every header it included, toolkit headers too) is missing or newer than the compile's start.
OBJECT_DIR = os.path.join(ROOT, "build", "objects")


def _depfile_prerequisites(path):
    """The prerequisites of the one rule in a make-style depfile (gcc/nvcc -MD). A path with an
    escaped space splits into missing files, which only costs a rebuild."""
    with open(path) as f:
        text = f.read().replace("\\\n", " ")
    _, sep, deps = text.partition(": ")
    if not sep:
        raise OSError(f"{path}: not a depfile")
    return deps.split()


def _up_to_date(obj, depfile):
    try:
        built = os.stat(obj).st_mtime_ns
        deps = _depfile_prerequisites(depfile)
        return all(os.stat(os.path.join(ROOT, d)).st_mtime_ns <= built for d in deps)
    except OSError:
        return False


def build_object(src, key, compile_to):
    """The object of `src`: the cached one when up to date, else `compile_to(obj, depfile)` runs.

    `key` is the compile command minus output paths: flags, archs or compiler changes give a new
    object name rather than a stale object. Concurrent builds write temporary files and rename
    them into place; the object is stamped with the time its compile started, less 0.1 s for
    the file system's coarse clock, so a source edited during the compile is newer than it and
    rebuilds next time.
    """
    digest = hashlib.sha256("\0".join(key).encode()).hexdigest()[:16]
    stem = os.path.splitext(os.path.relpath(os.path.join(ROOT, src), ROOT))[0]
    obj = os.path.join(OBJECT_DIR, f"{stem.replace(os.sep, '.')}.{digest}.o")
    depfile = obj[:-2] + ".d"
    if _up_to_date(obj, depfile):
        print(f"entropy_ops: {src} is up to date ({os.path.relpath(obj, ROOT)})", flush=True)
        return obj
    os.makedirs(OBJECT_DIR, exist_ok=True)
    tmp = f"{obj[:-2]}.tmp{os.getpid()}-{threading.get_ident()}"
    start = time.time_ns() - 100_000_000
    try:
        compile_to(tmp + ".o", tmp + ".d")
        os.utime(tmp + ".o", ns=(start, start))
        # The depfile first: a crash between the renames leaves an old object with the new
        # (complete) prerequisite list, which is stale, never an object that looks fresh.
        os.replace(tmp + ".d", depfile)
        os.replace(tmp + ".o", obj)
    finally:
        for leftover in (tmp + ".o", tmp + ".d"):
            if os.path.exists(leftover):
                os.remove(leftover)
    return obj


class BuildExt(build_ext):
    """Compiles the .cu sources of `_C_cuda` with nvcc, the rest with the host compiler, both
    through the object cache above."""

    def finalize_options(self):
        super().finalize_options()
        # Always link (seconds): the object cache decides what to compile. setuptools' own check
        # (module newer than its sources) misses header edits and flag or arch changes.
        self.force = True

    def build_extensions(self):
        # Python's own CFLAGS carry -g; debug info would make the wheel several times larger.
        for attr in ("compiler_so", "compiler_so_cxx", "linker_so", "linker_so_cxx"):
            cmd = getattr(self.compiler, attr, None)
            if cmd:
                setattr(self.compiler, attr, [f for f in cmd if f != "-g"])
        self.compiler.compile = self._compile_host
        super().build_extensions()

    def build_extension(self, ext):
        cuda = getattr(ext, "cuda_sources", None)
        if cuda:
            ext.extra_objects = self._compile_cuda(ext, cuda)
        super().build_extension(ext)

    def _compile_host(self, sources, output_dir=None, macros=None, include_dirs=None, debug=False,
                      extra_preargs=None, extra_postargs=None, depends=None):
        """CCompiler.compile, in parallel and through the object cache; returns the objects."""
        cc = self.compiler
        _, objects, extra_postargs, pp_opts, build = cc._setup_compile(
            output_dir, macros, include_dirs, sources, depends, extra_postargs
        )
        cc_args = cc._get_cc_args(pp_opts, debug, extra_preargs)
        import pybind11
        # pybind11's include directory lies in a fresh temporary build environment on every
        # isolated build; its version stands in for the path so the other objects stay cached
        # (files that include pybind11 list its headers in their depfile and rebuild anyway).
        pybind_inc = "-I" + pybind11.get_include()
        stable = [f"-I<pybind11 {pybind11.__version__}>" if a == pybind_inc else a for a in cc_args]
        compilers = list(cc.compiler_so) + list(getattr(cc, "compiler_so_cxx", None) or [])

        def one(obj):
            src, ext = build[obj]

            def compile_to(out, dep):
                cc._compile(out, src, ext, cc_args, extra_postargs + ["-MD", "-MF", dep], pp_opts)

            return build_object(src, [*compilers, *stable, src, *extra_postargs], compile_to)

        with ThreadPoolExecutor(max_workers=min(_jobs(), len(objects))) as pool:
            return list(pool.map(one, objects))

    def _compile_cuda(self, ext, sources):
        nvcc = os.path.join(ext.cuda_root, "bin", "nvcc")
        jobs = _jobs()
        # Split the cores between files and, inside nvcc, between the per-arch compilations.
        threads = max(1, jobs // len(sources))
        failures = []

        def compile_one(src):
            key = [nvcc, "-c", src, *NVCC_FLAGS, *ext.gencode]

            def compile_to(out, dep):
                cmd = [*key, "-o", out, "-MD", "-MF", dep, "--threads", str(threads)]
                print(" ".join(cmd), flush=True)
                proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
                sys.stdout.write(proc.stdout)
                sys.stderr.write(proc.stderr)
                if proc.returncode != 0:
                    failures.append(src)
                    raise RuntimeError(f"nvcc failed ({proc.returncode}): {' '.join(cmd)}")

            try:
                return build_object(src, key, compile_to)
            except RuntimeError as e:
                print(f"error: {e}", file=sys.stderr, flush=True)
                return None

        with ThreadPoolExecutor(max_workers=min(jobs, len(sources))) as pool:
            objects = list(pool.map(compile_one, sources))
        if failures:
            sys.exit(f"error: compiling {', '.join(sorted(failures))} of entropy_ops._C_cuda failed")
        return objects


def glibc_compat_link_args(machine=None):
    """``--wrap`` of every symbol that GLIBC_COMPAT wraps (its EO_OLD_VERSION lines and its
    ``__wrap_<name>(`` functions) and GLIBC_COMPAT_LIBS as NEEDED; x86-64 Linux only (the file
    compiles to nothing elsewhere)."""
    machine = (machine or platform.machine()).lower()
    if machine not in X86_64_MACHINES or not sys.platform.startswith("linux"):
        return []
    with open(os.path.join(ROOT, GLIBC_COMPAT)) as f:
        text = f.read()
    names = re.findall(r"^EO_OLD_VERSION\((\w+),", text, re.M) + re.findall(r"\b__wrap_(\w+)\(", text)
    return ([f"-Wl,--wrap={name}" for name in names] + ["-Wl,--no-as-needed"]
            + [f"-l:{lib}" for lib in GLIBC_COMPAT_LIBS] + ["-Wl,--as-needed"])


def cpu_extension():
    import pybind11  # a build requirement; imported here so that tests can import this file
    sources = sorted(glob.glob("csrc/cpu/*.cpp")) + ["csrc/cpu_bindings.cpp", GLIBC_COMPAT]
    return Extension(
        "entropy_ops._C",
        sources=sources,
        include_dirs=["csrc/include", "csrc", pybind11.get_include()],
        extra_compile_args=host_cxx_flags(),
        extra_link_args=glibc_compat_link_args(),
        language="c++",
    )


def cuda_extension():
    """The `_C_cuda` extension, or None when it is not to be built."""
    if _env_flag("ENTROPY_OPS_NO_CUDA"):
        print("entropy_ops: ENTROPY_OPS_NO_CUDA=1, not building _C_cuda", flush=True)
        return None
    root, why = find_cuda()
    if root is None:
        if _env_flag("ENTROPY_OPS_REQUIRE_CUDA"):
            sys.exit(f"error: ENTROPY_OPS_REQUIRE_CUDA=1 but no CUDA toolkit was found: {why}")
        print(f"entropy_ops: not building _C_cuda ({why})", flush=True)
        return None
    import pybind11
    archs, gencode = cuda_archs()
    lib_dir = _cuda_lib_dir(root)
    print(f"entropy_ops: building _C_cuda with CUDA at {root} for archs {archs}", flush=True)
    ext = Extension(
        "entropy_ops._C_cuda",
        sources=["csrc/cuda_bindings.cpp", "csrc/cuda_token_bindings.cpp", GLIBC_COMPAT],
        include_dirs=["csrc/include", "csrc", os.path.join(root, "include"), pybind11.get_include()],
        define_macros=[("ENTROPY_OPS_CUDA_ARCHS", f'"{archs}"')],
        extra_compile_args=host_cxx_flags(),
        extra_link_args=glibc_compat_link_args(),
        library_dirs=[lib_dir],
        libraries=CUDA_LINK_LIBS,
        language="c++",
    )
    ext.cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    ext.cuda_root = root
    ext.gencode = gencode
    return ext


def extensions():
    exts = [cpu_extension()]
    cuda = cuda_extension()
    if cuda is not None:
        exts.append(cuda)
    return exts


def packages():
    """entropy_ops and every subpackage (a directory with an __init__.py), and triton_kernels/ with
    its subpackages installed as entropy_ops.triton_kernels: never a top-level `triton_kernels`,
    the name of Triton's own kernel library (SPEC §1)."""
    found = find_packages(include=["entropy_ops", "entropy_ops.*"])
    found.append("entropy_ops.triton_kernels")
    found += [f"entropy_ops.triton_kernels.{p}" for p in find_packages("triton_kernels")]
    return sorted(set(found))


# setuptools runs this file as __main__; tests import it (packages(), the object cache).
if __name__ == "__main__":
    setup(
        packages=packages(),
        package_dir={"entropy_ops.triton_kernels": "triton_kernels"},
        ext_modules=extensions(),
        cmdclass={"build_ext": BuildExt},
        zip_safe=False,
    )
