"""Build of entropy_ops: the torch-free native modules `_C` (C++ CPU) and `_C_cuda` (CUDA).

Neither module includes a torch header (SPEC §1), so the build needs no torch: `pip install .`
works with build isolation, and one wheel serves every torch >= 2.4.

Environment knobs:
  ENTROPY_OPS_CUDA_ARCHS    SASS targets, default "80;90;100;120"; PTX of the newest is added.
  ENTROPY_OPS_NO_CUDA=1     never build `_C_cuda`.
  ENTROPY_OPS_REQUIRE_CUDA=1  a missing CUDA toolkit is an error (wheel builds).
  CUDA_HOME                 the toolkit root; when set it is the only place looked at.
  MAX_JOBS                  parallel compile jobs (default: all cores).
"""

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

import pybind11
from pybind11.setup_helpers import ParallelCompile
from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "80;90;100;120"
CXX_FLAGS = ["-O3", "-std=c++17", "-fPIC", "-pthread", "-fvisibility=hidden"]
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


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _jobs():
    return max(1, int(os.environ.get("MAX_JOBS") or os.cpu_count() or 1))


def _cuda_lib_dir(root):
    """The directory holding libcudart_static.a under a toolkit root, or None."""
    for sub in ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib")):
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


class BuildExt(build_ext):
    """Compiles the .cu sources of `_C_cuda` with nvcc, the rest with the host compiler."""

    def build_extensions(self):
        # Python's own CFLAGS carry -g; debug info would make the wheel several times larger.
        for attr in ("compiler_so", "compiler_so_cxx", "linker_so", "linker_so_cxx"):
            cmd = getattr(self.compiler, attr, None)
            if cmd:
                setattr(self.compiler, attr, [f for f in cmd if f != "-g"])
        super().build_extensions()

    def build_extension(self, ext):
        cuda = getattr(ext, "cuda_sources", None)
        if cuda:
            ext.extra_objects = self._compile_cuda(ext, cuda)
        super().build_extension(ext)

    def _compile_cuda(self, ext, sources):
        nvcc = os.path.join(ext.cuda_root, "bin", "nvcc")
        out_dir = os.path.join(os.path.abspath(self.build_temp), "cuda")
        os.makedirs(out_dir, exist_ok=True)
        jobs = _jobs()
        # Split the cores between files and, inside nvcc, between the per-arch compilations.
        threads = max(1, jobs // len(sources))

        def compile_one(src):
            obj = os.path.join(out_dir, os.path.splitext(os.path.basename(src))[0] + ".o")
            cmd = [nvcc, "-c", src, "-o", obj, *NVCC_FLAGS, *ext.gencode, "--threads", str(threads)]
            print(" ".join(cmd), flush=True)
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            return obj, cmd, proc

        with ThreadPoolExecutor(max_workers=min(jobs, len(sources))) as pool:
            results = list(pool.map(compile_one, sources))
        failed = False
        for _, cmd, proc in results:
            sys.stdout.write(proc.stdout)
            sys.stderr.write(proc.stderr)
            if proc.returncode != 0:
                failed = True
                print(f"error: nvcc failed ({proc.returncode}): {' '.join(cmd)}", file=sys.stderr)
        if failed:
            sys.exit("error: compiling the CUDA sources of entropy_ops._C_cuda failed")
        return [obj for obj, _, _ in results]


def _depends(*patterns):
    """Files whose change must rebuild an extension although its listed sources did not change:
    setuptools compares only sources + depends with the built module, so without these an edited
    header (or .cu file, compiled outside the source list) would leave a stale module."""
    return sorted(f for p in patterns for f in glob.glob(p, recursive=True))


def cpu_extension():
    sources = sorted(glob.glob("csrc/cpu/*.cpp")) + ["csrc/cpu_bindings.cpp"]
    return Extension(
        "entropy_ops._C",
        sources=sources,
        depends=_depends("csrc/include/**/*.h", "csrc/cpu/*.h"),
        include_dirs=["csrc/include", "csrc", pybind11.get_include()],
        extra_compile_args=CXX_FLAGS,
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
    archs, gencode = cuda_archs()
    lib_dir = _cuda_lib_dir(root)
    print(f"entropy_ops: building _C_cuda with CUDA at {root} for archs {archs}", flush=True)
    ext = Extension(
        "entropy_ops._C_cuda",
        sources=["csrc/cuda_bindings.cpp"],
        depends=_depends("csrc/include/**/*.h", "csrc/cuda/*.cu", "csrc/cuda/*.cuh", "csrc/cuda/*.h"),
        include_dirs=["csrc/include", "csrc", os.path.join(root, "include"), pybind11.get_include()],
        define_macros=[("ENTROPY_OPS_CUDA_ARCHS", f'"{archs}"')],
        extra_compile_args=CXX_FLAGS,
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


ParallelCompile("MAX_JOBS").install()

packages = find_packages(include=["entropy_ops", "entropy_ops.*"])
packages.append("entropy_ops.triton_kernels")

setup(
    packages=sorted(set(packages)),
    package_dir={"entropy_ops.triton_kernels": "triton_kernels"},
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExt},
    zip_safe=False,
)
