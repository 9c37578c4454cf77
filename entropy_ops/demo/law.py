"""The Entropy Mechanism paper's law, fitted to a run: ``R = -a * exp(H) + b``.

Linear in ``(a, b)`` given ``x = exp(H)``, so the fit is ordinary least squares in float64, with no
optimizer and no starting guess. As the entropy is exhausted (``H -> 0``) the law predicts the
reward ceiling ``R = b - a``: what plain policy gradient can reach once it has traded all its
entropy for reward.
"""
from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class LawFit:
    a: float
    b: float
    rmse: float  # root-mean-square residual of R, in reward units
    r2: float  # coefficient of determination of the fit
    points: int

    @property
    def ceiling(self) -> float:
        """The predicted reward at zero entropy, ``b - a``."""
        return self.b - self.a

    def predict(self, entropy: float) -> float:
        return -self.a * float(torch.tensor(entropy, dtype=torch.float64).exp()) + self.b


def fit_law(entropy: Sequence[float], reward: Sequence[float]) -> LawFit:
    """Least-squares ``(a, b)`` of ``reward ~ -a exp(entropy) + b`` over paired points (at least 3)."""
    h = torch.tensor(list(entropy), dtype=torch.float64)
    r = torch.tensor(list(reward), dtype=torch.float64)
    if h.shape != r.shape or h.numel() < 3:
        raise ValueError(f"entropy, reward: expected two sequences of the same length >= 3, "
                         f"got {h.numel()} and {r.numel()}")
    design = torch.stack([-h.exp(), torch.ones_like(h)], dim=1)
    a, b = torch.linalg.lstsq(design, r[:, None]).solution[:, 0].tolist()
    residual = r - (design @ torch.tensor([a, b], dtype=torch.float64))
    total = ((r - r.mean()) ** 2).sum()
    r2 = 1.0 - float((residual ** 2).sum() / total) if total > 0 else float("nan")
    return LawFit(a, b, float(residual.pow(2).mean().sqrt()), r2, h.numel())
