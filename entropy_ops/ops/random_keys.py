"""``entropy_ops::random_keys``: Clip-Cov's random keys (``backends/token_kernel.py``, "Random
keys") as a custom op, so that each backend runs its own kernel (one native pass on CPU, one
Triton / CUDA kernel on GPU, ``torch_tokens.random_keys_torch`` as the reference path) and
``torch.compile(fullgraph=True)`` traces through it.

The keys are a counter-based stream: a seed is drawn from the caller's ``torch.Generator`` (or the
global RNG) with ``torch.randint`` on the device, and key ``i`` is SplitMix64's output number
``first + i`` of the stream of that seed. The offset ``first`` is a device tensor, so a
data-parallel rank draws exactly its slice of the keys of the concatenated batch from an offset it
learned by an all-reduce, with no host synchronization (``parallel/data.py``); a single process
draws the slice starting at 0. Why not ``torch.randint`` of the keys themselves: the slice of a
``randint`` draw needs the sizes of the other ranks on the host.
"""
import math

import torch
from torch import Tensor

from .. import _backends

KEY_HIGH = 2**62  # keys and seeds lie in [0, KEY_HIGH)


@torch.library.custom_op("entropy_ops::random_keys", mutates_args=())
def _random_keys_op(seed: Tensor, first: Tensor, n: int, backend: str) -> Tensor:
    kernel = _backends.get_kernel(backend, "random_keys")
    return kernel(seed.reshape(1).long(), first.reshape(1).long(), n)


@_random_keys_op.register_fake
def _(seed, first, n, backend):
    return seed.new_empty(n, dtype=torch.int64)


def random_keys(seed: Tensor, first: Tensor, shape, backend: str) -> Tensor:
    """Keys ``first, first + 1, ...`` of the stream of ``seed``, in ``[0, 2**62)``.

    Args:
        seed, first: int64 tensors of one element on the output's device (device values: never
            read by the host outside the CPU kernel).
        shape: the output's shape; keys are laid out in row-major (flat index) order.
        backend: a name from ``_backends.resolve("random_keys", device, dtype)``.

    Returns:
        int64 of ``shape``: ``key[flat i] = splitmix64(seed, first + i) >> 2``.
    """
    return _random_keys_op(seed, first, math.prod(shape), backend).view(shape)


def clip_cov_keys(generator, first: Tensor, like: Tensor) -> Tensor:
    """Clip-Cov's keys for the tokens of ``like`` (its shape and device), the slice of the stream
    starting at ``first``: one seed drawn from ``generator`` (or the global RNG when None) with
    ``torch.randint(0, 2**62, (1,))``, then :func:`random_keys` on the backend resolved for
    ``like``. The same generator state gives the same keys on every rank and in one process."""
    seed = torch.randint(0, KEY_HIGH, (1,), generator=generator, device=like.device)
    backend = _backends.resolve("random_keys", like.device, like.dtype)
    return random_keys(seed, first, like.shape, backend)
