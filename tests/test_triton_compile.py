"""Compile the Triton kernels for real GPU targets without a GPU (SPEC §6).

The interpreter hides what only the compiler sees: shared-memory and register overflows, type errors,
non-constexpr globals and int32 offset arithmetic. Each kernel is compiled for sm80/90/100/120 in
the configurations the launchers use.
"""
import itertools

import pytest

triton = pytest.importorskip("triton")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from entropy_ops.triton_kernels import entropy as kernels  # noqa: E402
from entropy_ops.triton_kernels import FP_FUSION, launch, launch_selective, min_p, token_stats, top_p  # noqa: E402

ARCHS = (80, 90, 100, 120)
ROW_FLAGS = ("HAS_TEMP", "HAS_LABELS", "HAS_MASK")


def _signature(x_dtype, out_dtype="*fp32"):
    return {
        "x_ptr": x_dtype, "stride_row": "i64", "V": "i32", "split_size": "i32",
        "temp_ptr": "*fp32", "temp_scalar": "fp32", "temp_lo": "fp32", "labels_ptr": "*i64", "ignore_index": "i64",
        "mask_ptr": "*i1", "row_max_ptr": "*fp32", "log_norm_ptr": "*fp32", "entropy_ptr": "*fp32",
        "logp_ptr": "*fp32", "part_ptr": "*fp32", "n_splits": "i32", "grad_entropy_ptr": "*fp32",
        "grad_logp_ptr": "*fp32", "out_ptr": out_dtype, "out_stride_row": "i64",
    }


def _compile(fn, signature, constexprs, arch, num_warps):
    names = fn.arg_names
    sig = {name: signature.get(name, "constexpr") for name in names}
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs)
    options = {"num_warps": num_warps, "enable_fp_fusion": FP_FUSION}  # as every launch pins it
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    assert compiled.asm  # produced code for the target


def _flag_sets():
    for values in itertools.product((False, True), repeat=len(ROW_FLAGS)):
        yield dict(zip(ROW_FLAGS, values))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("split", (False, True))
def test_fwd_compiles(arch, split):
    block = launch._MAX_BLOCK
    for flags in (dict.fromkeys(ROW_FLAGS, False), dict.fromkeys(ROW_FLAGS, True)):
        _compile(kernels.entropy_fwd_kernel, _signature("*bf16"), dict(flags, SPLIT=split, BLOCK=block),
                 arch, launch._num_warps(block))
    if split:
        _compile(kernels.entropy_combine_kernel, _signature("*bf16"), dict.fromkeys(ROW_FLAGS, True), arch, 1)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("x_dtype", ("*bf16", "*fp16", "*fp32"))
def test_bwd_compiles(arch, x_dtype):
    block = launch._MAX_BLOCK
    flags = dict.fromkeys(ROW_FLAGS + ("HAS_GRAD_ENTROPY", "HAS_GRAD_LOGP"), True)
    _compile(kernels.entropy_bwd_kernel, _signature(x_dtype, out_dtype=x_dtype), dict(flags, BLOCK=block),
             arch, launch._num_warps(block))


@pytest.mark.parametrize("flags", list(_flag_sets()), ids=lambda f: "-".join(k for k, v in f.items() if v) or "none")
def test_every_row_flag_combination_compiles(flags):
    for fn, extra in ((kernels.entropy_fwd_kernel, dict(SPLIT=False, BLOCK=1024)),
                      (kernels.entropy_bwd_kernel, dict(HAS_GRAD_ENTROPY=True, HAS_GRAD_LOGP=flags["HAS_LABELS"],
                                                        BLOCK=1024))):
        _compile(fn, _signature("*bf16", out_dtype="*bf16"), dict(flags, **extra), 90, 4)


# ---- selective row ops (top-p, min-p) and token_stats ----------------------------------------------

SELECTIVE_FLAGS = ("HAS_TEMP", "HAS_MASK")


def _selective_signature(x_dtype, out_dtype="*fp32"):
    return dict(
        _signature(x_dtype, out_dtype), n_rows="i32", top_p="fp32", min_p="fp32", log_v="fp32", ws_ptr="*i32",
        cut_e_ptr="*fp32", cut_index_ptr="*i32", lse_ptr="*fp32",
        max_logp_ptr="*fp32", collision_ptr="*fp32", varentropy_ptr="*fp32", self_certainty_ptr="*fp32",
        entropy_drift_ptr="*fp32",
    )


def _search_configs():
    """(sizes, num_warps) of the top-p search at a large and a one-block vocabulary."""
    for vocab in (151936, 111):
        sizes = launch_selective._search_sizes(vocab)
        yield sizes, launch._num_warps(sizes["BLOCK"])


@pytest.mark.parametrize("arch", ARCHS)
def test_top_p_fwd_and_mask_compile(arch):
    flags = dict.fromkeys(SELECTIVE_FLAGS, True)
    for sizes, warps in _search_configs():
        _compile(top_p.top_p_entropy_fwd_kernel, _selective_signature("*bf16"), dict(flags, **sizes), arch, warps)
        for inclusive in (False, True):
            _compile(top_p.top_p_mask_kernel, _selective_signature("*bf16", out_dtype="*i8"),
                     dict(flags, INCLUSIVE=inclusive, **sizes), arch, warps)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("x_dtype", ("*bf16", "*fp16", "*fp32"))
def test_selective_bwd_compiles(arch, x_dtype):
    block = launch._MAX_BLOCK
    flags = dict.fromkeys(SELECTIVE_FLAGS, True)
    sig = _selective_signature(x_dtype, out_dtype=x_dtype)
    warps = launch._num_warps(block)
    _compile(top_p.top_p_entropy_bwd_kernel, sig, dict(flags, HAS_GRAD=True, BLOCK=block), arch, warps)
    _compile(min_p.min_p_logprobs_bwd_kernel, sig, dict(flags, BLOCK=block), arch, warps)


@pytest.mark.parametrize("arch", ARCHS)
def test_min_p_fwd_and_token_stats_compile(arch):
    block = launch_selective._row_block(151936)
    flags = dict.fromkeys(SELECTIVE_FLAGS, True)
    sig = _selective_signature("*bf16")
    _compile(min_p.min_p_logprobs_fwd_kernel, sig, dict(flags, BLOCK=block), arch, launch._num_warps(block))
    block = launch_selective._stats_block(151936)
    for labels in (False, True):
        _compile(token_stats.token_stats_kernel, sig, dict(flags, HAS_LABELS=labels, BLOCK=block), arch,
                 launch._num_warps(block))


@pytest.mark.parametrize("flags", [dict(zip(SELECTIVE_FLAGS, v)) for v in itertools.product((False, True), repeat=2)],
                         ids=lambda f: "-".join(k for k, v in f.items() if v) or "none")
def test_every_selective_flag_combination_compiles(flags):
    sizes = launch_selective._search_sizes(1000)
    sig = _selective_signature("*fp16", out_dtype="*fp16")
    _compile(top_p.top_p_entropy_fwd_kernel, sig, dict(flags, **sizes), 90, 4)
    _compile(top_p.top_p_entropy_bwd_kernel, sig, dict(flags, HAS_GRAD=False, BLOCK=1024), 90, 4)
    _compile(min_p.min_p_logprobs_fwd_kernel, sig, dict(flags, BLOCK=1024), 90, 4)
    _compile(token_stats.token_stats_kernel, sig, dict(flags, HAS_LABELS=False, BLOCK=1024), 90, 4)
