"""Validation of the vocab-parallel arguments (SPEC §3.3) at the Python entry of the row ops:
``process_group`` and ``vocab_start``, each error naming the argument and the fix. The layout of
the shards over the ranks is checked collectively in ``parallel/layout.py``."""
from . import _validate


def process_group(g):
    return _validate.process_group(g, "the tensor-parallel group that shards the vocabulary, e.g. "
                                      "mpu.get_tensor_model_parallel_group()")


def vocab_start(v, group):
    """``vocab_start``: None (even Megatron shards) or the int global index of this shard's first entry."""
    if v is None:
        return None
    if group is None:
        raise ValueError("vocab_start: only meaningful with process_group (the logits are then the local "
                         "vocab shard); pass process_group=... or drop vocab_start")
    if not _validate.is_integer(v):
        raise TypeError(f"vocab_start: expected an int (the global index of this rank's first vocab entry), "
                        f"got {type(v).__name__}")
    if v < 0:
        raise ValueError(f"vocab_start: must be >= 0, got {v}")
    return int(v)


def no_inplace(inplace_backward: bool, group) -> None:
    if inplace_backward and group is not None:
        raise ValueError("inplace_backward: not supported with process_group (the vocab-parallel backward "
                         "writes a fresh gradient); pass inplace_backward=False")


def vocab_parallel(group, start, inplace_backward: bool = False):
    """The checked ``(process_group, vocab_start)`` of a row op called with either of them."""
    start = vocab_start(start, group)
    group = process_group(group)
    no_inplace(inplace_backward, group)
    return group, start
