"""The argument checks of `_C_cuda` itself (csrc/cuda_bindings.cpp and the launchers), below the
Python entry that normally keeps bad arguments away from them: each refusal names the function and
launches nothing. On a GPU with the real module; without one, on the CUDA emulator (tests/cuda_emu)."""
import pytest
import torch

from conftest import skip_unless_available
from entropy_ops import _native
from entropy_ops.backends.native_args import cuda_launch, ptr, row_args
from gpu_common import DEVICE, pytestmark  # noqa: F401 (pytestmark: the gpu marks)


@pytest.fixture
def C():
    skip_unless_available("cuda")
    return _native.cuda_module()[0]


def _rows(x, labels=None):
    return list(row_args(x, labels, None, 1.0, -100, None))


def _outs(n, k):
    return [torch.full((n,), 7.0, device=DEVICE) for _ in range(k)]


def test_dtype_codes_other_than_0_to_2_are_refused(C):
    x = torch.randn(3, 100, device=DEVICE)
    outs = _outs(3, 3)
    args = _rows(x)
    args[1] = 3  # float64: the torch backend's
    with pytest.raises(ValueError, match=r"_C_cuda\.entropy_fwd_cuda: dtype code must be 0\.\.2"):
        C.entropy_fwd_cuda(*args, *(o.data_ptr() for o in outs), 0, 0, 0, *cuda_launch(x))
    with pytest.raises(ValueError, match=r"_C_cuda\.entropy_bwd_cuda: dtype code must be 0\.\.2"):
        C.entropy_bwd_cuda(*args, *(o.data_ptr() for o in outs), 0, 0, x.data_ptr(), 100, *cuda_launch(x))
    assert all((o == 7).all() for o in outs), "nothing may be written"
    with pytest.raises(ValueError, match=r"_C_cuda\.token_stats_cuda: dtype code must be 0\.\.2"):
        C.token_stats_cuda(*args, *(o.data_ptr() for o in _outs(3, 7)[:2]), 0,
                           *(o.data_ptr() for o in _outs(3, 5)), *cuda_launch(x))


def test_a_short_workspace_is_refused(C):
    x = torch.randn(2, 200_000, device=DEVICE)  # split rows: a workspace of partial states
    need = C.entropy_fwd_workspace(2, 200_000)
    assert need > 0
    row_max, log_norm, h = _outs(2, 3)
    outs = (row_max.data_ptr(), log_norm.data_ptr(), h.data_ptr(), 0)
    workspace = torch.empty(need, device=DEVICE)
    with pytest.raises(ValueError, match=f"entropy_fwd_cuda: workspace holds {need - 1} floats, needs {need}"):
        C.entropy_fwd_cuda(*_rows(x), *outs, workspace.data_ptr(), need - 1, *cuda_launch(x))
    assert (h == 7).all(), "nothing may be written"
    C.entropy_fwd_cuda(*_rows(x), *outs, workspace.data_ptr(), need, *cuda_launch(x))
    torch.testing.assert_close(h.cpu(), torch.special.entr(torch.softmax(x.cpu().double(), -1)).sum(-1).float())


def test_top_p_refuses_vocabularies_past_its_integer_sums(C):
    vocab = 1 << 23
    x = torch.zeros(1, vocab, dtype=torch.float16, device=DEVICE)
    outs = _outs(1, 4)
    cut_index = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    rows = [x.data_ptr(), 2, 1, vocab, vocab, 0, 1.0, 0]
    with pytest.raises(ValueError, match=f"top_p_entropy_fwd_cuda: vocab must be below {vocab}, got {vocab}"):
        C.top_p_entropy_fwd_cuda(*rows, 0.8, outs[0].data_ptr(), outs[1].data_ptr(), outs[2].data_ptr(),
                                 cut_index.data_ptr(), outs[3].data_ptr(), *cuda_launch(x))
    mask_out = torch.zeros(1, vocab, dtype=torch.bool, device=DEVICE)
    with pytest.raises(ValueError, match="top_p_mask_cuda: vocab must be below"):
        C.top_p_mask_cuda(*rows, 0.8, True, mask_out.data_ptr(), vocab, *cuda_launch(x))


def test_launcher_argument_errors_name_the_function(C):
    """min_p without labels, token_stats with labels but no logp output: the launchers' own
    cudaErrorInvalidValue, raised as a RuntimeError that names the function."""
    x = torch.randn(3, 50, device=DEVICE)
    logp, row_max, log_norm = _outs(3, 3)
    with pytest.raises(RuntimeError, match=r"_C_cuda\.min_p_logprobs_fwd_cuda: cudaErrorInvalidValue"):
        C.min_p_logprobs_fwd_cuda(*_rows(x), 0.1, logp.data_ptr(), row_max.data_ptr(), log_norm.data_ptr(),
                                  *cuda_launch(x))
    labels = torch.zeros(3, dtype=torch.int64, device=DEVICE)
    stats = _outs(3, 8)
    stats[2] = None  # logp
    with pytest.raises(RuntimeError, match=r"_C_cuda\.token_stats_cuda: cudaErrorInvalidValue"):
        C.token_stats_cuda(*_rows(x, labels), *(ptr(o) for o in stats), *cuda_launch(x))
    assert all((o == 7).all() for o in stats if o is not None), "nothing may be written"
