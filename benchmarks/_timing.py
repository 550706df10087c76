"""Interleaved timing: contenders run in rounds (A B C, B C A, ...), so drift in the machine's
speed (other processes, clock changes, thermal limits) falls on every contender alike.

Each round times a block of back-to-back calls of each contender and keeps the time per call.
Reported: the median per contender, its interquartile range, the ratio of medians to the
baseline, and the median and quartiles of the per-round (paired) ratios: a contender and the
baseline timed moments apart in one round share the machine's state, so their ratio is steadier
than either time. Medians, not means: a preempted
round on a shared machine moves a mean but barely moves a median.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Summary:
    """Seconds per call of one contender, and its ratio to the baseline."""

    name: str
    median: float
    q1: float
    q3: float
    rounds: int
    ratio: float  # median / baseline median
    paired: float  # median of the per-round ratios to the baseline (contender and baseline of one round)
    ratio_q1: float  # quartiles of those per-round ratios
    ratio_q3: float

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "median_s": self.median,
            "q1_s": self.q1,
            "q3_s": self.q3,
            "rounds": self.rounds,
            "ratio": self.ratio,
            "paired_ratio": self.paired,
            "ratio_q1": self.ratio_q1,
            "ratio_q3": self.ratio_q3,
        }


@dataclass(frozen=True)
class Task:
    """A contender: ``run`` is timed; ``setup`` runs untimed before each timed block (to put state
    back where the measurement wants it); one call of ``run`` does ``units`` units of work (steps),
    and times are reported per unit."""

    run: Callable[[], object]
    setup: Callable[[], object] | None = None
    units: int = 1


def interleave(
    contenders: Mapping[str, Callable[[], object] | Task],
    *,
    rounds: int,
    warmup: int = 2,
    min_block: float = 0.0,
    sync: Callable[[], None] = lambda: None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds per unit of work of each contender, one sample per round.

    A timed block repeats a contender's call enough times to last ``min_block`` seconds (from the
    warm-up's timing), so short calls are not lost in timer resolution. ``sync`` runs before and
    after each timed block (``torch.cuda.synchronize`` on a GPU), so a block's time covers the
    work it queued and nothing queued before it. ``clock`` reads seconds: wall time by default;
    ``time.thread_time`` (CPU time of this thread) for single-threaded CPU work on a shared
    machine, where it leaves out the time other processes hold the core.
    """
    tasks = {name: c if isinstance(c, Task) else Task(c) for name, c in contenders.items()}
    names = list(tasks)
    calls = dict.fromkeys(names, 1)
    for _ in range(max(1, warmup)):
        for name in names:
            elapsed = _block(tasks[name], 1, sync, clock)
            if min_block > 0:
                calls[name] = max(1, math.ceil(min_block / max(elapsed, 1e-9)))
    samples: dict[str, list[float]] = {name: [] for name in names}
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()  # a collection inside one contender's block would be charged to it alone
    try:
        for r in range(rounds):
            shift = r % len(names)  # rotate the order so no contender always runs first
            for name in names[shift:] + names[:shift]:
                task = tasks[name]
                samples[name].append(_block(task, calls[name], sync, clock) / (calls[name] * task.units))
    finally:
        if enabled:
            gc.enable()
    return samples


def _block(task: Task, calls: int, sync: Callable[[], None], clock: Callable[[], float]) -> float:
    if task.setup is not None:
        task.setup()
    sync()
    start = clock()
    for _ in range(calls):
        task.run()
    sync()
    return clock() - start


def summarize(samples: Mapping[str, list[float]], baseline: str) -> list[Summary]:
    """Median, quartiles and ratio to ``baseline`` for each contender, in input order."""
    base = np.asarray(samples[baseline])
    base_median = float(np.median(base))
    out = []
    for name, values in samples.items():
        v = np.asarray(values)
        paired = v / base
        q1, med, q3 = np.percentile(v, [25, 50, 75])
        r1, rm, r3 = np.percentile(paired, [25, 50, 75])
        out.append(Summary(name, float(med), float(q1), float(q3), len(v), float(med) / base_median, float(rm), float(r1), float(r3)))
    return out


def count_ops(fn: Callable[[], object]) -> int:
    """Tensor operator calls (ATen ops, views included) made by one call of ``fn``.

    Small operators cost a few microseconds each on a CPU thread and a kernel launch each on a
    GPU, whatever their size, so this count explains most of a fixed per-call cost.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    calls = [0]

    class Counter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            calls[0] += 1
            return func(*args, **(kwargs or {}))

    with Counter():
        fn()
    return calls[0]
