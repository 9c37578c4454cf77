"""Compile the fused linear + entropy kernels for real GPU targets without a GPU (SPEC §6), in the
configurations the launcher uses, and check ptxas's register report: no spills.

The interpreter hides what only the compiler sees (shared-memory and register overflows, type errors,
int32 offset arithmetic); the spill check runs Triton's own ptxas with ``-v`` on the generated PTX.
"""
import re
import subprocess
import tempfile

import pytest

triton = pytest.importorskip("triton")
import torch  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from entropy_ops.triton_kernels import FP_FUSION  # noqa: E402
from entropy_ops.triton_kernels import launch_linear as launch  # noqa: E402
from entropy_ops.triton_kernels import linear_entropy as kernels  # noqa: E402

ARCHS = (80, 90, 100, 120)
FLAGS = ("HAS_BIAS", "HAS_TEMP", "HAS_MASK", "SOFTCAP")
DTYPES = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32"}


def _signature(x_dtype):
    sig = {
        "h_ptr": x_dtype, "stride_h": "i64", "w_ptr": x_dtype, "stride_w": "i64", "b_ptr": x_dtype,
        "N": "i32", "V": "i32", "D": "i32", "v_off": "i32", "split_size": "i32", "temp_ptr": "*fp32", "temp_scalar": "fp32",
        "labels_ptr": "*i64", "K": "i32", "mask_ptr": "*i1", "logit_scale": "fp32", "softcap": "fp32",
        "part_ptr": "*fp32", "n_splits": "i32", "zy_ptr": "*fp32", "state_ptr": "*fp32", "entropy_ptr": "*fp32",
        "grad_entropy_ptr": "*fp32", "grad_logp_ptr": "*fp32", "grad_total_ptr": "*fp32", "out_ptr": x_dtype,
        "stride_out": "i64",
    }
    return sig


def _spilled_bytes(ptx: str, arch: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        src = f"{tmp}/k.ptx"
        with open(src, "w") as f:
            f.write(ptx)
        result = subprocess.run(
            [get_ptxas(arch).path, "-v", "--regAllocOptLevel=2", f"--gpu-name={sm_arch_from_capability(arch)}",
             src, "-o", f"{tmp}/k.o"], capture_output=True, text=True, check=True)
    report = result.stderr + result.stdout
    assert "Used" in report, f"no ptxas resource report:\n{report}"
    return sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", report))


def _compile(fn, dtype, constexprs, arch):
    sig = {name: _signature(DTYPES[dtype]).get(name, "constexpr") for name in fn.arg_names}
    block_k, precision, num_stages = launch.tile_sizes(dtype)
    constexprs = dict(constexprs, PRECISION=precision, UPCAST=False, BLOCK_M=launch.BLOCK_M,
                      BLOCK_N=launch.BLOCK_N, BLOCK_K=block_k)
    compiled = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs),
                              target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": launch.NUM_WARPS, "num_stages": num_stages,
                                       "enable_fp_fusion": FP_FUSION})
    assert compiled.asm["cubin"]
    spilled = _spilled_bytes(compiled.asm["ptx"], arch)
    assert spilled == 0, f"{fn.__name__} sm{arch} {dtype}: ptxas spills {spilled} bytes"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
def test_fwd_compiles_without_spills(arch, dtype):
    _compile(kernels.linear_entropy_fwd_kernel, dtype, dict.fromkeys(FLAGS, True), arch)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
def test_bwd_compiles_without_spills(arch, dtype):
    flags = dict.fromkeys(FLAGS + ("HAS_GRAD_ENTROPY", "HAS_GRAD_LOGP"), True)
    _compile(kernels.linear_entropy_bwd_kernel, dtype, flags, arch)


@pytest.mark.parametrize("flags", [dict.fromkeys(FLAGS, False)] + [dict(dict.fromkeys(FLAGS, False), **{f: True})
                                                                     for f in FLAGS],
                         ids=lambda f: "-".join(k for k, v in f.items() if v) or "none")
def test_every_flag_combination_compiles(flags):
    _compile(kernels.linear_entropy_fwd_kernel, torch.bfloat16, flags, 90)
    _compile(kernels.linear_entropy_bwd_kernel, torch.bfloat16,
             dict(flags, HAS_GRAD_ENTROPY=flags["HAS_BIAS"], HAS_GRAD_LOGP=True), 90)
