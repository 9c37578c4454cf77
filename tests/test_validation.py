"""Bad input raises a named error (SPEC §2, STYLE): each check asserts the exception type and that
the message names the offending argument. Value checks (label range, per-row temperature) run
inside the op on CPU tensors."""
import pytest
import torch

import entropy_ops as eo
from conftest import assert_within_eager_bound, eager_logprobs_and_entropy
from entropy_ops.reference import entropy_ref, logprobs_and_entropy_ref

B, T, V = 2, 3, 11


def x_():
    return torch.randn(B, T, V)


def y_():
    return torch.randint(V, (B, T))


def both_ops(**kwargs):
    """Call ``entropy`` and ``logprobs_and_entropy`` with the same (bad) common arguments."""
    logits = kwargs.pop("logits", x_())
    yield lambda: eo.entropy(logits, **kwargs)
    yield lambda: eo.logprobs_and_entropy(logits, y_() if logits.dim() == 3 else torch.tensor(0), **kwargs)


def raises_naming(exc, name, fn):
    with pytest.raises(exc) as info:
        fn()
    assert name in str(info.value), f"message {str(info.value)!r} does not name {name!r}"


@pytest.mark.parametrize("labels, exc", [
    (torch.zeros(B, T), TypeError),
    (torch.zeros(B, T, dtype=torch.int16), TypeError),
    (torch.zeros(B, dtype=torch.long), ValueError),
    (torch.zeros(B, T, 1, dtype=torch.long), ValueError),
    ([[0, 1, 2], [0, 1, 2]], TypeError),
], ids=["float", "int16", "shape_B", "shape_BT1", "list"])
def test_bad_labels(backend, labels, exc):
    raises_naming(exc, "labels", lambda: eo.logprobs_and_entropy(x_(), labels))


@pytest.mark.parametrize("bad", [V, 1000, -1, -101])
def test_labels_out_of_range_raise_on_cpu(backend, bad):
    y = y_()
    y[1, 2] = bad
    raises_naming(ValueError, "labels", lambda: eo.logprobs_and_entropy(x_(), y))
    raises_naming(ValueError, "labels", lambda: eo.logprobs_and_entropy(x_(), y.int()))


def test_ignore_index_beyond_int32_does_not_wrap_for_int32_labels(backend):
    # 2**32 - 100 wraps to -100 in int32: the -100 labels are out of range, not ignored.
    y = y_()
    y[1, 2] = -100
    raises_naming(ValueError, "labels", lambda: eo.logprobs_and_entropy(x_(), y.int(), ignore_index=2**32 - 100))
    logp, _ = eo.logprobs_and_entropy(x_(), y.int(), ignore_index=-100)
    assert logp[1, 2] == 0


def test_out_of_range_label_in_masked_row_is_fine(backend):
    x, y = x_(), y_()
    y[1, 2] = 10**6
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 2] = False
    logp, h = eo.logprobs_and_entropy(x, y, mask=mask)
    assert logp[1, 2] == 0 and h[1, 2] == 0
    ref_logp, ref_h = logprobs_and_entropy_ref(x, y, mask=mask)
    eager_logp, eager_h = eager_logprobs_and_entropy(x, y.clamp(max=V - 1), mask=mask)
    assert_within_eager_bound(logp.reshape(-1), ref_logp.reshape(-1), eager_logp.reshape(-1), what="logp")
    assert_within_eager_bound(h.reshape(-1), ref_h.reshape(-1), eager_h.reshape(-1), what="entropy")


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf"), -float("inf"), 1e-46, 1e39])
def test_bad_float_temperature(backend, temperature):
    for call in both_ops(temperature=temperature):
        raises_naming(ValueError, "temperature", call)


def test_empty_logits_with_zero_strides_are_accepted(backend):
    # torch.from_numpy of an empty array has strides (0, 0): nothing is read, so nothing to refuse.
    x = torch.empty_strided((0, 5), (0, 0))
    assert eo.entropy(x).shape == (0,)
    assert eo.logprobs_and_entropy(x, torch.zeros(0, dtype=torch.long))[0].shape == (0,)


def test_float64_logits_take_temperatures_of_float64s_normal_range(backend):
    """float64 logits are computed in float64: a temperature of 1e-300 is in range, as a float
    and per row (from a float64 tensor), and matches the reference; 1e-320 is not."""
    x = x_().double()
    for t in (1e-300, torch.full((B, T), 1e-300, dtype=torch.float64)):
        torch.testing.assert_close(eo.entropy(x, t), entropy_ref(x, t), rtol=0, atol=1e-12)
    for t in (1e-320, torch.full((B, T), 1e-320, dtype=torch.float64)):
        for call in both_ops(logits=x, temperature=t):
            raises_naming(ValueError, "temperature", call)


