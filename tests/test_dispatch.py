"""Backend selection (SPEC §1): set_backend / use_backend / ENTROPY_OPS_BACKEND, auto, named
errors for unavailable backends, ``python -m entropy_ops info``."""
import subprocess
import types

import pytest
import torch

import entropy_ops as eo
from conftest import PYTHON, REPO_ROOT, assert_within_eager_bound, eager_entropy, skip_unless_available, subprocess_env
from entropy_ops import _backends
from entropy_ops.reference import entropy_ref

NAMES = ("auto", "cuda", "triton", "cpu", "torch")


def _run(code, **env):
    return subprocess.run([PYTHON, *code], env=subprocess_env(**env), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)


def test_available_backends_reports_each_with_reason():
    backends = eo.available_backends()
    assert set(backends) == {"cuda", "triton", "cpu", "torch"}
    for name, (ok, reason) in backends.items():
        assert isinstance(ok, bool) and isinstance(reason, str)
        if not ok:
            assert reason, f"{name} is unavailable without a reason"
    assert backends["torch"][0]


def test_set_and_use_backend_nest_and_restore():
    eo.set_backend("torch")
    assert eo.get_backend() == "torch"
    with eo.use_backend("cpu"):
        assert eo.get_backend() == "cpu"
        with eo.use_backend("auto"):
            assert eo.get_backend() == "auto"
            eo.set_backend("cuda")  # the process default changes under an override ...
            assert eo.get_backend() == "auto"  # ... which still wins
        assert eo.get_backend() == "cpu"
    assert eo.get_backend() == "cuda"
    eo.set_backend("torch")
    with pytest.raises(KeyError):
        with eo.use_backend("cpu"):
            raise KeyError("boom")
    assert eo.get_backend() == "torch"


