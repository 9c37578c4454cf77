"""Every Triton launch pins FMA contraction (``enable_fp_fusion=FP_FUSION``): left unset, Triton
decides it from ``TRITON_DEFAULT_FP_FUSION`` and its version's default (3.9 warns that 3.10 turns
it off), so two processes could get different log-prob bits for the same token (SPEC §2)."""
import ast
import glob
import os

from conftest import REPO_ROOT

LAUNCHERS = sorted(glob.glob(os.path.join(REPO_ROOT, "triton_kernels", "launch*.py")))


def _launches(path):
    """The ``kernel[grid](...)`` calls of a file: calls of a subscripted name."""
    tree = ast.parse(open(path).read(), path)
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript)]


def test_every_launch_pins_fp_fusion():
    assert len(LAUNCHERS) >= 4, LAUNCHERS
    total = 0
    for path in LAUNCHERS:
        for call in _launches(path):
            total += 1
            keywords = {k.arg: k.value for k in call.keywords if k.arg is not None}
            where = f"{os.path.basename(path)}:{call.lineno}"
            assert "enable_fp_fusion" in keywords, f"{where}: a launch without enable_fp_fusion=FP_FUSION"
            value = keywords["enable_fp_fusion"]
            assert isinstance(value, ast.Name) and value.id == "FP_FUSION", f"{where}: use the shared FP_FUSION"
    assert total >= 17, f"found only {total} launches: did the launch pattern change?"


def test_fp_fusion_is_a_fixed_bool():
    from entropy_ops.triton_kernels import FP_FUSION
    assert FP_FUSION is True