@pytest.mark.parametrize("temperature", ["1.0", None, True, [1.0]], ids=["str", "None", "bool", "list"])
def test_temperature_of_wrong_type(backend, temperature):
    for call in both_ops(temperature=temperature):
        raises_naming(TypeError, "temperature", call)


@pytest.mark.parametrize("bad", [0.0, -0.5, float("nan"), float("inf"), 1e-39, 1e39])
def test_bad_per_row_temperature_raises_inside_op(backend, bad):
    # 1e-39 (float32 subnormal) and 1e39 (inf in float32) are outside the range the kernels compute in.
    t = torch.rand(B, T, dtype=torch.float64) + 0.5
    t[0, 1] = bad
    for call in both_ops(temperature=t):
        raises_naming(ValueError, "temperature", call)
    for call in both_ops(temperature=torch.tensor(bad, dtype=torch.float64)):
        raises_naming(ValueError, "temperature", call)


@pytest.mark.parametrize("shape", [(B,), (T,), (B, 1), (1, T), (B, T, 1), (B, T, V)], ids=str)
def test_partial_shape_temperature_is_rejected(backend, shape):
    for call in both_ops(temperature=torch.ones(shape)):
        raises_naming(ValueError, "temperature", call)


def test_integer_temperature_tensor_is_rejected(backend):
    for call in both_ops(temperature=torch.ones(B, T, dtype=torch.long)):
        raises_naming(TypeError, "temperature", call)


@pytest.mark.parametrize("logits, exc", [
    (torch.randn(B, 0), ValueError),
    (torch.randn(0), ValueError),
    (torch.ones(B, T, V, dtype=torch.long), TypeError),
    (torch.ones(B, T, V, dtype=torch.int32), TypeError),
    (torch.ones(B, T, V, dtype=torch.bool), TypeError),
    (torch.tensor(1.0), ValueError),
    (torch.randn(B, T, 2 * V)[..., ::2], ValueError),
    (torch.randn(B, V, T).transpose(1, 2), ValueError),
], ids=["V0_2d", "V0_1d", "int64", "int32", "bool", "0d", "strided_last_dim", "transposed"])
def test_bad_logits(backend, logits, exc):
    raises_naming(exc, "logits", lambda: eo.entropy(logits))
    labels = torch.zeros(logits.shape[:-1], dtype=torch.long) if logits.dim() else torch.tensor(0)
    raises_naming(exc, "logits", lambda: eo.logprobs_and_entropy(logits, labels))


def test_logits_not_a_tensor(backend):
    raises_naming(TypeError, "logits", lambda: eo.entropy([[1.0, 2.0]]))


def test_strided_last_dim_message_says_contiguous(backend):
    with pytest.raises(ValueError, match="contiguous"):
        eo.entropy(torch.randn(4, 20)[:, ::2])


@pytest.mark.parametrize("arg", ["labels", "mask", "temperature"])
def test_device_mismatch(backend, arg):
    meta = {"labels": torch.zeros(B, T, dtype=torch.long, device="meta"),
            "mask": torch.ones(B, T, dtype=torch.bool, device="meta"),
            "temperature": torch.ones(B, T, device="meta")}[arg]
    kwargs = {"mask": meta} if arg == "mask" else {"temperature": meta} if arg == "temperature" else {}
    labels = meta if arg == "labels" else y_()
    raises_naming(ValueError, arg, lambda: eo.logprobs_and_entropy(x_(), labels, **kwargs))
    if arg != "labels":
        raises_naming(ValueError, arg, lambda: eo.entropy(x_(), **kwargs))


@pytest.mark.parametrize("mask, exc", [
    (torch.ones(B, T, dtype=torch.uint8), TypeError),
    (torch.ones(B, T, dtype=torch.long), TypeError),
    (torch.ones(B, T), TypeError),
    ([[True] * T] * B, TypeError),
    (torch.ones(B, dtype=torch.bool), ValueError),
    (torch.ones(B, T, V, dtype=torch.bool), ValueError),
    (torch.ones(T, B, dtype=torch.bool), ValueError),
], ids=["uint8", "int64", "float", "list", "shape_B", "shape_BTV", "shape_TB"])
def test_bad_mask(backend, mask, exc):
    for call in both_ops(mask=mask):
        raises_naming(exc, "mask", call)


@pytest.mark.parametrize("ignore_index", [1.5, -100.0, torch.tensor(-100), "x", True, None],
                         ids=["float", "float_int", "tensor", "str", "bool", "None"])
