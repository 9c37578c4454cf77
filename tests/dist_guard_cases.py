"""Per-rank worker of tests/test_dist_vocab_guards.py: the vocab-parallel ops when ranks disagree or
an input is unusual (run inside the spawned ranks of ``dist_common.run_world``; the parent rebuilds
the same inputs from the same seeds and checks the results)."""
import torch
import torch.distributed as dist

import entropy_ops as eo
from entropy_ops.parallel import vocab_linear

V = 12


def _full(seed=0, n=4, dtype=torch.float32):
    return torch.randn(n, V, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _shard(x, rank, world):
    width = V // world
    return x[..., rank * width:(rank + 1) * width].contiguous()


def _message(call):
    try:
        call()
        return None
    except (ValueError, RuntimeError) as e:
        return str(e)


def _disagreements(rank, world, group):
    """The error of each call whose arguments differ between the ranks (None: it did not raise)."""
    x = _shard(_full(), rank, world)
    y = torch.tensor([0, 5, 11, 3])
    first = rank == 0
    hidden = torch.randn(4, 4 if first else 5)
    empty = torch.randn(4, 0 if rank == 1 else V)
    start = 0 if rank == 0 else V * max(rank - 1, 1)  # [0, V), [V, V) (rank 1), [V, 2V), ...
    calls = {
        "rows": lambda: eo.entropy(x[:3] if first else x, process_group=group),
        "dtype": lambda: eo.entropy(x.bfloat16() if first else x, process_group=group),
        "temperature": lambda: eo.logprobs_and_entropy(x, y, 1.0 if first else 2.0, process_group=group),
        "top_p": lambda: eo.top_p_entropy(x, 0.5 if first else 0.8, process_group=group),
        "op": lambda: eo.entropy(x, process_group=group) if first else eo.token_stats(x, process_group=group),
        "mask": lambda: eo.entropy(x, mask=torch.ones(4, dtype=torch.bool) if first else None, process_group=group),
        "hidden_size": lambda: eo.linear_logprobs_and_entropy(
            hidden, torch.randn(V // world, hidden.shape[1]), y, process_group=group),
        # A rank whose shard is empty (V_r = 0, a tiling with vocab_start): every rank raises.
        "empty_shard": lambda: eo.entropy(empty, process_group=group, vocab_start=start),
        "empty_shard_linear": lambda: eo.linear_logprobs_and_entropy(
            hidden[:, :4], torch.randn(empty.shape[1], 4), y, process_group=group, vocab_start=start),
    }
    out = {name: _message(call) for name, call in calls.items()}
    # The group is still usable afterwards: every rank raised at the same point.
    out["after"] = eo.entropy(x, process_group=group)
    return out


def _double_backward(rank, world, group):
    """The message of differentiating each op's gradient again (None: it did not raise)."""
    x0 = _shard(_full(1, dtype=torch.float64), rank, world)
    y = torch.tensor([0, 5, 11, 3])
    hidden = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    weight = _shard(torch.randn(V, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).t(),
                    rank, world).t()

    def twice(fn, *leaves):
        leaves = [v.clone().requires_grad_(True) for v in leaves]
        grads = torch.autograd.grad(fn(*leaves).sum(), leaves, create_graph=True)
        return torch.autograd.grad(sum((g * g).sum() for g in grads), leaves)

    ops = {
        "entropy": lambda: twice(lambda v: eo.entropy(v, process_group=group), x0),
        "logprobs_and_entropy": lambda: twice(lambda v: eo.logprobs_and_entropy(v, y, process_group=group)[0], x0),
        "top_p_entropy": lambda: twice(lambda v: eo.top_p_entropy(v, 0.9, process_group=group), x0),
        "min_p_logprobs": lambda: twice(lambda v: eo.min_p_logprobs(v, y, 0.0, process_group=group), x0),
        "linear": lambda: twice(lambda h, w: eo.linear_logprobs_and_entropy(h, w, y, process_group=group)[1],
                                hidden, weight),
    }
    return {name: _message(call) for name, call in ops.items()}


def _frozen_head(rank, world, group):
    """The linear head's backward with a trainable and a frozen weight (and bias): grad_hidden of
    each, and how many grad_weight products ran."""
    gen = torch.Generator().manual_seed(4)
    hidden = torch.randn(6, 8, generator=gen)
    weight = _shard(torch.randn(V, 8, generator=gen).t(), rank, world).t().contiguous()
    bias = _shard(torch.randn(V, generator=gen), rank, world)
    y = torch.tensor([0, 5, 11, 3, 7, 2])
    calls = []
    real_add_mm = vocab_linear.add_mm

    def counting_add_mm(*args):
        calls.append(1)
        return real_add_mm(*args)

    vocab_linear.add_mm = counting_add_mm
    out = {}
    try:
        for frozen in (False, True):
            h = hidden.clone().requires_grad_(True)
            w, b = weight.clone().requires_grad_(not frozen), bias.clone().requires_grad_(not frozen)
            logp, ent = eo.linear_logprobs_and_entropy(h, w, y, b, process_group=group)
            calls.clear()
            (logp.sum() + ent.sum()).backward()
            out[frozen] = (h.grad, w.grad, b.grad, len(calls))
    finally:
        vocab_linear.add_mm = real_add_mm
    return out


def _finfo_shard_stats(rank, world, group):
    """token_stats of float64 rows where rank 0's whole shard is finfo.min, at T < 1."""
    x = _full(5, dtype=torch.float64)
    x[:2, : V // world] = torch.finfo(torch.float64).min
    return eo.token_stats(_shard(x, rank, world), _full(6).argmax(-1), 0.5, process_group=group)


def _compiled_top_p(rank, world, group):
    """top_p_entropy's gradient eagerly and under torch.compile (inductor): the nucleus that the
    backward recomputes must be the forward's."""
    x = _shard(_full(7, n=64) * 3, rank, world)
    fn = lambda v: eo.top_p_entropy(v, 0.8, 0.9, process_group=group).sum()  # noqa: E731
    grads = {}
    for name, f in (("eager", fn), ("compiled", torch.compile(fn))):
        v = x.clone().requires_grad_(True)
        grads[name] = torch.autograd.grad(f(v), v)[0]
    return grads


def _guard_worker(rank, world):
    group = dist.group.WORLD
    return {"disagree": _disagreements(rank, world, group), "double": _double_backward(rank, world, group),
            "frozen": _frozen_head(rank, world, group), "finfo_stats": _finfo_shard_stats(rank, world, group),
            "compiled_top_p": _compiled_top_p(rank, world, group)}
