"""Compile the token-level Triton kernels (window entropy, masked quantile, top-k, random keys)
for real GPU targets without a GPU (SPEC §6), in the configurations the launchers use, and check
``ptxas -v``'s report: no register spills in any function, shared memory within the smallest of
these targets' limits. The interpreter hides all of this, and int32 offset arithmetic:
the signatures declare the sizes as i64, as the launchers pass them for N past 2^31."""
import os
import re
import subprocess

import pytest

triton = pytest.importorskip("triton")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from entropy_ops.triton_kernels import FP_FUSION  # noqa: E402
from entropy_ops.triton_kernels import launch_tokens as L  # noqa: E402
from entropy_ops.triton_kernels import masked_quantile as M  # noqa: E402
from entropy_ops.triton_kernels import random_keys as RK  # noqa: E402
from entropy_ops.triton_kernels import top_k as T  # noqa: E402
from entropy_ops.triton_kernels import window_entropy as W  # noqa: E402

ARCHS = (80, 90, 100, 120)
SHARED_LIMIT = 99 * 1024  # sm120's per-block maximum, the smallest of the four
BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")

SIGNATURE = dict(
    x_ptr="*fp32", mask_ptr="*i1", cu_ptr="*i64", out_ptr="*fp32", N="i64", S="i64", n_steps="i32",
    window="i64", offset="i64", grad_ptr="*fp32", share_ptr="*fp32", q_ptr="*fp64", lo_ptr="*fp64",
    hi_ptr="*fp64", count_ptr="*i64", Q="i32", prefix_ptr="*i64", hist_ptr="*i64", n_targets="i32",
    high="i32", low="i32", rank_ptr="*i64", value_ptr="*fp64", width="i32", scores_ptr="*fp32",
    eligible_ptr="*i1", above_ptr="*i8", tie_ptr="*i8", seed_ptr="*i64", first_ptr="*i64",
)
X_TYPES = {"fp32": (32, 0), "bf16": (32, 16), "fp16": (32, 13), "fp64": (64, 0)}


def _ptxas_report(ptx: str, tmp_path) -> str:
    """``ptxas -v`` on the kernel's PTX for its own ``.target`` (Triton's bundled ptxas; the
    Blackwell one for sm100+), as Triton assembles it."""
    target = re.search(r"^\.target\s+(sm_\w+)", ptx, re.M).group(1)
    ptxas = os.path.join(BIN, "ptxas-blackwell")  # the newer of the two: reads every PTX version Triton writes
    path = tmp_path / "kernel.ptx"
    path.write_text(ptx)
    out = subprocess.run([ptxas, f"-arch={target}", "-v", str(path), "-o", str(tmp_path / "kernel.cubin")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout + out.stderr


def _assert_no_spills(report: str, what: str):
    """Every function of ``ptxas -v``'s report (the kernel and any subroutine, e.g. float64
    division's slow path) has 0 bytes of spill stores and loads."""
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    assert spills, f"no spill report for {what}:\n{report}"
    assert all(a == "0" and b == "0" for a, b in spills), f"{what} spills:\n{report}"


def _compile(fn, constexprs, arch, tmp_path, num_warps=4, maxnreg=None, **types):
    sig = {name: types.get(name, SIGNATURE.get(name, "constexpr")) for name in fn.arg_names}
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs)
    options = {"num_warps": num_warps, "enable_fp_fusion": FP_FUSION}  # as every launch pins it
    if maxnreg is not None:
        options["maxnreg"] = maxnreg
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    assert compiled.metadata.shared <= SHARED_LIMIT
    _assert_no_spills(_ptxas_report(compiled.asm["ptx"], tmp_path), f"{fn.__name__} on sm{arch}")
    return compiled


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("x_type", list(X_TYPES))
def test_window_kernels_compile(arch, x_type, tmp_path):
    acc = "*fp64" if x_type == "fp64" else "*fp32"
    for has_mask in (False, True):
        flags = dict(HAS_MASK=has_mask, BLOCK=L._WINDOW_BLOCK)
        _compile(W.window_entropy_fwd_kernel, flags, arch, tmp_path, x_ptr=f"*{x_type}", out_ptr=acc)
        _compile(W.window_share_kernel, flags, arch, tmp_path, grad_ptr=acc, share_ptr=acc)
        _compile(W.window_entropy_bwd_kernel, flags, arch, tmp_path, share_ptr=acc, out_ptr=acc)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("x_type", list(X_TYPES))
def test_quantile_kernels_compile(arch, x_type, tmp_path):
    key_bits, low_bits = X_TYPES[x_type]
    for has_mask in (False, True):
        _compile(M.masked_quantile_seq_kernel,
                 dict(HAS_MASK=has_mask, KEY_BITS=key_bits, LOW_BITS=low_bits, BLOCK=L._SEQ_BLOCK), arch,
                 tmp_path, num_warps=L._SEQ_WARPS, maxnreg=L._SEQ_MAXNREG, x_ptr=f"*{x_type}")
    _compile(M.radix_hist_kernel, dict(HAS_MASK=True, KEY_BITS=key_bits, IS_INT=False, DESCENDING=False,
                                       BLOCK=L._SCAN_BLOCK, ITERS=L._SCAN_ITERS), arch, tmp_path, x_ptr=f"*{x_type}")
    for last in (False, True):
        _compile(M.radix_pick_kernel, dict(KEY_BITS=key_bits, LOW_BITS=low_bits, LAST=last), arch, tmp_path)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("score_type", list(X_TYPES) + ["i64"])
def test_top_k_kernels_compile(arch, score_type, tmp_path):
    key_bits, low_bits = X_TYPES.get(score_type, (64, 0))
    is_int = score_type == "i64"
    _compile(M.radix_hist_kernel, dict(HAS_MASK=True, KEY_BITS=key_bits, IS_INT=is_int, DESCENDING=True,
                                       BLOCK=L._SCAN_BLOCK, ITERS=L._SCAN_ITERS), arch, tmp_path,
             x_ptr=f"*{score_type}")
    _compile(T.top_k_mark_kernel, dict(KEY_BITS=key_bits, LOW_BITS=low_bits, IS_INT=is_int, BLOCK=L._MARK_BLOCK),
             arch, tmp_path, scores_ptr=f"*{score_type}")


@pytest.mark.parametrize("arch", ARCHS)
def test_random_keys_kernel_compiles(arch, tmp_path):
    compiled = _compile(RK.random_keys_kernel, dict(BLOCK=L._KEYS_BLOCK), arch, tmp_path, out_ptr="*i64")
    # SplitMix64 is unsigned: every right shift logical (no arithmetic shift of the uint64 state,
    # which the interpreter's numpy uint64 would not show if Triton typed a constant as signed).
    assert "arith.shrui" in compiled.asm["ttir"] and "arith.shrsi" not in compiled.asm["ttir"]
    assert "shr.s64" not in compiled.asm["ptx"]


def test_spill_check_can_fail():
    spilled = ("ptxas info    : Function properties for k\n"
               "    96 bytes stack frame, 96 bytes spill stores, 88 bytes spill loads\n")
    with pytest.raises(AssertionError, match="spills"):
        _assert_no_spills(spilled, "k")
    _assert_no_spills(spilled.replace("96 bytes spill", "0 bytes spill").replace("88", "0"), "k")