def test_ignore_index_not_int(backend, ignore_index):
    raises_naming(TypeError, "ignore_index", lambda: eo.logprobs_and_entropy(x_(), y_(), ignore_index=ignore_index))


@pytest.mark.parametrize("flag", [1, 0, "yes", None, torch.tensor(True)], ids=["one", "zero", "str", "None", "tensor"])
def test_inplace_backward_not_bool(backend, flag):
    for call in both_ops(inplace_backward=flag):
        raises_naming(TypeError, "inplace_backward", call)


def test_numpy_scalars_act_as_python_numbers(backend):
    """Scalars read from configs or arrays (``np.float32(0.75)``, ``np.int64(3)``) are numbers: every
    op gives the bits it gives for the Python number (values exact in float32, so that the two are
    the same number); NumPy's bool is refused like a bool."""
    np = pytest.importorskip("numpy")
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 50, generator=gen)
    y = torch.randint(50, (2, 3), generator=gen)
    h = torch.rand(2, 8, generator=gen)
    mask = torch.rand(2, 8, generator=gen) > 0.2
    logp, old, adv = (torch.randn(2, 8, generator=gen) for _ in range(3))
    calls = {
        "entropy": lambda c: eo.entropy(x, c(0.75)),
        "logprobs_and_entropy": lambda c: eo.logprobs_and_entropy(x, y, c(0.75), ignore_index=c(-1, int)),
        "top_p_entropy": lambda c: eo.top_p_entropy(x, c(0.5), c(0.75)),
        "min_p_logprobs": lambda c: eo.min_p_logprobs(x, y, c(0.0625), c(0.75)),
        "window_entropy": lambda c: eo.window_entropy(h, mask, window=c(3, int), offset=c(2, int)),
        "masked_quantile": lambda c: eo.masked_quantile(h, mask, c(0.25)),
        "kl_cov_policy_loss": lambda c: eo.kl_cov_policy_loss(logp, old, adv, mask, kl_cov_ratio=c(0.25),
                                                              kl_coef=c(0.5)).loss,
        "clip_cov_policy_loss": lambda c: eo.clip_cov_policy_loss(
            logp, old, adv, mask, clip_ratio=c(0.25), clip_cov_ratio=c(0.125), clip_cov_lb=c(-1.0),
            clip_cov_ub=c(5.0), generator=torch.Generator().manual_seed(1)).loss,
        "agg_loss": lambda c: eo.agg_loss(logp, mask, "seq-mean-token-sum-norm", loss_scale_factor=c(2.0)),
    }
    python = lambda v, kind=float: kind(v)  # noqa: E731
    numpy = lambda v, kind=float: np.int64(v) if kind is int else np.float32(v)  # noqa: E731
    for name, call in calls.items():
        want, got = call(python), call(numpy)
        for a, b in zip(want if isinstance(want, tuple) else (want,), got if isinstance(got, tuple) else (got,)):
            assert torch.equal(a, b), f"{name}: NumPy scalars give other results than Python numbers"
    raises_naming(TypeError, "temperature", lambda: eo.entropy(x, np.bool_(True)))


@pytest.mark.parametrize("flag", ["inplace_backward", "inclusive", "per_sequence"])
def test_flags_take_numpy_bools_but_not_ints(backend, flag):
    np = pytest.importorskip("numpy")
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 50, generator=gen)
    h, mask = torch.rand(2, 8, generator=gen), torch.rand(2, 8, generator=gen) > 0.2
    call = {
        "inplace_backward": lambda v: eo.entropy(x, inplace_backward=v),
        "inclusive": lambda v: eo.top_p_mask(x, 0.5, inclusive=v),
        "per_sequence": lambda v: eo.masked_quantile(h, mask, 0.5, per_sequence=v),
    }[flag]
    for value in (False, True):
        assert torch.equal(call(np.bool_(value)), call(value))
    raises_naming(TypeError, flag, lambda: call(1))


