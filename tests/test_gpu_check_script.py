""".ci/gpu_check, the prepared script of the GPU checks: it parses, refuses an unknown stage, and
the tests its sanitizer stage names still exist (a renamed test would otherwise leave that stage
running nothing on the one day a GPU is lent), selecting cases of both GPU backends; its wheel
stage fails naming a missing wheel."""
import os
import re
import shlex
import subprocess
import sys

from conftest import PYTHON, REPO_ROOT, subprocess_env

SCRIPT = os.path.join(REPO_ROOT, ".ci", "gpu_check")


def _sanitizer_runs():
    """``[(tool, node ids, -k expression)]`` of the sanitizer stage's commands."""
    text = open(SCRIPT).read()
    body = text[text.index("stage_sanitize() {"):]
    body = body[:body.index("\n}\n")]
    runs = []
    for command in body.split("\n  run ")[1:]:
        tool = re.search(r"--tool (\w+)", command).group(1)
        runs.append((tool, re.findall(r'"(tests/[^"]+::[^"]+)"', command), re.search(r'-k "([^"]+)"', command).group(1)))
    return runs


def test_script_parses_and_refuses_an_unknown_stage(tmp_path):
    assert subprocess.run(["bash", "-n", SCRIPT]).returncode == 0
    proc = subprocess.run(["bash", SCRIPT, "nosuch"], capture_output=True, text=True,
                          env=subprocess_env(GPU_CHECK_OUT=str(tmp_path)))
    assert proc.returncode == 2 and "unknown stage 'nosuch'" in proc.stderr


def test_sanitizer_stage_selects_existing_tests_of_both_backends():
    runs = _sanitizer_runs()
    assert [tool for tool, _, _ in runs] == ["memcheck", "racecheck"], runs
    for tool, node_ids, keyword in runs:
        assert len(node_ids) >= 3, (tool, node_ids)
        proc = subprocess.run([PYTHON, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", "gpu",
                               *node_ids, "-k", keyword], cwd=REPO_ROOT, capture_output=True, text=True,
                              env=subprocess_env())
        assert proc.returncode == 0, proc.stdout + proc.stderr
        selected = [line for line in proc.stdout.splitlines() if "::" in line]
        for node in node_ids:
            mine = [s for s in selected if s.startswith(node + "[") or s == node]
            assert mine, f"{tool}: -k {shlex.quote(keyword)} selects nothing of {node}"
            for backend in ("triton", "cuda"):
                assert any(backend in s for s in mine), f"{tool}: no {backend} case of {node}"


def test_wheel_stage_names_the_missing_wheel(tmp_path):
    """Without `make wheel` and dist carried, the wheel stage fails and says so (not a silent pass)."""
    tree = tmp_path / "tree"
    (tree / ".ci").mkdir(parents=True)
    (tree / "dist").mkdir()
    script = tree / ".ci" / "gpu_check"
    script.write_text(open(SCRIPT).read())
    proc = subprocess.run(["bash", str(script), "wheel"], capture_output=True, text=True,
                          env=subprocess_env(GPU_CHECK_OUT=str(tmp_path / "out"), PYTHON=PYTHON))
    tag = "cp%d%d" % sys.version_info[:2]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"no {tag} wheel in dist/" in proc.stdout
    assert f"no {tag} wheel in dist/" in (tmp_path / "out" / "wheel.log").read_text()
