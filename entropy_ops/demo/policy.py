"""The toy softmax policy: one learnable logit vector per (prompt, position), tokens sampled
independently per position. Small enough to train in seconds on a CPU, yet its log-probs,
entropies and losses go through the same ``entropy_ops`` calls an LLM trainer makes on ``[B, T, V]``
logits.
"""
import torch

import entropy_ops as eo


class TablePolicy(torch.nn.Module):
    """``logits(prompts)``: float32 ``[B, T, V]`` for int64 ``prompts [B]``.

    Initialized with random logits of std ``init_std`` (the demo uses 3: a peaked start, like a
    pretrained model that is confident and often wrong), so the collapse under plain policy
    gradient locks in some wrong tokens: the reward ceiling the Entropy Mechanism law predicts.
    """

    def __init__(self, prompts: int, length: int, vocab: int, init_std: float = 3.0, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(prompts, length, vocab, generator=gen) * init_std)

    def logits(self, prompts: torch.Tensor) -> torch.Tensor:
        return self.table[prompts]

    @torch.no_grad()
    def sample(self, prompts: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """int64 ``[B, T]`` responses, one token per position drawn from ``softmax(logits)``."""
        probs = torch.softmax(self.logits(prompts), -1)
        b, t, v = probs.shape
        return torch.multinomial(probs.reshape(b * t, v), 1, generator=gen).reshape(b, t)

    def logprobs_and_entropy(self, prompts: torch.Tensor, responses: torch.Tensor):
        """``(logp [B, T], H [B, T], logits [B, T, V])`` through ``eo.logprobs_and_entropy``."""
        logits = self.logits(prompts)
        logp, h = eo.logprobs_and_entropy(logits, responses)
        return logp, h, logits

    @torch.no_grad()
    def probs(self) -> torch.Tensor:
        """float32 ``[P, T, V]``: the policy of every prompt and position."""
        return torch.softmax(self.table, -1)

    @torch.no_grad()
    def mean_entropy(self) -> torch.Tensor:
        """0-d float32: the mean token entropy over all prompts and positions (``eo.entropy``)."""
        return eo.entropy(self.table.detach()).mean()
