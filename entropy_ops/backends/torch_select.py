"""Sync-free selection on the device for the ``torch`` paths: order-preserving integer keys of
floating values, and radix selection of the entry of a given rank (a tensor, never a host integer)
by per-digit histograms, O(N) per round instead of an O(N log N) sort."""
import torch

_KEY_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def order_keys(x):
    """Signed integer keys ordered like the (non-NaN) values: the bit pattern with the magnitude
    bits of negative numbers flipped. 16-bit keys are widened to int32."""
    bits = x.view(_KEY_INT[x.element_size()])
    key = torch.where(bits < 0, bits ^ torch.iinfo(bits.dtype).max, bits)
    return key.int() if x.element_size() == 2 else key


def select(key, key_bits, alive, rank):
    """The entry of 0-based ``rank`` (a ``[1]`` tensor) among ``alive`` by radix selection on
    ``key``: ``(alive, residual, equal)``, the entries whose key is the selected one, the selected
    entry's rank among them, and how many there are."""
    n = key.shape[0]
    count_dtype = torch.int32 if n < 2**31 else torch.int64
    digit_bits = min(max(n.bit_length() - 1, 4), 11)
    high = key_bits
    while high > 0:  # digits of the key from the top: bits [low, high)
        low = max(high - digit_bits, 0)
        n_bins = 1 << (high - low)
        digit = (key >> low) & (n_bins - 1)
        if high == key_bits:
            digit = digit ^ (n_bins >> 1)  # flip the sign bit: signed order -> unsigned digits
        hist = torch.zeros(n_bins, dtype=count_dtype, device=key.device)
        hist.index_add_(0, digit, alive.to(count_dtype))
        cum = hist.cumsum(0)
        best = (cum <= rank).sum().clamp(max=n_bins - 1).view(1)
        equal = hist.gather(0, best)
        rank = rank - (cum.gather(0, best) - equal)
        alive = alive & (digit == best)
        high = low
    return alive, rank, equal


def top_k(scores, eligible, k):
    """Bool mask of the ``k`` eligible entries of largest score (``k`` a 0-d integer tensor; all
    eligible entries when there are fewer), ties to the lowest flat index. ``scores`` floating point
    (no NaN among the eligible) or int64."""
    flat = scores.reshape(-1)
    ok = eligible.reshape(-1)
    if flat.numel() == 0:  # a shape, not a value: no sync; amin() below needs an entry
        return torch.zeros_like(eligible, dtype=torch.bool)
    if flat.is_floating_point():
        key, key_bits = order_keys(-(flat + 0.0)), 8 * flat.element_size()  # -0.0 -> +0.0 first
    else:
        key, key_bits = ~flat, 64  # -1 - flat: order-reversing, no overflow at -2**63
    k = torch.minimum(k.reshape(1), ok.sum().reshape(1))
    # The k-th largest is the entry of rank k - 1 in ascending order of -score.
    tied, residual, _ = select(key, key_bits, ok, (k - 1).clamp(min=0))
    threshold = torch.where(tied, key, torch.iinfo(key.dtype).max).amin()
    above = ok & (key < threshold)
    ties_in_order = tied & (tied.long().cumsum(0) <= residual + 1)
    return ((above | ties_in_order) & (k > 0)).view(scores.shape)
