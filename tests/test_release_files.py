"""What ships and what CI runs around the package, checked without building anything: the LICENSE
text and its place in the wheel and sdist metadata, the whole test suite in the sdist, the wheel
smoke test's arch list normalized as setup.py normalizes it, the smoke venv's pins (torch, Triton
3.6), one wheel per CPython the metadata names and how its interpreter is found, no annotation
that Python 3.9 cannot evaluate, and the Makefile's message for a broken venv."""
import ast
import importlib.util
import os
import shutil
import subprocess

import pytest

from conftest import REPO_ROOT
from test_packaging import load_setup_py

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


def _text(*parts):
    with open(os.path.join(REPO_ROOT, *parts)) as f:
        return f.read()


def test_license_is_the_apache_2_text_and_ships_with_the_metadata():
    text = _text("LICENSE")
    assert text.split()[:5] == ["Apache", "License", "Version", "2.0,", "January"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]


def test_sdist_carries_the_whole_test_suite():
    """setuptools alone ships tests/test*.py without conftest.py and the *_common.py helpers."""
    lines = _text("MANIFEST.in").splitlines()
    assert {"graft tests", "graft .ci", "include Makefile"} <= set(lines)


def _smoke_native():
    spec = importlib.util.spec_from_file_location("smoke_native", os.path.join(REPO_ROOT, ".ci", "smoke_native.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("archs", ["", "80;90;100;120", "90,80", "sm_90", " sm_120; 100a,80 80 "])
def test_smoke_test_expects_the_archs_setup_py_builds(archs, monkeypatch):
    monkeypatch.setenv("ENTROPY_OPS_CUDA_ARCHS", archs)
    assert _smoke_native().expected_archs() == load_setup_py().cuda_archs()[0]


def _constraints_step():
    """The lines of .ci/run that write the smoke venv's pip constraints."""
    lines = _text(".ci", "run").splitlines()
    start = next(i for i, line in enumerate(lines) if '> "$smoke/constraints.txt"' in line)
    end = next(i for i, line in enumerate(lines) if line.startswith(".venv/bin/python -m venv"))
    return "\n".join(lines[start:end])


def test_ci_smoke_venv_pins_torch_and_the_oldest_triton_tested(tmp_path):
    """The wheel's smoke venv: the local CPU torch (never a CUDA download), Triton 3.6 (the GPU
    machines' version; the dev venv tests the newest) and a numpy its interpreter runs with."""
    script = "set -euo pipefail\nsmoke=.\n" + _constraints_step()
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    pins = (tmp_path / "constraints.txt").read_text().split()
    assert pins == ["torch==2.13.0", "triton==3.6.0", "numpy<2.4"]
    assert "Triton 3.6" in _text("README.md"), "README's status section says which Triton versions ran"


def _wheel_pythons():
    """The Makefile's default WHEEL_PYTHONS."""
    line = next(l for l in _text("Makefile").splitlines() if l.startswith("WHEEL_PYTHONS ?="))
    return line.split("?=")[1].split()


def test_one_wheel_per_python_the_metadata_names():
    """SPEC §5: one wheel per CPython; the classifiers name exactly those. The GPU machines run
    3.12; CI's smoke test with torch needs the dev venv's Python (3.11) among them."""
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
        classifiers = tomllib.load(f)["project"]["classifiers"]
    prefix = "Programming Language :: Python :: 3."
    named = sorted((c[len("Programming Language :: Python :: "):] for c in classifiers
                    if c.startswith(prefix) and c[len(prefix):].isdigit()), key=lambda v: int(v[2:]))
    assert named == _wheel_pythons()
    assert {"3.11", "3.12"} <= set(named)


def _fake_python(path, version, works=True):
    """An executable that answers as CPython ``version`` with pip, or (a pyenv shim of a version not
    enabled) fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = (f'case "$1" in -c) echo {version} ;; -m) echo "pip 24.0" ;; esac\n' if works
            else 'echo "pyenv: not enabled" >&2; exit 127\n')
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def test_find_python_takes_the_newest_pyenv_build_that_runs_then_path(tmp_path):
    root, bin_dir = tmp_path / "pyenv", tmp_path / "bin"
    for patch in ("9", "10"):
        _fake_python(root / "versions" / f"3.98.{patch}" / "bin" / "python3.98", "3.98")
    _fake_python(root / "versions" / "3.98.11" / "bin" / "python3.98", "3.98", works=False)
    _fake_python(bin_dir / "python3.97", "3.97")

    def find(version):
        env = dict(os.environ, PYENV_ROOT=str(root), PATH=f"{bin_dir}:{os.environ['PATH']}")
        return subprocess.run(["bash", os.path.join(REPO_ROOT, ".ci", "find_python"), version],
                              env=env, capture_output=True, text=True)
    assert find("3.98").stdout.strip() == str(root / "versions" / "3.98.10" / "bin" / "python3.98")
    assert find("3.97").stdout.strip() == str(bin_dir / "python3.97")
    missing = find("3.96")
    assert missing.returncode == 1 and "no CPython 3.96" in missing.stderr and "WHEEL_PYTHONS" in missing.stderr
    assert find("3").returncode == 2


def _has_pep604_annotation(tree) -> bool:
    """An annotation with ``X | Y`` that runs when the module is imported (def signatures, module
    and class variables): a TypeError on Python 3.9 without ``from __future__ import annotations``."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            hints = [a.annotation for a in args.posonlyargs + args.args + args.kwonlyargs] + [node.returns]
            hints += [a.annotation for a in (args.vararg, args.kwarg) if a is not None]
        elif isinstance(node, (ast.Module, ast.ClassDef)):
            hints = [n.annotation for n in node.body if isinstance(n, ast.AnnAssign)]
        else:
            continue
        for hint in hints:
            if hint is not None and any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr)
                                        for n in ast.walk(hint)):
                return True
    return False


