"""The native modules run on glibc 2.28 (the wheels' manylinux_2_28 tag, SPEC §5) although built on a
newer one: csrc/glibc_compat.cpp binds their references to older symbol versions (a jump to the
older version, or a function rebuilt from older exported ones). This machine's glibc still exports
the older versions, so what is checked here: that nothing newer than manylinux_2_28 allows is
referenced (as `auditwheel repair --plat manylinux_2_28` checks the wheel), that the libraries
holding the older versions on an older glibc are NEEDED, and that everything the file stands in
for works when called (a driver linked as the modules are)."""
import glob
import os
import platform
import re
import shutil
import subprocess

import pytest

from conftest import REPO_ROOT
from test_packaging import load_setup_py

# manylinux_2_28's limits (auditwheel's policy): glibc 2.28, gcc 8's libstdc++.
LIMITS = {"GLIBC": (2, 28), "GLIBCXX": (3, 4, 24), "CXXABI": (1, 3, 11)}

pytestmark = pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64") or not shutil.which("objdump"),
    reason="the symbol versions of x86-64 Linux builds (and objdump) only")


def _versions(path):
    """``{version name: [symbols]}`` of the versioned symbols ``path`` imports."""
    out = subprocess.run(["objdump", "-T", path], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 2 and "*UND*" in line and fields[-2].startswith("("):
            found.setdefault(fields[-2].strip("()"), []).append(fields[-1])
    return found


def _too_new(path):
    bad = []
    for version, symbols in _versions(path).items():
        m = re.fullmatch(r"(GLIBC|GLIBCXX|CXXABI)_([\d.]+)", version)
        if m and tuple(int(p) for p in m.group(2).split(".")) > LIMITS[m.group(1)]:
            bad += [f"{s}@{version}" for s in symbols]
    return bad


def _needed(path):
    out = subprocess.run(["readelf", "-d", path], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", out))


def _modules():
    found = sorted(glob.glob(os.path.join(REPO_ROOT, "entropy_ops", "_C*.so")))
    assert found, "no native module built (make install)"
    return found


@pytest.mark.parametrize("module", _modules(), ids=os.path.basename)
def test_modules_need_nothing_newer_than_manylinux_2_28(module):
    assert not _too_new(module), f"{module}: symbols newer than manylinux_2_28 (add them to csrc/glibc_compat.cpp)"
    missing = set(load_setup_py().GLIBC_COMPAT_LIBS) - _needed(module)
    assert not missing, f"{module}: {sorted(missing)} not NEEDED: an older glibc would not find the older versions"


def test_everything_glibc_compat_stands_in_for_works(tmp_path):
    setup = load_setup_py()
    driver = str(tmp_path / "driver")
    cmd = ["g++", "-std=c++17", "-O1", "-pthread", os.path.join("tests", "glibc_compat_driver.cpp"),
           setup.GLIBC_COMPAT, "-o", driver, *setup.glibc_compat_link_args()]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"
    # The driver binds only old versions, so what runs are the stand-ins (the executable's own
    # startup, __libc_start_main, which a shared object does not have, aside).
    assert not [s for s in _too_new(driver) if not s.startswith("__libc_start_main@")]
    run = subprocess.run([driver], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr


def test_the_check_sees_new_versions(tmp_path):
    """The same link without the stand-ins binds new versions, and the check says so."""
    driver = str(tmp_path / "plain")
    subprocess.run(["g++", "-std=c++17", "-O1", "-pthread", os.path.join("tests", "glibc_compat_driver.cpp"),
                    "-o", driver], cwd=REPO_ROOT, check=True)
    bad = _too_new(driver)
    assert any(s.startswith("pthread_create@GLIBC_2.34") for s in bad), bad
