"""Vocab-parallel shards whose leading dims do not collapse (a worker of tests/test_dist_vocab.py):
the ops read them on a grid of rows (``ops/_rows.py``), in place, with the bits of the packed rows."""
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import entropy_ops as eo
from dist_vocab_cases import BACKENDS, N, _inputs, _local, _sizes


def _grid_views(x):
    """The shard ``x [N, V_r]`` as ``[2, N / 2, V_r]`` views whose leading dims do not collapse, which
    the ops read on a grid of rows (``ops/_rows.py``): ``shifted`` is a trainer's ``logits[:, :-1]``
    of a NaN-filled buffer with padded rows (the NaN rows between are never read), ``transposed`` a
    ``[N / 2, 2, V_r]`` buffer seen as ``[2, N / 2, V_r]``."""
    n, v = x.shape
    seqs = x.view(2, n // 2, v)
    shifted = torch.full((2, n // 2 + 1, v + 3), float("nan"), dtype=x.dtype)
    shifted[:, :-1, :v] = seqs
    return {"shifted": shifted[:, :-1, :v], "transposed": seqs.transpose(0, 1).contiguous().transpose(0, 1)}


class _KernelInputs(TorchDispatchMode):
    """Records the storage of the first tensor of every ``entropy_ops`` kernel call."""
    def __init__(self):
        super().__init__()
        self.storages = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "entropy_ops" and isinstance(args[0], torch.Tensor):
            self.storages.append((func.name().split("::")[-1], args[0].untyped_storage().data_ptr()))
        return func(*args, **(kwargs or {}))


def _layout_ops(x, inp, kw):
    """The row ops on ``x`` (any leading shape of N rows) with grads, flattened to ``[N, ...]``; and
    the storages the kernels of the entropy family and token_stats read."""
    lead = x.shape[:-1]
    y, t, mask = inp["y"].view(lead), inp["temperature"].view(lead), inp["mask"].view(lead)
    w_h, w_l, _ = (w.view(lead) for w in inp["weights"])
    kw = dict(kw, mask=mask)

    def grad(fn, weights):
        leaf = x.detach().requires_grad_(True)  # a view of x's memory, as x lies (clone() would pack it)
        out = fn(leaf)
        out = out if isinstance(out, tuple) else (out,)
        loss = sum(torch.where(torch.isneginf(o), 0, w * o).sum() for w, o in zip(weights, out))
        return [*out, *torch.autograd.grad(loss, leaf)]

    kernels = _KernelInputs()
    with kernels:
        out = {"lpe": grad(lambda v: eo.logprobs_and_entropy(v, y, t, **kw), (w_l, w_h)),
               "entropy": grad(lambda v: eo.entropy(v, 0.7, **kw), (w_h,)),
               "stats": list(eo.token_stats(x, y, t, **kw))}
    out.update({"top_p": grad(lambda v: eo.top_p_entropy(v, 0.8, t, **kw), (w_h,)),
                "min_p": grad(lambda v: eo.min_p_logprobs(v, y, 0.05, t, **kw), (w_l,)),
                "mask": [eo.top_p_mask(x, 0.8, t, **kw)]})
    flat = {name: [o.detach().reshape(N, *o.shape[len(lead):]) for o in outs] for name, outs in out.items()}
    return flat, kernels.storages


def grid_layouts(rank, world, group):
    """Every row op on the shard in each layout of ``_grid_views`` and contiguous, per CPU backend:
    ``(outputs, storages the kernels read, the view's storage)`` per layout."""
    out = {}
    inp = _inputs(torch.bfloat16, seed=7)
    x, start = _local(inp["x"], _sizes(world, True), rank)
    kw = dict(process_group=group, vocab_start=start)
    for backend in BACKENDS:
        with eo.use_backend(backend):
            for name, view in {"contiguous": x, **_grid_views(x)}.items():
                outs, storages = _layout_ops(view, inp, kw)
                out[(backend, name)] = (outs, storages, view.untyped_storage().data_ptr())
    return out