def _has_future_annotations(tree) -> bool:
    return any(isinstance(n, ast.ImportFrom) and n.module == "__future__"
               and any(a.name == "annotations" for a in n.names) for n in tree.body)


def test_annotations_evaluate_on_the_oldest_python_supported():
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
        oldest = tomllib.load(f)["project"]["requires-python"]
    if tuple(map(int, oldest.lstrip(">=").split("."))) >= (3, 10):
        pytest.skip(f"requires-python {oldest}: `X | Y` evaluates")
    bad = []
    for path, _, files in os.walk(os.path.join(REPO_ROOT, "entropy_ops")):
        for name in (n for n in files if n.endswith(".py")):
            with open(os.path.join(path, name)) as f:
                tree = ast.parse(f.read())
            if _has_pep604_annotation(tree) and not _has_future_annotations(tree):
                bad.append(os.path.relpath(os.path.join(path, name), REPO_ROOT))
    assert not bad, f"`X | None` annotations without `from __future__ import annotations` (Python {oldest}): {bad}"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_names_distclean_for_a_broken_venv(tmp_path):
    shutil.copy(os.path.join(REPO_ROOT, "Makefile"), tmp_path)
    os.makedirs(tmp_path / ".venv" / "bin")
    (tmp_path / ".venv" / ".stamp-venv").touch()  # the venv was made, its python has gone since

    def make(goal):
        return subprocess.run(["make", "-n", goal], cwd=tmp_path, capture_output=True, text=True)
    for goal in ("install", "test", "bench", "wheel"):
        proc = make(goal)
        assert proc.returncode != 0 and "make distclean" in proc.stderr, (goal, proc.stderr)
    assert make("distclean").returncode == 0
    for tool in ("python", "pip"):
        path = tmp_path / ".venv" / "bin" / tool
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    assert "broken" not in make("wheel").stderr
