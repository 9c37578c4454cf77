"""``linear_logprobs_and_entropy``: the LM head and the row reductions in one chunked pass, never
holding ``[N, V]`` logits (SPEC §3.1).

    pre = hidden @ weight^T + bias
    z = softcap * tanh(logit_scale * pre / softcap)     (z = logit_scale * pre without softcap)
    then exactly logprobs_and_entropy(z, labels, temperature): lse, H, logp_y = z_y / T - lse

Backward recomputes the logits chunk by chunk: ``dL/dz`` from the row kernels, chained through
softcap and logit_scale into ``grad_hidden = g @ W``, ``grad_weight = g^T @ hidden``,
``grad_bias = sum_rows g``. Forward and backward are the custom ops
``entropy_ops::linear_logprobs_and_entropy`` and ``entropy_ops::linear_logprobs_and_entropy_bwd``.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _backends, _validate_vocab
from .. import _validate_linear as V
from .._validate import integer, reverse_mode_only
from ..backends.kernel import acc_dtype
from ..backends.torch_linear import LinearArgs
from ..parallel import vocab_linear as _vocab_parallel
from ._rows import check_values, per_row


def _args(hidden, weight, bias, labels, temperature, temperature_scalar, ignore_index, mask,
          logit_scale, softcap, chunk_size) -> LinearArgs:
    n_rows = hidden.shape[0]
    t = per_row(temperature, n_rows, acc_dtype(hidden.dtype))
    m = per_row(mask, n_rows)
    labels = labels.contiguous()
    # The label range is checked against V with the labels flat and the row mask spread over K.
    check_values(weight.t(), labels.reshape(-1), t, ignore_index,
                 None if m is None else m[:, None].expand(labels.shape).reshape(-1))
    return LinearArgs(hidden, weight, bias, labels, t, temperature_scalar, ignore_index, m,
                      logit_scale, softcap, chunk_size)


@torch.library.custom_op("entropy_ops::linear_logprobs_and_entropy", mutates_args=())
def _linear_op(hidden: Tensor, weight: Tensor, labels: Tensor, bias: Optional[Tensor],
               temperature: Optional[Tensor], temperature_scalar: float, ignore_index: int,
               mask: Optional[Tensor], logit_scale: float, softcap: float, chunk_size: int,
               backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    """``hidden [N, D]``, ``labels [N, K]`` -> ``(logp [N, K], entropy [N], state [N, 2])``."""
    a = _args(hidden, weight, bias, labels, temperature, temperature_scalar, ignore_index, mask,
              logit_scale, softcap, chunk_size)
    return _backends.get_kernel(backend, "linear_logprobs_and_entropy").fwd(a)


@_linear_op.register_fake
def _(hidden, weight, labels, bias, temperature, temperature_scalar, ignore_index, mask, logit_scale,
      softcap, chunk_size, backend):
    acc = acc_dtype(hidden.dtype)
    n_rows = hidden.shape[0]
    return (hidden.new_empty(labels.shape, dtype=acc), hidden.new_empty(n_rows, dtype=acc),
            hidden.new_empty(n_rows, 2, dtype=acc))


@torch.library.custom_op("entropy_ops::linear_logprobs_and_entropy_bwd", mutates_args=())
def _linear_bwd_op(hidden: Tensor, weight: Tensor, labels: Tensor, bias: Optional[Tensor],
                   temperature: Optional[Tensor], temperature_scalar: float, ignore_index: int,
                   mask: Optional[Tensor], logit_scale: float, softcap: float, chunk_size: int,
                   state: Tensor, entropy: Tensor, grad_logp: Optional[Tensor],
                   grad_entropy: Optional[Tensor], need_hidden: bool, need_weight: bool,
                   backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    """``(grad_hidden [N, D], grad_weight [V, D], grad_bias [V])``, contiguous; ``[0]`` for a
    gradient not asked for (``need_hidden``; ``need_weight`` covers the weight and the bias: a
    frozen LM head skips its ``[V, D]`` accumulator and product) and for the bias of a head without."""
    a = _args(hidden, weight, bias, labels, temperature, temperature_scalar, ignore_index, mask,
              logit_scale, softcap, chunk_size)
    acc = acc_dtype(hidden.dtype)
    kernel = _backends.get_kernel(backend, "linear_logprobs_and_entropy")
    grads = kernel.bwd(a, state, entropy, None if grad_logp is None else grad_logp.to(acc).contiguous(),
                       None if grad_entropy is None else grad_entropy.to(acc).contiguous(), need_hidden, need_weight)
    return tuple(g.contiguous() if g is not None else like.new_empty(0) for g, like in zip(grads, (hidden, weight, weight)))


@_linear_bwd_op.register_fake
def _(hidden, weight, labels, bias, temperature, temperature_scalar, ignore_index, mask, logit_scale,
      softcap, chunk_size, state, entropy, grad_logp, grad_entropy, need_hidden, need_weight, backend):
    with_bias = need_weight and bias is not None
    return (hidden.new_empty(hidden.shape if need_hidden else (0,)),
            weight.new_empty(weight.shape if need_weight else (0,)),
            weight.new_empty(bias.shape if with_bias else (0,)))


def _no_double_backward(ctx, *grads):
    raise RuntimeError("entropy_ops: double backward through linear_logprobs_and_entropy is not supported")


_linear_bwd_op.register_autograd(_no_double_backward, setup_context=lambda ctx, inputs, output: None)


def _setup(ctx, inputs, output):
    (hidden, weight, labels, bias, temperature, temperature_scalar, ignore_index, mask, logit_scale,
     softcap, chunk_size, backend) = inputs
    _, entropy, state = output
    ctx.save_for_backward(hidden, weight, labels, bias, temperature, mask, state, entropy)
    ctx.scalars = (temperature_scalar, ignore_index)
    ctx.shape = (logit_scale, softcap, chunk_size, backend)
    ctx.mark_non_differentiable(state)


def _backward(ctx, grad_logp, grad_entropy, grad_state):
    hidden, weight, labels, bias, temperature, mask, state, entropy = ctx.saved_tensors
    if grad_logp is None and grad_entropy is None:
        return (None,) * 12
    logit_scale, softcap, chunk_size, backend = ctx.shape
    need = ctx.needs_input_grad
    need_hidden, need_weight = need[0], need[1] or need[3]
    gh, gw, gb = _linear_bwd_op(hidden, weight, labels, bias, temperature, *ctx.scalars, mask,
                                logit_scale, softcap, chunk_size, state, entropy, grad_logp, grad_entropy,
                                need_hidden, need_weight, backend)
    return (gh if need[0] else None, gw if need[1] else None, None, gb if need[3] else None,
            None, None, None, None, None, None, None, None)


_linear_op.register_autograd(_backward, setup_context=_setup)


def linear_logprobs_and_entropy(hidden: Tensor, weight: Tensor, labels: Tensor, bias: Optional[Tensor] = None,
                                temperature=1.0, ignore_index: int = -100, mask: Optional[Tensor] = None,
                                logit_scale: float = 1.0, softcap: Optional[float] = None,
                                chunk_size: Optional[int] = None, *, process_group=None,
                                vocab_start: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """Log-probabilities of ``labels`` and entropy of the LM head's softmax, without ever holding the
    ``[N, V]`` logits: rows are processed in chunks (the Triton backend fuses the product and the
    reductions in one kernel), and backward recomputes each chunk of logits.

    Args:
        hidden: ``[..., D]`` float32, bfloat16, float16 or float64 (the last hidden states).
        weight: ``[V, D]`` the LM head (``nn.Linear`` layout), same dtype and device as ``hidden``.
        labels: ``[...]`` (one token per row) or ``[..., K]`` (K candidate tokens per row, e.g. top-K:
            ``logp`` is then ``[..., K]`` and the gradient flows through all K), int64 or int32.
            ``ignore_index`` labels give ``logp = 0`` and no gradient; out-of-range labels raise on
            CPU tensors and give NaN logp on CUDA (checked only under ``ENTROPY_OPS_CHECK=1``).
        bias: optional ``[V]``, same dtype as ``hidden``.
        temperature: a Python float > 0 (a compile-time constant under ``torch.compile``), a 0-d
            tensor, or one value per row (``hidden``'s leading shape). Detached.
        ignore_index: the label value that means "no label" (default -100).
        mask: optional bool ``[...]``; rows where it is False give 0 and contribute exactly 0 to every
            gradient (their hidden states may hold NaN). Their product is still computed (skipping
            it would need a data-dependent shape); the row kernels skip them.
        logit_scale: multiplies the product (Cohere-style heads); a float > 0.
        softcap: ``z = softcap * tanh(logit_scale * pre / softcap)`` (Gemma style); a float > 0 or None.
        chunk_size: rows per chunk (default: from V alone, about 16 MB of float32 logits on CPU,
            1 GB on CUDA; at least 16). On the ``cpu`` backend any value gives the same ``logp``,
            ``entropy`` and ``grad_hidden`` bits; ``grad_weight``/``grad_bias`` sum over chunks in
            order. The Triton forward is one fused pass (no chunks); its backward spends the same
            memory on column chunks of all rows.

    Returns:
        ``(logp, H)``: ``logp [...]`` or ``[..., K]`` and ``H [...]``, float32 (float64 for float64
        input), with ``lse = log sum_j exp(z_j / T)``, ``H = lse - sum_j p_j z_j / T``,
        ``logp_y = z_y / T - lse``. Gradients flow to ``hidden``, ``weight`` and ``bias``.
        Extra memory beyond inputs, outputs and gradients: one chunk of float32 logits (up to four in
        a backward with ``softcap`` and K > 1 labels), O(N) row states, and a float32 ``grad_weight``
        accumulator for half-precision heads (plus, on CPU, a float32 copy of such a head; the
        Triton backward keeps a float32 ``[N, D]`` ``grad_hidden`` accumulator instead). Double
        backward is not supported.

    Vocab parallel (``process_group``, ``vocab_start`` as in :func:`entropy`): ``weight [V_r, D]``
    and ``bias [V_r]`` are this rank's vocab shard (Megatron's ColumnParallelLinear), ``hidden`` and
    the global ``labels`` are the same on every rank; every rank gets the
    unsharded ``(logp, H)``, its own shard of ``grad_weight``/``grad_bias`` and the full
    ``grad_hidden`` (summed over the group in backward: one all-reduce of ``[N, D]``).
    See ``parallel/vocab_linear.py``.
    """
    leading = V.hidden_and_weight(hidden, weight, bias, sharded=process_group is not None)
    reverse_mode_only("linear_logprobs_and_entropy", hidden, weight, bias)
    labels = V.labels(labels, hidden, leading)
    t, t_scalar = V.temperature(temperature, hidden, leading)
    ignore_index = integer("ignore_index", ignore_index)
    mask = V.row_mask(mask, hidden, leading)
    logit_scale = V.positive_float("logit_scale", logit_scale, hidden.dtype, allow_none=False)
    softcap = V.positive_float("softcap", softcap, hidden.dtype, allow_none=True)
    chunk = V.chunk_size(chunk_size)
    k_labels = labels.dim() > len(leading)
    hidden2d = hidden.reshape(-1, hidden.shape[-1])
    labels2d = labels.reshape(hidden2d.shape[0], labels.shape[-1] if k_labels else 1)
    if bias is not None:
        bias = bias.contiguous()  # the kernels read it with unit stride (a strided or expanded view)
    if process_group is not None or vocab_start is not None:
        group, vocab_start = _validate_vocab.vocab_parallel(process_group, vocab_start)
        n_rows = hidden2d.shape[0]
        a = LinearArgs(hidden2d, weight, bias, labels2d.contiguous(), per_row(t, n_rows, acc_dtype(hidden.dtype)),
                       t_scalar, ignore_index, per_row(mask, n_rows), logit_scale, softcap, chunk)
        logp, h = _vocab_parallel.linear_logprobs_and_entropy(a, group, vocab_start)
        return logp.view(labels.shape if k_labels else leading), h.view(leading)
    backend = _backends.resolve("linear_logprobs_and_entropy", hidden.device, hidden.dtype)
    logp, h, _ = _linear_op(hidden2d, weight, labels2d, bias, t, t_scalar, ignore_index, mask,
                            logit_scale, softcap, chunk, backend)
    return logp.view(labels.shape if k_labels else leading), h.view(leading)
