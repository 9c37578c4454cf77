"""The verl and TRL adapters (``entropy_ops.integrations``).

Two levels, said plainly:
- Always: every adapter function has the signature recorded from the real source (verl 0.9.1,
  TRL 1.16.0: parameter names, kinds and defaults), matches plain-torch formulas, and
  ``register``/``patch`` install it into modules shaped like the trainers' (stand-ins in
  ``sys.modules``); a missing trainer gives the clear ImportError.
- When verl / TRL are findable (``pip install --no-deps --target DIR verl trl`` and DIR on
  PYTHONPATH is enough: their heavy imports are not needed): the real functions, taken from the
  installed source file with their module-level imports replaced by stand-ins, are run on the same
  inputs and compared with the adapters, value and gradient, and their signatures with ours.
  Without them those tests skip, saying so.
"""
import ast
import importlib.util
import inspect
import os
import sys
import types
from typing import Any, Callable, Optional

import pytest
import torch

import entropy_ops.integrations.trl as eo_trl
import entropy_ops.integrations.verl as eo_verl

E = inspect.Parameter.empty
# Recorded from verl 0.9.1 (verl/utils/torch_functional.py, verl/trainer/ppo/core_algos.py) and
# TRL 1.16.0 (trl/trainer/utils.py): (name, default) per parameter, all positional-or-keyword.
POLICY_LOSS = [("old_log_prob", E), ("log_prob", E), ("advantages", E), ("response_mask", E),
               ("loss_agg_mode", "token-mean"), ("config", None), ("rollout_is_weights", None)]
RECORDED = {
    (eo_verl, "entropy_from_logits"): [("logits", E)],
    (eo_verl, "entropy_from_logits_with_chunking"): [("logits", E), ("chunk_size", 2048)],
    (eo_verl, "logprobs_from_logits"): [("logits", E), ("labels", E), ("inplace_backward", True)],
    (eo_verl, "agg_loss"): [("loss_mat", E), ("loss_mask", E), ("loss_agg_mode", E), ("dp_size", 1),
                            ("batch_num_tokens", None), ("global_batch_size", None), ("loss_scale_factor", None)],
    (eo_verl, "compute_policy_loss_clip_cov"): POLICY_LOSS,
    (eo_verl, "compute_policy_loss_kl_cov"): POLICY_LOSS,
    (eo_trl, "selective_log_softmax"): [("logits", E), ("index", E), ("temperature", 1.0), ("row_mask", None)],
    (eo_trl, "entropy_from_logits"): [("logits", E), ("chunk_size", 128)],
    (eo_trl, "selective_log_softmax_and_entropy"): [("logits", E), ("index", E), ("entropy_requires_grad", True),
                                                    ("temperature", 1.0), ("row_mask", None)],
}


def _params(fn):
    sig = inspect.signature(fn)
    assert all(p.kind == p.POSITIONAL_OR_KEYWORD for p in sig.parameters.values()), fn
    return [(p.name, p.default) for p in sig.parameters.values()]


@pytest.mark.parametrize("key", list(RECORDED), ids=lambda k: f"{k[0].__name__.split('.')[-1]}.{k[1]}")
def test_signature_matches_the_recorded_one(key):
    module, name = key
    assert _params(getattr(module, name)) == RECORDED[key]


# ---- the real functions, from the installed source ----------------------------------------------

class _Stub:
    """Stands in for a config class named in annotations (never instantiated)."""


