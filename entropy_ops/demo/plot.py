"""The demo's PNG: entropy and reward per step for every method, and plain PG's reward against
its entropy with the fitted law ``R = -a exp(H) + b``. matplotlib is imported only here, when a
plot is asked for (an optional dependency: ``pip install entropy-ops[bench]``)."""
import math
from typing import Dict

from .._plotting import pyplot
from .law import LawFit
from .train import History


def _pyplot():
    return pyplot("the demo's plot needs matplotlib: pip install matplotlib "
                  "(or entropy-ops[bench]); pass --no-plot to skip it")


def write_plot(path: str, histories: Dict[str, History], fit: LawFit, law_method: str = "pg") -> str:
    plt = _pyplot()
    fig, (ax_h, ax_r, ax_law) = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, hist in histories.items():
        steps = range(len(hist.entropy))
        ax_h.plot(steps, hist.entropy, label=name)
        ax_r.plot(steps, hist.reward, label=name)
    ax_h.set(title="policy entropy (nats)", xlabel="step", ylabel="mean token entropy")
    ax_r.set(title="expected reward", xlabel="step", ylabel="accuracy")
    ax_h.legend()
    ax_r.legend()

    hist = histories[law_method]
    ax_law.scatter(hist.entropy, hist.reward, s=10, label=f"{law_method} run")
    top = max(hist.entropy)
    grid = [top * i / 100 for i in range(101)]
    ax_law.plot(grid, [-fit.a * math.exp(h) + fit.b for h in grid], color="black",
                label=f"R = -{fit.a:.3f} exp(H) + {fit.b:.3f}")
    ax_law.axhline(fit.ceiling, linestyle="--", color="gray", label=f"ceiling b - a = {fit.ceiling:.3f}")
    ax_law.invert_xaxis()  # training runs right to left: entropy falls as reward rises
    ax_law.set(title="reward vs entropy (the Entropy Mechanism law)", xlabel="entropy H", ylabel="reward R")
    ax_law.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
