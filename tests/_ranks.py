"""Run a function on several CPU ranks (gloo) and bring each rank's result back to the test.

Each rank is a fresh spawned process with a gloo process group rendezvousing through a file
(no ports, so parallel test runs on one machine cannot collide). A rank's return value, or its
traceback, travels back through ``torch.save``. A rank that is still running after ``timeout``
seconds is killed and reported: a skip decision that differs between ranks shows up here as a
hang, so every distributed test goes through this deadline.
"""

from __future__ import annotations

import datetime
import os
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

COLLECTIVE_TIMEOUT_S = 30  # a collective waiting longer than this raises on its rank


def _rank_main(fn: Callable[..., Any], rank: int, world_size: int, folder: str, args: tuple) -> None:
    torch.set_num_threads(1)
    out = os.path.join(folder, f"rank{rank}.pt")
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"file://{os.path.join(folder, 'rendezvous')}",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S),
        )
        try:
            result = {"value": fn(rank, world_size, *args)}
        finally:
            dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - the traceback goes back to the test
        result = {"error": traceback.format_exc()}
    torch.save(result, out)


def run_on_ranks(fn: Callable[..., Any], *args: Any, world_size: int = 2, timeout: float = 120.0) -> list[Any]:
    """Call ``fn(rank, world_size, *args)`` on ``world_size`` ranks; return the results in rank order.

    ``fn`` must be importable (a module-level function) because ranks are spawned. Raises
    ``TimeoutError`` when a rank hangs and ``RuntimeError`` with the rank's traceback when it fails.
    """
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="gradguard-ranks-") as folder:
        procs = [ctx.Process(target=_rank_main, args=(fn, rank, world_size, folder, args)) for rank in range(world_size)]
        for proc in procs:
            proc.start()
        deadline = time.monotonic() + timeout
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        hung = [rank for rank, proc in enumerate(procs) if proc.is_alive()]
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
        if hung:
            raise TimeoutError(f"ranks {hung} of {world_size} were still running after {timeout:.0f} s (a hung collective?)")
        results = []
        for rank in range(world_size):
            path = os.path.join(folder, f"rank{rank}.pt")
            if not os.path.exists(path):
                raise RuntimeError(f"rank {rank} exited with code {procs[rank].exitcode} without a result")
            outcome = torch.load(path, weights_only=False)
            if "error" in outcome:
                raise RuntimeError(f"rank {rank} failed:\n{outcome['error']}")
            results.append(outcome["value"])
        return results
