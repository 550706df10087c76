"""What every table needs to know about the run: the device, smoke or full, and how to sync."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Config:
    device: torch.device
    smoke: bool = False
    out: Path = Path("benchmarks/results")

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def mode(self) -> str:
        """Size preset: "smoke" (seconds, checks the scripts), "cpu" or "cuda"."""
        return "smoke" if self.smoke else self.device.type

    def sync(self) -> None:
        """Wait for queued device work: called around every timed block."""
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def pick(self, *, smoke, cpu, cuda):
        return {"smoke": smoke, "cpu": cpu, "cuda": cuda}[self.mode]

    def clock(self) -> float:
        """Seconds. On the CPU: CPU time of this thread. Torch runs single-threaded here (one intra-op
        thread, autograd on the calling thread), so this is the work done, and time the thread
        spends waiting for a core held by another process is not counted. On a GPU: wall time,
        with ``sync`` around each block."""
        return time.perf_counter() if self.cuda else time.thread_time()

    @property
    def timer(self) -> str:
        return "wall clock (time.perf_counter) with torch.cuda.synchronize" if self.cuda else "CPU time of the benchmarking thread (time.thread_time)"