def _real(package: str, relpath: str, names, namespace):
    """The functions ``names`` of ``package/relpath``, compiled from the installed source without
    their decorators (registries) in ``namespace``; skip when the package is not findable."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{package} is not installed here: checked against its recorded signatures only "
                    f"(pip install --no-deps --target DIR {package}, then PYTHONPATH=DIR)")
    path = os.path.join(list(spec.submodule_search_locations)[0], relpath)
    tree = ast.parse(open(path).read())
    nodes = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    for n in nodes:
        n.decorator_list = []
    assert sorted(n.name for n in nodes) == sorted(names), f"{path} no longer defines all of {names}"
    exec(compile(ast.Module(body=nodes, type_ignores=[]), path, "exec"), namespace)
    return types.SimpleNamespace(**{n: namespace[n] for n in names})


@pytest.fixture(scope="module")
def verl_f():
    ns = {"torch": torch, "F": torch.nn.functional, "os": os, "Optional": Optional,
          "FLAH_ATTN_CROSS_ENTROPY_LOSS_AVAILABLE": False, "NPU_CROSS_ENTROPY_LOSS_AVAILABLE": False}
    return _real("verl", "utils/torch_functional.py",
                 ["gather_from_labels", "logprobs_from_logits", "logprobs_from_logits_v2", "entropy_from_logits",
                  "entropy_from_logits_with_chunking", "masked_sum", "masked_mean"], ns)


@pytest.fixture(scope="module")
def verl_algos(verl_f):
    ns = {"torch": torch, "Optional": Optional, "Any": Any, "Callable": Callable, "verl_F": verl_f,
          "AlgoConfig": _Stub, "ActorConfig": _Stub, "DictConfig": _Stub}
    return _real("verl", "trainer/ppo/core_algos.py",
                 ["agg_loss", "compute_policy_loss_clip_cov", "compute_policy_loss_kl_cov"], ns)


@pytest.fixture(scope="module")
def trl_utils():
    ns = {"torch": torch, "F": torch.nn.functional, "is_triton_available": lambda: False}
    return _real("trl", "trainer/utils.py",
                 ["selective_log_softmax", "entropy_from_logits", "selective_log_softmax_and_entropy"], ns)


def test_real_verl_signatures_equal_ours(verl_f, verl_algos):
    for module, name in RECORDED:
        if module is eo_verl:
            real = getattr(verl_f, name, None) or getattr(verl_algos, name)
            assert _params(real) == _params(getattr(eo_verl, name)), name


def test_real_trl_signatures_equal_ours(trl_utils):
    for module, name in RECORDED:
        if module is eo_trl:
            assert _params(getattr(trl_utils, name)) == _params(getattr(eo_trl, name)), name


def _logits(*shape, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen) * 3).to(dtype)


def _grad(fn, x, *args, **kwargs):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x, *args, **kwargs)
    out = out[0] + out[1] if isinstance(out, tuple) else out
    (out.float() * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("name", ["entropy_from_logits", "entropy_from_logits_with_chunking"])
def test_verl_entropy_equals_real(verl_f, name):
    x = _logits(37, 1000)
    (h_real, g_real), (h_ours, g_ours) = _grad(getattr(verl_f, name), x), _grad(getattr(eo_verl, name), x)
    torch.testing.assert_close(h_ours, h_real, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(g_ours, g_real, atol=2e-6, rtol=1e-5)


def test_verl_logprobs_equal_real(verl_f):
    x, y = _logits(3, 11, 500), torch.randint(0, 500, (3, 11), generator=torch.Generator().manual_seed(1))
    (lp_real, g_real) = _grad(verl_f.logprobs_from_logits, x, y)
    (lp_ours, g_ours) = _grad(eo_verl.logprobs_from_logits, x, y, inplace_backward=False)
    torch.testing.assert_close(lp_ours, lp_real, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(g_ours, g_real, atol=2e-6, rtol=1e-5)


def _batch(b=6, t=50, seed=0):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=gen) * 3
    logp = old + torch.randn(b, t, generator=gen) * 0.3
    adv = torch.randn(b, 1, generator=gen).expand(b, t).contiguous() * 2
    mask = torch.ones(b, t)
    mask[:, 35:] = 0
    mask[2, 5:] = 0
    return old, logp, adv, mask


BATCH_INFOS = [{}, {"dp_size": 2, "batch_num_tokens": 400, "global_batch_size": 12, "loss_scale_factor": 64}]
MODES = ["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("info", BATCH_INFOS, ids=["local", "global"])
def test_verl_agg_loss_equals_real(verl_algos, mode, info):
    old, logp, _, mask = _batch()
    for m in (mask, mask.long()):  # verl's response mask is float; one sliced from attention_mask is int64
        torch.testing.assert_close(eo_verl.agg_loss(logp, m, mode, **info), verl_algos.agg_loss(logp, m, mode, **info))


def _config(info, **policy_loss):
    defaults = dict(clip_cov_ratio=None, clip_cov_lb=None, clip_cov_ub=None, kl_cov_ratio=None, ppo_kl_coef=None)
    return types.SimpleNamespace(clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.28, global_batch_info=info,
                                 policy_loss=types.SimpleNamespace(**{**defaults, **policy_loss}))


def _run_loss(fn, old, logp, adv, mask, mode, config, weights=None):
    logp = logp.clone().requires_grad_(True)
    loss, metrics = fn(old, logp, adv, mask, mode, config, weights)
    loss.backward()
    return loss.detach(), logp.grad, metrics


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
@pytest.mark.parametrize("info", BATCH_INFOS, ids=["local", "global"])
def test_verl_kl_cov_equals_real(verl_algos, mode, info):
    old, logp, adv, mask = _batch(seed=3)
    weights = torch.rand(mask.shape, generator=torch.Generator().manual_seed(4)) + 0.5
    config = _config(info, kl_cov_ratio=0.05, ppo_kl_coef=0.7)
    real = _run_loss(verl_algos.compute_policy_loss_kl_cov, old, logp, adv, mask, mode, config, weights)
    ours = _run_loss(eo_verl.compute_policy_loss_kl_cov, old, logp, adv, mask, mode, config, weights)
    torch.testing.assert_close(ours[0], real[0])
    torch.testing.assert_close(ours[1], real[1])
    assert ours[2].keys() == real[2].keys()
    assert ours[2]["actor/ppo_kl"] == pytest.approx(real[2]["actor/ppo_kl"], rel=1e-5)


@pytest.mark.parametrize("info", BATCH_INFOS, ids=["local", "global"])
def test_verl_clip_cov_equals_real(verl_algos, info):
    """With clip_cov_ratio = 1 every candidate is detached, so verl's random choice and ours agree."""
    old, logp, adv, mask = _batch(seed=5)
    config = _config(info, clip_cov_ratio=1.0, clip_cov_lb=0.0, clip_cov_ub=5.0)
    real = _run_loss(verl_algos.compute_policy_loss_clip_cov, old, logp, adv, mask, "token-mean", config)
    ours = _run_loss(eo_verl.compute_policy_loss_clip_cov, old, logp, adv, mask, "token-mean", config)
    assert 0 < real[2]["actor/pg_clipfrac"] < 1  # some tokens detached, not all: the case has teeth
    torch.testing.assert_close(ours[0], real[0])
    torch.testing.assert_close(ours[1], real[1])
    assert ours[2].keys() == real[2].keys()
    for key in real[2]:
        assert ours[2][key] == pytest.approx(real[2][key], rel=1e-5), key


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_trl_helpers_equal_real(trl_utils, dtype):
    x = _logits(4, 9, 300, dtype=dtype)
    y = torch.randint(0, 300, (4, 9), generator=torch.Generator().manual_seed(2))
    row_mask = torch.ones(4, 9, dtype=torch.int64)
    row_mask[1, 3:] = 0
    tol = dict(atol=2e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=0.06, rtol=0.02)  # TRL: bf16 math
    torch.testing.assert_close(eo_trl.entropy_from_logits(x), trl_utils.entropy_from_logits(x).float(), **tol)
    for kwargs in ({}, {"temperature": 0.7}, {"row_mask": row_mask}):
        torch.testing.assert_close(eo_trl.selective_log_softmax(x, y, **kwargs),
                                   trl_utils.selective_log_softmax(x, y, **kwargs).float(), **tol)
        ours = eo_trl.selective_log_softmax_and_entropy(x, y, **kwargs)
        real = trl_utils.selective_log_softmax_and_entropy(x, y, **kwargs)
        for a, b in zip(ours, real):
            torch.testing.assert_close(a, b.float(), **tol)
    top_k = torch.randint(0, 300, (4, 9, 3), generator=torch.Generator().manual_seed(3))
    for k in (top_k, top_k[..., :0]):  # [..., 0]: no candidate column
        torch.testing.assert_close(eo_trl.selective_log_softmax(x, k), trl_utils.selective_log_softmax(x, k).float(),
                                   **tol)


