"""What is measured: a case is one op, one direction, one shape, one dtype, one device.

Bytes moved count the algorithmic minimum (SPEC §4), not what an implementation happens to move:
forward ``N*V*sizeof(dtype) + 4*N*outputs`` (+ ``8*N`` for int64 labels); backward (``bwd``: the
backward alone, forward done outside the timing) ``2*N*V*sizeof(dtype) + 4*N*outputs`` (read
logits, write the gradient); a ``fwd+bwd`` row is timed as one step, so it counts both. Exps
likewise: ``N*V`` per pass over the logits (CPU is exp-bound).
"""
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch

OPS = ("entropy", "logprobs_and_entropy", "top_p_entropy", "min_p_logprobs", "token_stats")
FORWARD_ONLY = ("token_stats",)  # not differentiable: forward rows only
_LABELLED = ("logprobs_and_entropy", "min_p_logprobs", "token_stats")
DIRECTIONS = ("fwd", "fwd+bwd", "bwd")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp64": torch.float64}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

# SPEC §4 headline shapes: the CPU target and the H100 target.
CPU_HEADLINE = (512, 151936)
GPU_HEADLINE = (8192, 151936)
CPU_VOCABS = (32000, 128256, 151936, 262144)
GPU_ROWS = (1024, 8192, 16384)
GPU_VOCABS = (32000, 128256, 151936, 262144)
QUICK_SHAPE = {"cpu": (256, 32000), "cuda": (1024, 32000)}
_OUTPUTS = {"entropy": 1, "logprobs_and_entropy": 2, "top_p_entropy": 1, "min_p_logprobs": 1, "token_stats": 8}


@dataclass(frozen=True)
class Case:
    op: str
    direction: str
    n: int
    v: int
    dtype: torch.dtype
    device: str

    @property
    def shape(self) -> str:
        return f"{self.n}x{self.v}"

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES[self.dtype]

    @property
    def label(self) -> str:
        return f"{self.op} {self.direction} {self.shape} {self.dtype_name}"

    def bytes_moved(self) -> int:
        elem = torch.tensor([], dtype=self.dtype).element_size()
        fwd = self.n * self.v * elem + 4 * self.n * _OUTPUTS[self.op]
        if self.op in _LABELLED:
            fwd += 8 * self.n
        bwd = 2 * self.n * self.v * elem + 4 * self.n * _OUTPUTS[self.op]
        return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[self.direction]

    def exps(self) -> int:
        return self.n * self.v * (2 if self.direction == "fwd+bwd" else 1)


def parse_shapes(text: str) -> List[Tuple[int, int]]:
    """``"512x151936,2048x32000"`` -> ``[(512, 151936), (2048, 32000)]``."""
    shapes = []
    for item in text.split(","):
        try:
            n, v = (int(s) for s in item.lower().strip().split("x"))
        except ValueError:
            raise ValueError(f"--shapes: {item!r} is not NxV (e.g. 512x151936)") from None
        if n < 1 or v < 1:
            raise ValueError(f"--shapes: {item!r} needs N >= 1 and V >= 1")
        shapes.append((n, v))
    return shapes


def default_shapes(device: str) -> List[Tuple[int, int]]:
    """The headline shape first; on CPU the other vocabularies at about the same bytes."""
    if device == "cuda":
        rest = [(n, v) for n in GPU_ROWS for v in GPU_VOCABS if (n, v) != GPU_HEADLINE]
        return [GPU_HEADLINE] + rest
    budget = CPU_HEADLINE[0] * CPU_HEADLINE[1]
    rest = [(max(8, round(budget / v / 8) * 8), v) for v in CPU_VOCABS if v != CPU_HEADLINE[1]]
    return [CPU_HEADLINE] + rest


def build_cases(device: str, dtype: torch.dtype, ops: Sequence[str], shapes, directions=None) -> List[Case]:
    """Without ``directions``: every op forward at every shape, plus ``fwd+bwd`` of the first op
    at the first (headline) shape, and on CUDA its ``bwd`` alone (SPEC §4 has a backward target
    there). With ``directions``: every op x shape x direction."""
    headline = ("fwd", "fwd+bwd", "bwd") if device == "cuda" else ("fwd", "fwd+bwd")
    cases = []
    for n, v in shapes:
        for op in ops:
            wanted = directions or (headline if (n, v) == shapes[0] and op == ops[0] else ("fwd",))
            cases += [Case(op, d, n, v, dtype, device) for d in directions_of(op) if d in wanted]
    return cases


def directions_of(op: str) -> Tuple[str, ...]:
    """The directions ``op`` has rows for: ``fwd`` alone when it is not differentiable."""
    return ("fwd",) if op in FORWARD_ONLY else DIRECTIONS


def make_inputs(case: Case, seed: int = 0):
    """Logits ``[N, V]`` with the spread of real LM logits (std 2) and labels ``[N]`` int64; for
    ``min_p_logprobs`` the labels are the rows' argmax (always kept by the proxy: finite log-probs,
    and a gradient every implementation agrees on; a filtered label's -inf has none)."""
    gen = torch.Generator(device=case.device).manual_seed(seed)
    logits = torch.randn(case.n, case.v, generator=gen, device=case.device, dtype=case.dtype).mul_(2.0)
    labels = torch.randint(0, case.v, (case.n,), generator=gen, device=case.device)
    if case.op == "min_p_logprobs":
        labels = logits.argmax(-1)
    return logits, labels
