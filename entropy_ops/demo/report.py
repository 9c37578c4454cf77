"""The demo's verdict, as data and as text: the per-step table, the entropy-collapse claim and
the fitted law, all computed from the histories (the test checks the same values it prints)."""
from dataclasses import dataclass
from typing import Dict, List

from .law import LawFit, fit_law
from .train import History

BASELINE = "pg"


@dataclass(frozen=True)
class Verdict:
    """``collapse_holds``: plain PG's final entropy is below every control's; ``final_entropy`` /
    ``final_reward`` per method; ``fit`` the law fitted to plain PG's run."""
    collapse_holds: bool
    final_entropy: Dict[str, float]
    final_reward: Dict[str, float]
    fit: LawFit


def verdict(histories: Dict[str, History]) -> Verdict:
    if BASELINE not in histories:
        raise ValueError(f"methods: the demo's claims compare against {BASELINE!r}; include it")
    final_h = {m: h.entropy[-1] for m, h in histories.items()}
    final_r = {m: h.reward[-1] for m, h in histories.items()}
    holds = all(final_h[BASELINE] < h for m, h in final_h.items() if m != BASELINE)
    base = histories[BASELINE]
    return Verdict(holds, final_h, final_r, fit_law(base.entropy, base.reward))


def table(histories: Dict[str, History], rows: int = 10) -> List[str]:
    """``step | R H`` per method, at ``rows`` evenly spaced steps and the final one."""
    names = list(histories)
    last = len(histories[names[0]].entropy) - 1
    stride = max(1, last // rows)
    steps = sorted(set(range(0, last, stride)) | {last})
    head = f"{'step':>5} " + " ".join(f"{n + ' R':>10} {n + ' H':>10}" for n in names)
    lines = [head, "-" * len(head)]
    for s in steps:
        cells = " ".join(f"{histories[n].reward[s]:>10.3f} {histories[n].entropy[s]:>10.3f}" for n in names)
        lines.append(f"{s:>5} {cells}")
    return lines


def summary(v: Verdict, start_entropy: float) -> List[str]:
    base_h, base_r = v.final_entropy[BASELINE], v.final_reward[BASELINE]
    lines = [f"plain PG: entropy {start_entropy:.2f} -> {base_h:.3f} nats, reward -> {base_r:.3f} (entropy collapse)"]
    for m, h in v.final_entropy.items():
        if m != BASELINE:
            lines.append(f"{m:<9} keeps entropy {h:.3f} nats ({h / max(base_h, 1e-12):.1f}x plain PG's), "
                         f"reward {v.final_reward[m]:.3f}")
    lines.append("claim (plain PG ends with the lowest entropy): " + ("HOLDS" if v.collapse_holds else "FAILS"))
    f = v.fit
    lines.append(f"law fit on plain PG ({f.points} points): R = -{f.a:.4f} * exp(H) + {f.b:.4f}  "
                 f"(RMSE {f.rmse:.4f}, R^2 {f.r2:.3f})")
    lines.append(f"predicted ceiling at H -> 0: R = b - a = {f.ceiling:.4f}")
    return lines
