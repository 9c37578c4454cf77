"""Inputs and per-rank workers of tests/test_dist_vocab.py (vocab-parallel row ops, SPEC §3.3).

The workers run inside the spawned ranks of ``dist_common.run_world`` (so they live at module level
in a module the children can import); the parent rebuilds the same inputs from the same seeds and
checks the results.
"""
import torch
import torch.distributed as dist

import entropy_ops as eo
from conftest import FINITE_KINDS, NAN_KINDS, NORMAL, assert_same_bits, make_labels, make_rows
from selective_common import tied_rows, with_clear_cuts

N, V = 14, 96
UNEVEN = {1: [V], 2: [37, 59], 4: [10, 31, 24, 31]}
BACKENDS = ("cpu", "torch")


def _sizes(world, uneven):
    return UNEVEN[world] if uneven else [V // world] * world


def _inputs(dtype, seed):
    """Full-row inputs shared by the ranks and the parent (same seeds, same tensors)."""
    x, kinds = make_rows(N, V, dtype, kinds=FINITE_KINDS + NAN_KINDS, seed=seed)
    x[kinds.index("shift_pos"), : V // 2] = float("-inf")  # shards holding only -inf in a shifted row
    masked = [3, 7]
    # Shards holding only finfo.min (masked_fill's idiom) in a live row: at T < 1 their mass
    # underflows next to the global max ((finfo.min - M) / T overflows float32).
    finfo_row = next(i for i, k in enumerate(kinds) if k == NORMAL and i not in masked)
    x[finfo_row, V // 2:] = torch.finfo(dtype).min
    gen = torch.Generator().manual_seed(seed)
    temperature = 0.5 + torch.rand(N, generator=gen)
    mask = torch.ones(N, dtype=torch.bool)
    mask[masked] = False
    y = make_labels(N, V, seed=seed, n_ignored=2)
    y_last = torch.randint(V - 10, V, (N,), generator=gen)  # all in the last shard
    weights = (torch.randn(N, generator=gen), torch.randn(N, generator=gen))
    # Entropy weights that are 0 or negligible (1e-12) next to the logp ones in some rows: the
    # backward's fold of g_logp into the entropy term takes its other branch there.
    mixed = torch.where(torch.arange(N) % 3 == 0, 0, torch.where(torch.arange(N) % 3 == 1, 1e-12, 1.0))
    weights = weights + (weights[1] * mixed,)
    bad = torch.tensor([k in NAN_KINDS for k in kinds])
    return dict(x=x, temperature=temperature, mask=mask, y=y, y_last=y_last, weights=weights, bad=bad,
                finfo_row=finfo_row)


def _local(x, sizes, rank):
    start = sum(sizes[:rank])
    return x[..., start:start + sizes[rank]].contiguous(), start


def _grad(fn, x, weights):
    """``(outputs, gradient of sum_k weights[k] * outputs[k])``; a -inf output (a label filtered by
    min-p) gets weight 0, as a trainer masks it."""
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    out = out if isinstance(out, tuple) else (out,)
    loss = sum((torch.where(torch.isneginf(o), 0, w) * torch.where(torch.isneginf(o), 0, o)).sum()
               for w, o in zip(weights, out) if w is not None)
    (g,) = torch.autograd.grad(loss, x)
    return [o.detach() for o in out], g


def _row_cases():
    """``(seed, dtype, uneven, temperature kind)`` of the entropy-family cases."""
    cases = [(dtype, uneven, temperature) for dtype in (torch.float32, torch.bfloat16)
             for uneven in (False, True) for temperature in ("scalar", "per_row")]
    return [(seed, *case) for seed, case in enumerate(cases)]


def _temperature(kind, inp):
    return 0.7 if kind == "scalar" else inp["temperature"]


def _entropy_family(rank, world, group, backends=BACKENDS):
    """Forward values and gradient shards of entropy / logprobs_and_entropy / token_stats."""
    out = {}
    for backend in backends:
        for seed, dtype, uneven, temp_kind in _row_cases():
            inp = _inputs(dtype, seed)
            sizes = _sizes(world, uneven)
            xl, start = _local(inp["x"], sizes, rank)
            t = _temperature(temp_kind, inp)
            kw = dict(process_group=group, vocab_start=start if uneven else None, mask=inp["mask"])
            w_h, w_l, w_mixed = inp["weights"]
            with eo.use_backend(backend):
                res = {"entropy": _grad(lambda v: eo.entropy(v, t, **kw), xl, (w_h,))}
                for labels in ("y", "y_last"):
                    y = inp[labels]
                    fn = lambda v: eo.logprobs_and_entropy(v, y, t, **kw)  # noqa: E731
                    res[f"lpe_{labels}"] = _grad(fn, xl, (w_l, w_h))
                    res[f"lpe_{labels}_logp_only"] = _grad(fn, xl, (w_l, None))
                    res[f"lpe_{labels}_mixed"] = _grad(fn, xl, (w_l, w_mixed))
                    res[f"stats_{labels}"] = list(eo.token_stats(xl, y, t, **kw))
            out[(backend, seed)] = res
    return out


def _selective(rank, world, group):
    """min_p_logprobs, top_p_entropy and top_p_mask on rows clear of the cut and on exact ties."""
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        for uneven in (False, True):
            inp = _inputs(dtype, seed=100)
            x = with_clear_cuts(inp["x"].float(), ["normal"] * N, seed=3).to(dtype)
            sizes = _sizes(world, uneven)
            xl, start = _local(x, sizes, rank)
            kw = dict(process_group=group, vocab_start=start if uneven else None, mask=inp["mask"])
            w = inp["weights"][:1]
            res = {}
            for top_p in (0.5, 0.8, 1.0):
                res[f"top_p_{top_p}"] = _grad(lambda v: eo.top_p_entropy(v, top_p, 0.9, **kw), xl, w)
                res[f"mask_{top_p}"] = [eo.top_p_mask(xl, top_p, 0.9, inclusive, **kw) for inclusive in (True, False)]
            for min_p in (0.0, 0.05):
                res[f"min_p_{min_p}"] = _grad(lambda v: eo.min_p_logprobs(v, inp["y"], min_p, 0.9, **kw), xl, w)
            tied, _ = tied_rows(V, dtype, seed=5)
            tl, tstart = _local(tied, sizes, rank)
            tkw = dict(process_group=group, vocab_start=tstart if uneven else None)
            res["tied"] = [eo.top_p_mask(tl, 0.3, 1.0, inclusive, **tkw) for inclusive in (True, False)]
            res["tied_h"] = eo.top_p_entropy(tl, 0.3, **tkw)
            out[(dtype, uneven)] = res
    return out


def _linear_cases():
    """``(dtype, uneven, labels, logit_scale, softcap)`` of the linear_logprobs_and_entropy cases."""
    return [(dtype, uneven, labels, scale, softcap) for dtype in (torch.float32, torch.bfloat16)
            for uneven in (False, True) for labels in ("y", "y_last", "k3")
            for scale, softcap in ((1.0, None), (1.3, 5.0))]


def _linear_inputs(dtype):
    gen = torch.Generator().manual_seed(7)
    inp = _inputs(dtype, seed=7)
    hidden = torch.randn(N, 16, generator=gen).to(dtype)
    weight = (torch.randn(V, 16, generator=gen) * 0.7).to(dtype)
    bias = torch.randn(V, generator=gen).to(dtype)
    # K = 3 candidate labels per row: columns 0 and 2 equal (a duplicate), ignored entries from y.
    k3 = torch.stack([inp["y"], inp["y_last"], inp["y"]], dim=-1)
    return dict(inp, hidden=hidden, weight=weight, bias=bias, k3=k3)


def _linear_grads(fn, hidden, weight, bias, weights):
    """``(logp, H, grad_hidden, grad_weight, grad_bias)`` of ``sum w_logp logp + w_H H``."""
    leaves = [v.detach().clone().requires_grad_(True) for v in (hidden, weight, bias)]
    logp, h = fn(*leaves)
    w_logp = weights[0].to(logp.dtype)
    if logp.dim() == 2:  # per-candidate weights, different on the duplicated columns 0 and 2
        w_logp = w_logp[:, None] * torch.tensor([1.0, -0.5, 2.0], dtype=logp.dtype)
    ((w_logp * logp).sum() + (weights[1].to(h.dtype) * h).sum()).backward()
    return [logp.detach(), h.detach()] + [v.grad for v in leaves]


def _linear(rank, world, group):
    out = {}
    for case in _linear_cases():
        dtype, uneven, labels, scale, softcap = case
        inp = _linear_inputs(dtype)
        sizes = _sizes(world, uneven)
        start = sum(sizes[:rank])
        shard = slice(start, start + sizes[rank])
        kw = dict(mask=inp["mask"], logit_scale=scale, softcap=softcap, process_group=group,
                  vocab_start=start if uneven else None)
        fn = lambda h, w, b: eo.linear_logprobs_and_entropy(h, w, inp[labels], b, inp["temperature"], **kw)  # noqa: E731
        out[case] = _linear_grads(fn, inp["hidden"], inp["weight"][shard].contiguous(),
                                  inp["bias"][shard].contiguous(), inp["weights"][1::-1])
    return out


def _errors(rank, world, group):
    """The message of each bad call (every rank raises the same error: no hang)."""
    x = torch.randn(3, [5, 7, 6, 6][rank] if world == 4 else 5 + 2 * rank)
    messages = {}
    calls = {
        "uneven_without_start": lambda: eo.entropy(x, process_group=group),
        "not_a_tiling": lambda: eo.entropy(x, process_group=group, vocab_start=rank * 4),
        "inplace": lambda: eo.entropy(x, process_group=group, inplace_backward=True),
        "label_out_of_range": lambda: eo.logprobs_and_entropy(
            torch.randn(3, 4), torch.tensor([0, 4 * world, 1]), process_group=group),
    }
    for name, call in calls.items():
        try:
            call()
            messages[name] = None
        except (ValueError, TypeError) as e:
            messages[name] = str(e)
    return messages


def _layout_changes(rank, world, group):
    """Rank 0 keeps its shard (V_r = 5 at 0) while the others change theirs between calls: every
    rank must still take part in the layout check (no deadlock). Returns the entropy of the second,
    uneven layout (against the full row in the parent) and the error of a third, invalid one."""
    torch.manual_seed(3)
    full_a, full_b = torch.randn(4, 5 * world), torch.randn(4, 5 + 7 * (world - 1))
    sizes_b = [5] + [7] * (world - 1)
    start_b = sum(sizes_b[:rank])
    eo.entropy(full_a[:, 5 * rank:5 * rank + 5], process_group=group, vocab_start=5 * rank)
    h_b = eo.entropy(full_b[:, start_b:start_b + sizes_b[rank]], process_group=group, vocab_start=start_b)
    eo.entropy(full_a[:, 5 * rank:5 * rank + 5], process_group=group)  # even, no vocab_start: cached on every rank
    try:
        eo.entropy(full_b[:, start_b:start_b + sizes_b[rank]], process_group=group)  # uneven, no vocab_start
        error = None
    except ValueError as e:
        error = str(e)
    return {"full_b": full_b, "h_b": h_b, "error": error}


def _empty_batches(rank, world, group):
    """Every vocab-parallel op, forward and backward, on N = 0 rows (leading shapes [0] and [2, 0],
    [N] and [N, K] labels): the output shapes, and the gradient shapes (None: the op raised)."""
    out = {}
    for backend in BACKENDS:
        with eo.use_backend(backend):
            for lead in ((0,), (2, 0)):
                x = torch.randn(*lead, 5, requires_grad=True)
                y = torch.zeros(lead, dtype=torch.long)
                h = torch.randn(*lead, 4, requires_grad=True)
                w = torch.randn(5, 4, requires_grad=True)
                calls = {
                    "entropy": lambda: (eo.entropy(x, process_group=group),),
                    "logprobs_and_entropy": lambda: eo.logprobs_and_entropy(x, y, process_group=group),
                    "top_p_entropy": lambda: (eo.top_p_entropy(x, 0.5, process_group=group),),
                    "min_p_logprobs": lambda: (eo.min_p_logprobs(x, y, 0.1, process_group=group),),
                    "linear": lambda: eo.linear_logprobs_and_entropy(h, w, y, process_group=group),
                    "linear_k": lambda: eo.linear_logprobs_and_entropy(h, w, y[..., None].expand(*lead, 2),
                                                                       process_group=group),
                }
                for name, call in calls.items():
                    try:
                        outputs = call()
                        leaves = (h, w) if name.startswith("linear") else (x,)
                        grads = torch.autograd.grad(sum(o.sum() for o in outputs), leaves, allow_unused=True)
                        out[backend, lead, name] = ([tuple(o.shape) for o in outputs],
                                                    [None if g is None else tuple(g.shape) for g in grads])
                    except RuntimeError as e:
                        out[backend, lead, name] = str(e)
    return out


def bad_row_inputs(world):
    """``(x, y, w_logp, w_h)``: rows that are bad on some ranks only (SPEC §2: NaN in the row's
    gradient wherever its upstream gradient is nonzero, on every shard): all -inf; rank 0's shard
    all -inf with NaN on the last rank; NaN on rank 0 only; +inf on the last rank; a NaN row with a
    zero upstream (its gradient stays 0); a good row; a NaN row whose label is ignored and whose
    entropy has a zero upstream (0 too)."""
    v = 12
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(7, v, generator=gen)
    last = v - v // world
    x[0] = float("-inf")
    x[1, :v // world] = float("-inf")
    x[1, last + 1] = float("nan")
    x[2, 1] = float("nan")
    x[3, last] = float("inf")
    x[4, 2] = float("nan")
    x[6, 0] = float("nan")
    y = torch.tensor([1, v - 1, v - 1, 0, 2, 3, -100])
    w_logp = torch.tensor([1.0, 1, 1, 1, 0, 1, 1])
    w_h = torch.tensor([1.0, 1, 1, 1, 0, 1, 0])
    return x, y, w_logp, w_h


def bad_row_grads(x, y, w_logp, w_h, group=None):
    """The gradients of the row ops on ``x`` (this rank's shard with ``group``), by backend and op."""
    kw = {} if group is None else dict(process_group=group)
    calls = {"entropy": (lambda v: eo.entropy(v, **kw), (w_h,)),
             "logprobs_and_entropy": (lambda v: eo.logprobs_and_entropy(v, y, **kw), (w_logp, w_h)),
             "logp_only": (lambda v: eo.logprobs_and_entropy(v, y, **kw), (w_logp, None)),
             "min_p_logprobs": (lambda v: eo.min_p_logprobs(v, y, 0.1, **kw), (w_logp,)),
             "top_p_entropy": (lambda v: eo.top_p_entropy(v, 0.9, **kw), (w_h,))}
    out = {}
    for backend in BACKENDS:
        with eo.use_backend(backend):
            for name, (fn, weights) in calls.items():
                out[backend, name] = _grad(fn, x, weights)[1]
    return out


def _bad_rows(rank, world, group):
    x, y, w_logp, w_h = bad_row_inputs(world)
    xl, _ = _local(x, [x.shape[-1] // world] * world, rank)
    return bad_row_grads(xl, y, w_logp, w_h, group)


def _worker(rank, world):
    from dist_vocab_grid import grid_layouts  # it imports this module
    torch.manual_seed(0)
    results = {"layout": _layout_changes(rank, world, dist.group.WORLD),
               "empty": _empty_batches(rank, world, dist.group.WORLD),
               "entropy": _entropy_family(rank, world, dist.group.WORLD),
               "selective": _selective(rank, world, dist.group.WORLD),
               "errors": _errors(rank, world, dist.group.WORLD),
               "linear": _linear(rank, world, dist.group.WORLD),
               "grid": grid_layouts(rank, world, dist.group.WORLD),
               "bad_rows": _bad_rows(rank, world, dist.group.WORLD)}
    # A group of one rank (every rank must take part in creating each group): the op on the full
    # row through the distributed path, run by rank 0 only.
    solo = [dist.new_group([r]) for r in range(world)][rank]
    if rank == 0:
        results["solo"] = {"entropy": _entropy_family(0, 1, solo), "selective": _selective(0, 1, solo)}
    return results


def _triton_worker(rank, world):
    return _entropy_family(rank, world, dist.group.WORLD, ("triton",))


def _emulated_cuda_worker(rank, world):
    """The cuda backend's kernels on the CUDA emulator (the children inherit its environment)."""
    with eo.use_backend("cuda"):
        selective = _selective(rank, world, dist.group.WORLD)
        linear = _linear(rank, world, dist.group.WORLD)
    return {"entropy": _entropy_family(rank, world, dist.group.WORLD, ("cuda",)), "selective": selective,
            "linear": linear}


def _nccl_worker(rank, world):
    """A group of one rank on NCCL (bootstrapped by the gloo world): each GPU backend with and without
    the group, on CUDA tensors; results returned on CPU."""
    torch.cuda.set_device(0)
    group = dist.new_group([0], backend="nccl")
    out = {}
    for backend in ("triton", "cuda"):
        if not eo.available_backends()[backend][0]:
            continue
        for seed, dtype, _, temp_kind in _row_cases():
            inp = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in _inputs(dtype, seed).items()}
            t = _temperature(temp_kind, inp)
            w_h, w_l, _ = (w.cuda() for w in inp["weights"])
            res = {}
            with eo.use_backend(backend):
                for name, kw in (("group", dict(process_group=group)), ("single", {})):
                    fn = lambda v: eo.logprobs_and_entropy(v, inp["y"], t, mask=inp["mask"], **kw)  # noqa: E731
                    outs, grad = _grad(fn, inp["x"], (w_l, w_h))
                    stats = eo.token_stats(inp["x"], inp["y"], t, mask=inp["mask"], **kw)
                    res[name] = [o.cpu() for o in outs] + [grad.cpu()] + [s.cpu() for s in stats]
            out[(backend, seed)] = res
    return out


def _sync_free(rank, world):
    """Every vocab-parallel op, forward and backward, on each CPU backend: a first call (the layout
    check, which reads the gathered shard sizes on the host once per group on a GPU), then the same
    call under the host-sync detector must give the same bits."""
    from host_sync import gpu_code_paths, no_host_sync

    inp = _inputs(torch.float32, 0)
    x, start = _local(inp["x"], _sizes(world, True), rank)
    lin = _linear_inputs(torch.float32)
    shard = slice(start, start + x.shape[-1])
    kw = dict(process_group=dist.group.WORLD, vocab_start=start)
    t, mask, y = inp["temperature"], inp["mask"], inp["y"]
    calls = {
        "logprobs_and_entropy": lambda: _grad(lambda v: eo.logprobs_and_entropy(v, y, t, mask=mask, **kw), x,
                                              inp["weights"][:2]),
        "entropy": lambda: _grad(lambda v: eo.entropy(v, 0.7, mask=mask, **kw), x, inp["weights"][:1]),
        "top_p_entropy": lambda: _grad(lambda v: eo.top_p_entropy(v, 0.8, t, mask=mask, **kw), x, inp["weights"][:1]),
        "min_p_logprobs": lambda: _grad(lambda v: eo.min_p_logprobs(v, y, 0.05, t, mask=mask, **kw), x,
                                        inp["weights"][:1]),
        "top_p_mask": lambda: (eo.top_p_mask(x, 0.8, t, mask=mask, **kw),),
        "token_stats": lambda: tuple(eo.token_stats(x, y, t, mask=mask, **kw)),
        "linear": lambda: _linear_grads(
            lambda h, w, b: eo.linear_logprobs_and_entropy(h, w, lin["k3"], b, t, mask=mask, softcap=5.0, **kw),
            lin["hidden"], lin["weight"][shard].contiguous(), lin["bias"][shard].contiguous(), inp["weights"][:2]),
    }
    for backend in BACKENDS:
        with eo.use_backend(backend):
            for name, call in calls.items():
                with gpu_code_paths():
                    want = call()
                with no_host_sync():
                    got = call()
                for a, b in zip(_flatten(got), _flatten(want)):
                    assert_same_bits(a, b, f"{backend} {name}: under the host-sync detector vs outside")


def _flatten(out):
    for o in out:
        if isinstance(o, (tuple, list)):
            yield from _flatten(o)
        elif isinstance(o, torch.Tensor):
            yield o


def _sleeper(rank, world):
    """Rank 0 never finishes in time: the stand-in for a rank stuck in a collective."""
    import time
    time.sleep(120 if rank == 0 else 0)
