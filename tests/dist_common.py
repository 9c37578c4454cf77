"""Real process groups on CPU for the scale-out tests (SPEC §3.3): gloo over localhost.

``run_world(fn, world_size, *args)`` spawns ``world_size`` fresh processes, joins them into one gloo
group on a free port, calls ``fn(rank, world_size, *args)`` in each and returns the ``fn`` results
in rank order (anything ``torch.save`` can write). An exception in any rank fails the caller with
that rank's traceback. ``fn`` must be a module-level function (spawned children import it).

A world costs a few seconds to start (each child imports torch and entropy_ops), so a test should
check many cases inside one world rather than spawn one world per case.
"""
import os
import socket
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(rank, world_size, port, out_dir, fn, args):
    torch.set_num_threads(1)  # the workers share this machine's cores
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_world(fn, world_size: int, *args, timeout: float = 900):
    """Raises (after killing the workers) when the world has not finished in ``timeout`` seconds: a
    collective that some ranks skip hangs the others, and a hung test must fail, not stall CI."""
    with tempfile.TemporaryDirectory() as out_dir:
        context = mp.spawn(_child, args=(world_size, _free_port(), out_dir, fn, args), nprocs=world_size,
                           join=False)
        deadline = time.monotonic() + timeout
        while not context.join(timeout=max(1.0, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                for process in context.processes:
                    process.kill()
                raise TimeoutError(f"a gloo world of {world_size} did not finish in {timeout:.0f} s "
                                   f"(a rank waiting in a collective the others skipped?)")
        return [torch.load(os.path.join(out_dir, f"{r}.pt"), weights_only=False)
                for r in range(world_size)]
