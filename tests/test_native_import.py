"""`entropy_ops._C` is always built and exposes the ABI of csrc/README.md (names only here)."""
import pytest

C_FUNCTIONS = [
    "entropy_fwd_cpu",
    "entropy_bwd_cpu",
    "set_isa",
    "get_isa",
    "supported_isas",
    "bf16_to_float",
    "half_to_float",
    "float_to_bf16",
    "float_to_half",
]


def test_cpu_module_imports():
    import entropy_ops._C  # noqa: F401


@pytest.mark.parametrize("name", C_FUNCTIONS)
def test_cpu_module_exposes(name):
    from entropy_ops import _C

    assert callable(getattr(_C, name, None)), f"entropy_ops._C.{name} is missing (csrc/README.md)"
