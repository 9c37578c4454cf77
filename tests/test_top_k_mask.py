"""The losses' selection step: ``backends/torch_select.top_k`` and the ``entropy_ops::top_k_mask``
custom op on the CPU backends, against a stable descending sort (ties to the lowest index, -0.0 equal
to +0.0), at every k from -1 to beyond the eligible count, with heavy ties, NaN in ineligible
entries, several chunks of the CPU selection, any thread count; and ``opcheck``."""
import pytest
import torch

TOP_K_BACKENDS = ["torch", "cpu"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64], ids=str)
def test_top_k_selection_matches_a_sort(dtype):
    from entropy_ops.backends.torch_select import top_k
    gen = torch.Generator().manual_seed(0)
    if dtype == torch.int64:
        scores = torch.randint(-50, 50, (7, 61), generator=gen)  # many ties
    else:
        scores = (torch.randn(7, 61, generator=gen) * 3).round().to(dtype)  # ties, and -0.0 / +0.0
        scores[0, :5] = -0.0
    eligible = torch.rand(7, 61, generator=gen) < 0.7
    n = int(eligible.sum())
    for k in (0, 1, 5, 100, n, n + 3):
        chosen = top_k(scores, eligible, torch.tensor(k))
        flat = [(-float(s), i) for i, (s, ok) in enumerate(zip(scores.reshape(-1).tolist(), eligible.reshape(-1).tolist())) if ok]
        expected = torch.zeros(scores.numel(), dtype=torch.bool)
        expected[[i for _, i in sorted(flat)[:k]]] = True
        assert torch.equal(chosen.reshape(-1), expected), k


def _top_k_by_sort(scores, eligible, k):
    """The ``k`` eligible entries of largest score by a stable descending sort: ties to the lowest
    index, and -0.0 == +0.0 (equal under the sort's comparisons)."""
    index = torch.arange(scores.numel())[eligible.reshape(-1)]
    order = torch.sort(scores.reshape(-1)[index], descending=True, stable=True).indices
    expected = torch.zeros(scores.numel(), dtype=torch.bool)
    expected[index[order[:max(k, 0)]]] = True
    return expected.view(scores.shape)


def _ranked_scores(shape, dtype, gen, spread):
    if dtype == torch.int64:
        return torch.randint(-spread, spread, shape, generator=gen)
    scores = (torch.randn(shape, generator=gen) * spread / 3).round().to(dtype)  # ties
    scores.view(-1)[:5] = -0.0
    return scores


@pytest.mark.parametrize("backend", TOP_K_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64], ids=str)
def test_top_k_mask_matches_a_sort(dtype, backend):
    from entropy_ops.ops.select import top_k_mask
    gen = torch.Generator().manual_seed(0)
    # A small batch, and 300k entries (several chunks of the CPU selection) with heavy ties.
    for shape, spread in (((7, 61), 50), ((600, 500), 20)):
        scores = _ranked_scores(shape, dtype, gen, spread)
        eligible = torch.rand(shape, generator=gen) < 0.7
        if dtype != torch.int64:
            scores[~eligible & (torch.rand(shape, generator=gen) < 0.5)] = float("nan")  # never read
        n = int(eligible.sum())
        for k in (-1, 0, 1, 5, 100, n // 2, n - 1, n, n + 3):
            chosen = top_k_mask(scores, eligible, torch.tensor(k), backend)
            assert chosen.shape == scores.shape and chosen.dtype == torch.bool
            assert torch.equal(chosen, _top_k_by_sort(scores, eligible, k)), (shape, k)


@pytest.mark.parametrize("backend", TOP_K_BACKENDS)
def test_top_k_mask_int64_extremes(backend):
    # -2**63 is the smallest score on every backend (its negation would overflow to itself).
    from entropy_ops.ops.select import top_k_mask
    scores = torch.tensor([5, -2**63, 2**63 - 1, -3, 0, 2**63 - 1, -2**63, -2**63 + 1])
    eligible = torch.ones(scores.shape, dtype=torch.bool)
    for k in range(scores.numel() + 2):
        assert torch.equal(top_k_mask(scores, eligible, torch.tensor(k), backend),
                           _top_k_by_sort(scores, eligible, k)), k


def test_top_k_mask_does_not_depend_on_the_thread_count():
    from entropy_ops.ops.select import top_k_mask
    gen = torch.Generator().manual_seed(1)
    scores = _ranked_scores((500_000,), torch.float32, gen, 9)
    eligible = torch.rand(500_000, generator=gen) < 0.5
    before = torch.get_num_threads()
    try:
        chosen = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            chosen.append(top_k_mask(scores, eligible, torch.tensor(123_457), "cpu"))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(chosen[0], c) for c in chosen[1:])
    assert torch.equal(chosen[0], _top_k_by_sort(scores, eligible, 123_457))


@pytest.mark.parametrize("backend", TOP_K_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64], ids=str)
def test_top_k_mask_opcheck(dtype, backend):
    gen = torch.Generator().manual_seed(2)
    scores = _ranked_scores((4, 33), dtype, gen, 10)
    eligible = torch.rand(4, 33, generator=gen) < 0.6
    for k in (torch.tensor(7), torch.tensor([0])):
        torch.library.opcheck(torch.ops.entropy_ops.top_k_mask.default, (scores, eligible, k, backend))
