"""pytest-benchmark wrappers over ``entropy_ops.bench``: the ``measure`` fixture times one
implementation on one case with the runner's own building blocks, and attaches what SPEC §4
reports beside the time (bytes moved, exps, GB/s, G exp/s) as ``extra_info``; the saved JSON's
``machine_info`` names the device that ran (the GPU's name on CUDA) and the versions, as the CLI's
CSV rows do."""
import time

import pytest
import torch

import entropy_ops as eo
from entropy_ops.bench import baselines, machine, runner
from entropy_ops.bench.cases import Case, make_inputs


def _measure(benchmark, impl: str, case: Case, seconds: float = 1.0):
    """Rounds fill about ``seconds`` (5 to 50 of them), so fast kernels get a stable median."""
    benchmark.group = case.label
    try:
        step = runner.make_step(baselines.build(impl, case), case, *make_inputs(case))
        step()  # compiles under torch.compile, fails here when a backend is missing
        t0 = time.perf_counter()
        step()
        rounds = min(50, max(5, int(seconds / (time.perf_counter() - t0))))
    except baselines.NotApplicable:
        pytest.skip(f"{impl} has no {case.op}")
    except (baselines.Skip, eo.BackendUnavailableError, eo.NoKernelError) as e:
        pytest.skip(str(e))
    sync = torch.cuda.synchronize if case.device == "cuda" else (lambda: None)

    def timed():
        step.run()
        sync()
    benchmark.pedantic(timed, setup=step.setup, rounds=rounds, iterations=1)
    median_s = benchmark.stats.stats.median
    benchmark.extra_info.update(
        bytes=case.bytes_moved(), exps=case.exps(),
        gb_s=round(case.bytes_moved() / median_s / 1e9, 2), gexp_s=round(case.exps() / median_s / 1e9, 3),
        threads=torch.get_num_threads(),
    )


def pytest_benchmark_update_machine_info(config, machine_info):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    machine_info.update(device=device, device_name=machine.device_name(device), **machine.versions())


@pytest.fixture
def measure(benchmark):
    """``measure(impl, case)``: time ``impl`` on ``case`` (skips when it cannot run here)."""
    return lambda impl, case: _measure(benchmark, impl, case)