def test_use_backend_is_per_thread():
    """A ``with use_backend`` in one thread neither leaks into another thread nor, on exit, pops
    the other thread's own choice."""
    import threading

    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def thread_a():
        with eo.use_backend("torch"):
            a_in.set()
            b_in.wait(30)
        a_out.set()

    def thread_b():
        a_in.wait(30)
        seen["before"] = eo.get_backend()
        with eo.use_backend("cpu"):
            b_in.set()
            a_out.wait(30)
            seen["inside"] = eo.get_backend()
        seen["after"] = eo.get_backend()

    default = eo.get_backend()
    threads = [threading.Thread(target=thread_b), threading.Thread(target=thread_a)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert seen == {"before": default, "inside": "cpu", "after": default}
    assert eo.get_backend() == default


@pytest.mark.parametrize("setter", ["set_backend", "use_backend"])
def test_unknown_backend_names_the_choices(setter):
    eo.set_backend("torch")
    with pytest.raises(ValueError) as info:
        if setter == "set_backend":
            eo.set_backend("gpu")
        else:
            with eo.use_backend("gpu"):
                pass
    message = str(info.value)
    assert "gpu" in message
    for name in NAMES:
        assert name in message
    assert eo.get_backend() == "torch"


def test_use_backend_routes_the_op(monkeypatch):
    """The op really runs on the chosen backend's kernel."""
    calls = []
    kernel = _backends.get_kernel("torch", "entropy")
    spy = kernel._replace(fwd=lambda *a: calls.append("fwd") or kernel.fwd(*a))
    monkeypatch.setitem(_backends.registered_backends()["torch"].kernels, "entropy", spy)
    x = torch.randn(3, 10)
    with eo.use_backend("torch"):
        h = eo.entropy(x)
    assert calls == ["fwd"]
    assert_within_eager_bound(h, entropy_ref(x), eager_entropy(x))


def test_env_sets_default_backend():
    out = _run(["-c", "import entropy_ops as eo; print(eo.get_backend())"], ENTROPY_OPS_BACKEND="torch")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "torch"


def test_bad_env_backend_fails_at_first_call_not_at_import():
    code = ("import torch, entropy_ops as eo\n"
            "try:\n    eo.entropy(torch.randn(2, 3))\nexcept ValueError as e:\n    print('error:', e)")
    out = _run(["-c", code], ENTROPY_OPS_BACKEND="bogus")
    assert out.returncode == 0, out.stderr
    assert "error: ENTROPY_OPS_BACKEND='bogus'" in out.stdout and "auto" in out.stdout


def test_auto_picks_cpu_for_cpu_tensors():
    ok, _ = eo.available_backends()["cpu"]
    with eo.use_backend("auto"):
        for op in ("entropy", "logprobs_and_entropy"):
            for dtype in (torch.float32, torch.bfloat16, torch.float64):
                assert _backends.resolve(op, torch.device("cpu"), dtype) == ("cpu" if ok else "torch")
    assert ok, "entropy_ops._C is not built: auto falls back to torch"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_triton_without_gpu_is_unavailable(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.randn(2, 8)
    with eo.use_backend("triton"):
        with pytest.raises(eo.BackendUnavailableError, match="triton") as info:
            eo.entropy(x)
    reason = eo.available_backends()["triton"][1]
    assert reason and reason in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu_is_unavailable():
    with eo.use_backend("cuda"):
        with pytest.raises(eo.BackendUnavailableError, match="cuda") as info:
            eo.logprobs_and_entropy(torch.randn(2, 8), torch.tensor([1, 2]))
    assert str(info.value).split(":", 1)[1].strip(), "the error must give the reason"


def test_cuda_emulator_takes_cpu_tensors_only(monkeypatch, tmp_path):
    """ENTROPY_OPS_CUDA_EMULATOR (tests/cuda_emu) lets the cuda backend take CPU tensors, with
    device 0 and the null stream; a CUDA tensor's device pointer must never reach its host code."""
    from entropy_ops import _native
    from entropy_ops.backends.native_args import cuda_launch

    cuda = _backends.registered_backends()["cuda"]
    monkeypatch.delenv("ENTROPY_OPS_CUDA_EMULATOR", raising=False)
    assert not cuda.supports_device(torch.device("cpu"))
    missing = str(tmp_path / "_C_cuda.so")
    monkeypatch.setenv("ENTROPY_OPS_CUDA_EMULATOR", missing)
    assert cuda.supports_device(torch.device("cpu"))
    assert cuda_launch(torch.empty(1)) == (0, 0)
    with pytest.raises(RuntimeError, match="ENTROPY_OPS_CUDA_EMULATOR is set"):
        cuda_launch(types.SimpleNamespace(device=torch.device("cuda", 0)))
    module, reason = _native._load_file("entropy_ops._C_cuda", missing)
    assert module is None and "is not a file" in reason and "tests/cuda_emu/build.py" in reason


def test_cpu_backend_runs_when_built():
    ok, reason = eo.available_backends()["cpu"]
    assert ok, reason
    x = torch.randn(4, 50)
    with eo.use_backend("cpu"):
        assert_within_eager_bound(eo.entropy(x), entropy_ref(x), eager_entropy(x))


def test_info_cli_lists_backends_and_auto_picks():
    out = _run(["-m", "entropy_ops", "info"])
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for name in ("cuda", "triton", "cpu", "torch"):
        assert any(line.strip().startswith(name) for line in text.splitlines()), f"{name} missing from info"
    assert "auto picks" in text
    cpu_ok = eo.available_backends()["cpu"][0]
    assert f"entropy -> {'cpu' if cpu_ok else 'torch'}" in text


def test_compiled_function_follows_backend_changes(monkeypatch):
    """A compiled graph is not reused across backends: switching re-resolves (dynamo guards)."""
    calls = []
    for name in ("torch", "cpu"):
        kernel = _backends.get_kernel(name, "entropy")
        spy = kernel._replace(fwd=lambda *a, _k=kernel, _n=name: calls.append(_n) or _k.fwd(*a))
        monkeypatch.setitem(_backends.registered_backends()[name].kernels, "entropy", spy)
    torch._dynamo.reset()
    f = torch.compile(lambda x: eo.entropy(x), fullgraph=True, backend="aot_eager")
    x = torch.randn(3, 8)
    with eo.use_backend("torch"):
        f(x)
    with eo.use_backend("cpu"):
        f(x)
    eo.set_backend("torch")
    f(x)
    assert calls == ["torch", "cpu", "torch"]


def test_a_backend_without_the_kernel_says_so_by_name():
    with pytest.raises(eo.NoKernelError, match="cpu: no kernel for `no_such_op`"):
        _backends._resolve("no_such_op", torch.device("cpu"), torch.float32, "cpu")


@pytest.mark.parametrize("hip", [None, "6.2"])
def test_auto_on_gpu_tensors_never_picks_cuda_under_rocm(monkeypatch, hip):
    """SPEC §1: `auto` never picks `cuda` under ROCm; here with `cuda` made available and Triton not."""
    monkeypatch.setattr(torch.version, "hip", hip)
    monkeypatch.setattr(_backends._REGISTRY["cuda"], "available", lambda: (True, "pretend"))
    monkeypatch.setattr(_backends._REGISTRY["triton"], "available", lambda: (False, "pretend"))
    picked = _backends._resolve("entropy", torch.device("cuda"), torch.bfloat16, "auto")
    assert picked == ("torch" if hip else "cuda")


def test_cpu_kernels_run_in_a_forked_child():
    """The thread pool is per process: a forked child (a DataLoader worker) makes its own instead of
    waiting on the parent's threads, which it did not inherit."""
    import os
    import time

    skip_unless_available("cpu")
    x = torch.randn(64, 5000)
    with eo.use_backend("cpu"):
        expected = eo.entropy(x)  # the parent's pool exists from here on
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: two workers, so the pool is used; report, then leave at once
        try:
            torch.set_num_threads(2)
            with eo.use_backend("cpu"):
                ok = torch.equal(eo.entropy(x), expected)
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    deadline = time.monotonic() + 60
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            pytest.fail("the forked child hung in the CPU kernel (the parent's pool was reused)")
        time.sleep(0.05)
    assert os.read(read, 1) == b"1", "the forked child computed different bits"
