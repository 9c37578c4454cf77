"""Packaging, checked without building a wheel (SPEC §1, §5): the metadata in pyproject.toml, the
package list setup.py hands setuptools (every subpackage, `entropy_ops.triton_kernels` and never a
top-level `triton_kernels`), and setup.py's object cache (a header edit rebuilds). `make wheel` and
`.ci/smoke_wheel.py` check the built wheel itself."""
import ast
import importlib.util
import os
import re
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


def load_setup_py():
    """setup.py as a module: it calls setup() only when run as __main__ (as setuptools runs it)."""
    spec = importlib.util.spec_from_file_location("entropy_ops_setup", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    cwd = os.getcwd()
    os.chdir(ROOT)  # setup.py's globs are relative to the tree, as when setuptools runs it
    try:
        spec.loader.exec_module(module)
    finally:
        os.chdir(cwd)
    return module


@pytest.fixture(scope="module")
def setup_py():
    return load_setup_py()


@pytest.fixture(scope="module")
def pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def requirement_name(req):
    return re.match(r"[A-Za-z0-9._-]+", req).group().lower().replace("_", "-")


def source_version():
    tree = ast.parse(open(os.path.join(ROOT, "entropy_ops", "__init__.py")).read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("entropy_ops/__init__.py sets no __version__")


def test_project_metadata(pyproject):
    project = pyproject["project"]
    assert project["name"] == "entropy-ops"
    assert project["license"] == "Apache-2.0"
    assert project["readme"] == "README.md" and os.path.isfile(os.path.join(ROOT, "README.md"))
    assert project["description"] and project["requires-python"].startswith(">=")
    classifiers = project["classifiers"]
    assert any(c.startswith("Development Status ::") for c in classifiers)
    assert "Operating System :: POSIX :: Linux" in classifiers
    # PEP 639: with an SPDX `license` string, License :: classifiers are an error.
    assert not [c for c in classifiers if c.startswith("License ::")]


def test_version_has_one_source(pyproject):
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "entropy_ops.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]|rc|\.dev)?\d*", source_version())


def test_extras(pyproject):
    extras = pyproject["project"]["optional-dependencies"]
    assert {"triton", "test", "bench"} <= set(extras)
    assert "triton" in {requirement_name(r) for r in extras["triton"]}
    assert {"pytest", "triton"} <= {requirement_name(r) for r in extras["test"]}
    assert "matplotlib" in {requirement_name(r) for r in extras["bench"]}


def test_nothing_resolves_another_torch(pyproject):
    """The only torch requirement is the open-ended runtime one, so an installed (CPU) torch
    satisfies every install: no pin, no extra that names torch, no torch in the build."""
    project = pyproject["project"]
    torch_reqs = [r for r in project["dependencies"] if requirement_name(r) == "torch"]
    assert torch_reqs and all(re.fullmatch(r"torch\s*>=\s*[\d.]+", r) for r in torch_reqs), torch_reqs
    for name, reqs in project["optional-dependencies"].items():
        assert "torch" not in {requirement_name(r) for r in reqs}, f"extra [{name}] names torch"
    assert "torch" not in {requirement_name(r) for r in pyproject["build-system"]["requires"]}


def python_dirs(top):
    """Directories under ``top`` holding .py files (what must become packages)."""
    found = []
    for path, dirs, files in os.walk(os.path.join(ROOT, top)):
        dirs[:] = [d for d in dirs if d != "__pycache__" and not d.startswith(".")]
        if any(f.endswith(".py") for f in files):
            found.append(os.path.relpath(path, ROOT))
    return found


def test_every_python_directory_is_a_package():
    """find_packages skips a directory without __init__.py silently: its modules would be missing
    from the wheel while working in the editable install."""
    missing = [d for d in python_dirs("entropy_ops") + python_dirs("triton_kernels")
               if not os.path.isfile(os.path.join(ROOT, d, "__init__.py"))]
    assert not missing, f"add an __init__.py to {missing}"


def test_package_list(setup_py):
    packages = setup_py.packages()
    expected = {d.replace(os.sep, ".") for d in python_dirs("entropy_ops")}
    expected |= {"entropy_ops." + d.replace(os.sep, ".") for d in python_dirs("triton_kernels")}
    assert set(packages) == expected
    assert "entropy_ops.triton_kernels" in packages
    assert not [p for p in packages if p.split(".")[0] != "entropy_ops"], (
        "only entropy_ops.*: a top-level triton_kernels would shadow Triton's own kernel library")


def test_manifest_ships_the_native_sources():
    """The sdist builds the native modules: headers and .cu files are no Extension sources, so
    MANIFEST.in must carry all of csrc/."""
    lines = open(os.path.join(ROOT, "MANIFEST.in")).read().splitlines()
    assert "graft csrc" in lines and "graft triton_kernels" in lines


def write(path, text, mtime_ns=None):
    with open(path, "w") as f:
        f.write(text)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def test_object_cache_rebuilds_on_a_header_edit(setup_py, tmp_path, monkeypatch):
    monkeypatch.setattr(setup_py, "OBJECT_DIR", str(tmp_path / "objects"))
    src, header = tmp_path / "k.cu", tmp_path / "k.cuh"
    long_ago = time.time_ns() - 60 * 10**9
    write(src, "#include \"k.cuh\"\n", long_ago)
    write(header, "#define K 1\n", long_ago)
    compiles = []

    def compile_to(obj, depfile):  # what nvcc -MD writes: the object and a make rule
        compiles.append(obj)
        write(obj, "object")
        write(depfile, f"{obj} : {src} \\\n    {header}\n")

    first = setup_py.build_object("csrc/k.cu", ["nvcc", "-c", "csrc/k.cu"], compile_to)
    assert os.path.isfile(first) and len(compiles) == 1
    assert setup_py.build_object("csrc/k.cu", ["nvcc", "-c", "csrc/k.cu"], compile_to) == first
    assert len(compiles) == 1, "an up-to-date object was compiled again"
    write(header, "#define K 2\n")  # now: newer than the object
    assert setup_py.build_object("csrc/k.cu", ["nvcc", "-c", "csrc/k.cu"], compile_to) == first
    assert len(compiles) == 2, "a header edit did not rebuild the object"
    other = setup_py.build_object("csrc/k.cu", ["nvcc", "-c", "csrc/k.cu", "-G"], compile_to)
    assert other != first and len(compiles) == 3, "other flags must give another object"
    header.unlink()
    setup_py.build_object("csrc/k.cu", ["nvcc", "-c", "csrc/k.cu"], compile_to)
    assert len(compiles) == 4, "a missing prerequisite must rebuild"
    assert not [p for p in os.listdir(tmp_path / "objects") if ".tmp" in p], "temporary files left"
