"""``python -m entropy_ops demo``: train plain PG and the controls on the synthetic task, print the
table, the entropy-collapse verdict and the fitted law, and write the PNG."""
import argparse
import time

import torch

from .._outputs import writable_file
from .methods import METHODS
from .report import summary, table, verdict
from .train import DemoConfig, train_all


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=100, help="RL steps per method (default 100)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma list of " + ", ".join(METHODS) + " (pg is required: the claims compare with it)")
    parser.add_argument("--seed", type=int, default=0, help="task, policy and sampling seed (default 0)")
    parser.add_argument("--plot", default="entropy_demo.png", help="PNG path (default entropy_demo.png)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    start = time.perf_counter()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or "pg" not in methods:
        raise SystemExit(f"--methods: unknown {', '.join(bad)}; choose from {', '.join(METHODS)}, including pg"
                         if bad else "--methods: include pg (the demo's claims compare against it)")
    if args.steps < 3:
        raise SystemExit("--steps: need at least 3 (the law fit needs 3 points)")
    if not args.no_plot:
        writable_file("--plot", args.plot)  # before training, not after
    torch.manual_seed(args.seed)
    cfg = DemoConfig(steps=args.steps, seed=args.seed)
    print(f"synthetic task: {cfg.prompts} prompts x {cfg.length} answer tokens, vocabulary {cfg.vocab}, "
          f"{cfg.n_correct} right tokens per position; {cfg.group} samples per prompt, {cfg.inner} updates per step")
    histories = train_all(methods, cfg, show_progress=not args.no_progress)
    print("\nR: expected reward (exact, over all prompts); H: mean token entropy (nats)")
    print("\n".join(table(histories)))
    v = verdict(histories)
    print()
    print("\n".join(summary(v, histories["pg"].entropy[0])))
    if not args.no_plot:
        from .plot import write_plot
        print(f"plot: {write_plot(args.plot, histories, v.fit)}")
    print(f"total {time.perf_counter() - start:.1f} s")
    return 0 if v.collapse_holds else 1
