"""``python -m entropy_ops demo``: entropy collapse on a toy RL run, and how the controls prevent it.

A tabular softmax policy (``policy``) learns a synthetic verifiable task (``task``: several right
tokens per position) with GRPO-style groups (``train``). Plain policy gradient, Clip-Cov, KL-Cov and
SIREN's regularizer (``methods``) all compute log-probs, entropies and losses with ``entropy_ops``.
``law`` fits the Entropy Mechanism paper's ``R = -a exp(H) + b`` to plain PG's run, ``report`` states
the verdict, ``plot`` draws it, ``cli`` wires the command. Runs in seconds on a CPU; seeded.
"""
from .law import LawFit, fit_law
from .methods import METHODS, MethodConfig
from .report import Verdict, verdict
from .train import DemoConfig, History, train, train_all

__all__ = ["DemoConfig", "History", "LawFit", "METHODS", "MethodConfig", "Verdict", "fit_law", "train",
           "train_all", "verdict"]