def _dtensor_calls(d):
    """``{(op, argument): call}``: every tensor argument of every public op, given as the DTensor
    ``d(t)`` while the others stay plain tensors."""
    x, y, t = torch.randn(4, 6, 50), torch.zeros(4, 6).long(), torch.full((4, 6), 0.7)
    rows = torch.ones(4, 6, dtype=torch.bool)
    hid, w, b = torch.randn(4, 6, 8), torch.randn(50, 8), torch.randn(50)
    h, m, cu = torch.rand(10), torch.ones(10, dtype=torch.bool), torch.tensor([0, 4, 10])
    lp, keys = -torch.rand(4, 6), torch.randint(0, 2**62, (4, 6))
    n = torch.tensor(20)
    vocab = {
        "entropy": lambda x=x, t=t, m=rows: eo.entropy(x, t, mask=m),
        "logprobs_and_entropy": lambda x=x, y=y, t=t, m=rows: eo.logprobs_and_entropy(x, y, t, mask=m),
        "token_stats": lambda x=x, y=y, t=t: eo.token_stats(x, y, t),
        "top_p_entropy": lambda x=x, t=t, m=rows: eo.top_p_entropy(x, 0.8, t, mask=m),
        "top_p_mask": lambda x=x, t=t: eo.top_p_mask(x, 0.8, t),
        "min_p_logprobs": lambda x=x, y=y, t=t, m=rows: eo.min_p_logprobs(x, y, 0.1, t, mask=m),
        "linear_logprobs_and_entropy": lambda hidden=hid, weight=w, labels=y, bias=b, temperature=t, mask=rows:
            eo.linear_logprobs_and_entropy(hidden, weight, labels, bias, temperature, mask=mask),
        "window_entropy": lambda entropy=h, mask=m, cu_seqlens=cu: eo.window_entropy(entropy, mask, cu_seqlens=cu_seqlens),
        "masked_quantile": lambda values=h, mask=m, q=torch.tensor(0.5), cu_seqlens=cu:
            eo.masked_quantile(values, mask, q, cu_seqlens=cu_seqlens),
        "peak_entropy_mask": lambda entropy=h, mask=m, q=torch.tensor(0.5), cu_seqlens=cu:
            eo.peak_entropy_mask(entropy, mask, q, cu_seqlens=cu_seqlens),
        "EntropyThreshold": lambda entropy=h, mask=m, cu_seqlens=cu: eo.EntropyThreshold()(entropy, mask, cu_seqlens),
        "token_covariance": lambda logp=lp, advantages=lp, mask=rows: eo.token_covariance(logp, advantages, mask),
        "clip_cov_policy_loss": lambda logp=lp, old_logp=lp, advantages=lp, mask=rows, weights=lp, random_keys=keys,
            batch_num_tokens=n: eo.clip_cov_policy_loss(logp, old_logp, advantages, mask, weights=weights,
                                                        random_keys=random_keys, batch_num_tokens=batch_num_tokens),
        "kl_cov_policy_loss": lambda logp=lp, old_logp=lp, advantages=lp, mask=rows, weights=lp:
            eo.kl_cov_policy_loss(logp, old_logp, advantages, mask, weights=weights),
        "agg_loss": lambda loss_mat=lp, mask=rows, batch_num_tokens=n, global_batch_size=n, loss_scale_factor=n:
            eo.agg_loss(loss_mat, mask, "seq-mean-token-sum-norm", 1, batch_num_tokens, global_batch_size,
                        loss_scale_factor),
        "selective_entropy_loss": lambda logits=x, mask=rows, anchor=torch.tensor(1.0), temperature=t:
            eo.selective_entropy_loss(logits, mask, anchor, temperature=temperature),
    }
    calls = {}
    for op, call in vocab.items():
        names = call.__code__.co_varnames[:call.__code__.co_argcount]
        short = {"x": "logits", "y": "labels", "t": "temperature", "m": "mask"}
        for arg, value in zip(names, call.__defaults__):
            calls[op, short.get(arg, arg)] = lambda call=call, arg=arg, value=value: call(**{arg: d(value)})
    return calls


def _dtensor_errors(rank, world_size):
    """The error of each op given each tensor argument as a DTensor (a one-rank mesh of this gloo world)."""
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor, init_device_mesh

    mesh = init_device_mesh("cpu", (world_size,))
    errors = {}
    for key, call in _dtensor_calls(lambda t: distribute_tensor(t, mesh, [Shard(0) if t.dim() else Replicate()])).items():
        try:
            call()
            errors[key] = ("no error", "")
        except Exception as e:  # noqa: BLE001 (the test checks the type and message)
            errors[key] = (type(e).__name__, str(e))
    return errors


def test_dtensor_inputs_get_a_named_error_with_the_fix():
    """A DTensor would reach torch's "no sharding strategy registered" for the custom op (or its
    "mixed torch.Tensor and DTensor" error); the entry names the argument, whichever it is, and says
    to pass a local tensor (with process_group=) or the full one."""
    from dist_common import run_world

    (errors,) = run_world(_dtensor_errors, 1)
    assert len(errors) == 63, len(errors)  # the 17 public ops above, each tensor argument
    for (op, name), (kind, message) in errors.items():
        assert kind == "TypeError" and message.startswith(f"{name}: a DTensor (placements ("), (op, name, kind, message)
        assert f"{name}.to_local() with process_group=" in message and f"{name}.full_tensor()" in message, message