# ---- always: formulas, installation into trainer-shaped modules, the missing-trainer error ------

def test_adapters_match_plain_torch_formulas():
    x = _logits(5, 7, 200, dtype=torch.float64)
    y = torch.randint(0, 200, (5, 7), generator=torch.Generator().manual_seed(0))
    logp_all = torch.log_softmax(x, -1)
    h = -(logp_all.exp() * logp_all).sum(-1)
    logp = logp_all.gather(-1, y[..., None])[..., 0]
    for fn in (eo_verl.entropy_from_logits, eo_verl.entropy_from_logits_with_chunking, eo_trl.entropy_from_logits):
        torch.testing.assert_close(fn(x), h)
    torch.testing.assert_close(eo_verl.logprobs_from_logits(x, y, inplace_backward=False), logp)
    mask = torch.rand(5, 7, generator=torch.Generator().manual_seed(1)) > 0.3
    t_logp = torch.log_softmax(x / 0.5, -1)
    expected = torch.where(mask, t_logp.gather(-1, y[..., None])[..., 0], 0)
    torch.testing.assert_close(eo_trl.selective_log_softmax(x, y, 0.5, mask), expected)
    lp, ent = eo_trl.selective_log_softmax_and_entropy(x, y, False, 0.5, mask)
    torch.testing.assert_close(lp, expected)
    torch.testing.assert_close(ent, torch.where(mask, -(t_logp.exp() * t_logp).sum(-1), 0))
    assert not ent.requires_grad
    k = torch.stack([y, (y + 1) % 200], -1)
    torch.testing.assert_close(eo_trl.selective_log_softmax(x, k), logp_all.gather(-1, k))
    empty = eo_trl.selective_log_softmax(x, k[..., :0])  # no candidate column
    assert empty.shape == (5, 7, 0) and empty.dtype == torch.float64
    with pytest.raises(ValueError, match="index: expected shape"):
        eo_trl.selective_log_softmax(x, y[:, :3])


