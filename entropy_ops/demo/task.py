"""The synthetic verifiable task: prompt ``p`` asks for ``T`` answer tokens; at position ``t`` a
fixed set of ``n_correct`` tokens (out of ``V``) is right. Made in code from a seed, no download.

Several right tokens per position is the point: the reward is the same whichever of them the
policy picks, so a policy that keeps its probability spread over them loses nothing, while plain
policy gradient concentrates it on one (the entropy collapse the controls prevent).

    reward(response) = mean_t [response_t in correct(p, t)]                   in [0, 1]
"""
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Task:
    """``correct``: bool ``[P, T, V]``, True at the right tokens (``n_correct`` per position)."""
    correct: torch.Tensor

    @property
    def shape(self):
        return tuple(self.correct.shape)

    def reward(self, prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        """``prompts`` int64 ``[B]``, ``responses`` int64 ``[B, T]`` -> float32 ``[B]``: the fraction
        of the response's tokens that are right (the verifier)."""
        hits = self.correct[prompts].gather(-1, responses.unsqueeze(-1)).squeeze(-1)
        return hits.float().mean(-1)

    def expected_reward(self, probs: torch.Tensor) -> torch.Tensor:
        """The exact expected reward of a policy ``probs [P, T, V]`` over all prompts: the mean over
        prompts and positions of the probability mass on the right tokens (0-d float32)."""
        return torch.where(self.correct, probs, 0).sum(-1).mean()


def make_task(prompts: int = 16, length: int = 8, vocab: int = 32, n_correct: int = 3, seed: int = 0) -> Task:
    """A task of ``prompts`` prompts, ``length`` answer tokens, vocabulary ``vocab``; the right tokens
    of each position are a random ``n_correct``-subset of the vocabulary."""
    if not 1 <= n_correct < vocab:
        raise ValueError(f"n_correct: expected 1 <= n_correct < vocab ({vocab}), got {n_correct}")
    gen = torch.Generator().manual_seed(seed)
    keys = torch.rand(prompts, length, vocab, generator=gen)
    picked = keys.argsort(-1)[..., :n_correct]
    correct = torch.zeros(prompts, length, vocab, dtype=torch.bool).scatter_(-1, picked, True)
    return Task(correct)