def test_verl_losses_need_a_config():
    old, logp, adv, mask = _batch()
    with pytest.raises(ValueError, match="config: clip_cov needs verl's actor config"):
        eo_verl.compute_policy_loss_clip_cov(old, logp, adv, mask)


def _module(name, **attrs):
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    return mod


def test_register_replaces_verls_losses(monkeypatch):
    registry = {}

    def register_policy_loss(name):  # verl's decorator, as in core_algos
        def decorator(fn):
            registry[name] = fn
            return fn
        return decorator

    monkeypatch.setitem(sys.modules, "verl.trainer.ppo.core_algos",
                        _module("verl.trainer.ppo.core_algos", register_policy_loss=register_policy_loss))
    assert eo_verl.register() == ["clip_cov", "kl_cov"]
    assert registry == {"clip_cov": eo_verl.compute_policy_loss_clip_cov, "kl_cov": eo_verl.compute_policy_loss_kl_cov}
    with pytest.raises(ValueError, match="names: unknown"):
        eo_verl.register(["vanilla"])


def test_patch_rebinds_names_imported_elsewhere(monkeypatch):
    def original(logits):
        return logits

    tf = _module("verl.utils.torch_functional", entropy_from_logits=original, logprobs_from_logits=original,
                 entropy_from_logits_with_chunking=original)
    user = _module("verl.workers.engine.fsdp.transformer_impl", logprobs_from_logits=original)
    outsider = _module("other.pkg", logprobs_from_logits=original)
    for mod in (tf, user, outsider):
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
    done = eo_verl.patch()
    assert "verl.workers.engine.fsdp.transformer_impl.logprobs_from_logits" in done
    assert tf.entropy_from_logits is eo_verl.entropy_from_logits and user.logprobs_from_logits is eo_verl.logprobs_from_logits
    assert outsider.logprobs_from_logits is original  # only the trainer's modules are touched

    trl_utils = _module("trl.trainer.utils", selective_log_softmax=original, entropy_from_logits=original)
    trainer = _module("trl.experimental.sdpo.loss_utils", selective_log_softmax=original)
    monkeypatch.setitem(sys.modules, trl_utils.__name__, trl_utils)
    monkeypatch.setitem(sys.modules, trainer.__name__, trainer)
    eo_trl.patch()
    assert trainer.selective_log_softmax is eo_trl.selective_log_softmax
    assert trl_utils.selective_log_softmax_and_entropy is eo_trl.selective_log_softmax_and_entropy


@pytest.mark.parametrize("adapter,module,package", [(eo_verl.register, "verl.trainer.ppo.core_algos", "verl"),
                                                    (eo_verl.patch, "verl.utils.torch_functional", "verl"),
                                                    (eo_trl.patch, "trl.trainer.utils", "trl")])
def test_missing_trainer_is_a_clear_import_error(monkeypatch, adapter, module, package):
    monkeypatch.setitem(sys.modules, module, None)  # import of it fails, as when not installed
    with pytest.raises(ImportError, match=f"install {package} .entropy_ops does not depend on it"):
        adapter()


def test_verl_default_inplace_backward_through_a_layer():
    """verl's default ``inplace_backward=True`` writes the gradient into the logits' buffer: the
    gradient reaching the layer below must be the same as without it."""
    hidden = torch.randn(6, 16, generator=torch.Generator().manual_seed(0), requires_grad=True)
    weight = torch.randn(100, 16, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 100, (6,), generator=torch.Generator().manual_seed(2))
    grads = []
    for inplace in (False, True):
        hidden.grad = None
        eo_verl.logprobs_from_logits(hidden @ weight.T, labels, inplace_backward=inplace).sum().backward()
        grads.append(hidden.grad.clone())
    torch.testing.assert_close(grads[1], grads[0])
