"""What the input check costs: Guard's default step with and without it, side by side.

``python -m benchmarks.diagnosis.input_check_cost [--smoke] [--rounds N]``. The same workloads,
batches and timing as the training-step table (``benchmarks/train_step.py``): each contender
trains its own copy of the model, interleaved rounds, one period (10 steps) per timed block. The
"without" contender is the default Guard with its input check taken out of the monitor,
so the difference between the two is the check alone: a forward pre-hook that keeps references on
finite steps. Prints the paired ratios; timings need a quiet machine.
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch

import gradguard as gg
from benchmarks._config import Config
from benchmarks._timing import Task, interleave, summarize
from benchmarks.train_step import PLAIN, _repeat, trainer, workloads

WITH, WITHOUT = "Guard, defaults (input check on)", "Guard, defaults, input check removed"


def without_check(guard: gg.Guard) -> gg.Guard:
    """The same Guard with its input check closed and taken out of the monitor's probe lists."""
    from gradguard._probes._inputs import InputCheck

    monitor = guard.monitor
    probe = next(p for p in monitor.probes if isinstance(p, InputCheck))
    probe.close()
    for probes in (monitor.probes, monitor.periodic, monitor._armed):
        if probe in probes:
            probes.remove(probe)
    return guard


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.diagnosis.input_check_cost", description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--rounds", type=int, default=21)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = Config(device=torch.device("cpu"), smoke=args.smoke)
    rounds = 2 if args.smoke else args.rounds
    print("| model | contender | ms per step | vs plain (paired) | with / without the check (paired) |\n| --- | --- | --- | --- | --- |")
    for work in workloads(cfg):
        torch.manual_seed(0)
        base = work.build()
        gen = torch.Generator().manual_seed(0)
        batches = [work.batch(gen) for _ in range(4)]
        block = 1 if args.smoke else 10
        contenders = {
            PLAIN: trainer(copy.deepcopy(base), batches, work.loss, None),
            WITH: trainer((m := copy.deepcopy(base)), batches, work.loss, gg.Guard(m, clip=1.0)),
            WITHOUT: trainer((m2 := copy.deepcopy(base)), batches, work.loss, without_check(gg.Guard(m2, clip=1.0))),
        }
        tasks = {name: Task(_repeat(step, block), units=block) for name, step in contenders.items()}
        samples = interleave(tasks, rounds=rounds, warmup=1, clock=cfg.clock)
        plain = summarize(samples, PLAIN)
        base_without = {s.name: s for s in summarize(samples, WITHOUT)}
        for s in plain:
            vs = base_without[s.name].paired if s.name == WITH else None
            print(f"| {work.name} | {s.name} | {1000 * s.median:.3f} | {100 * (s.paired - 1):+.1f}% | " + (f"{100 * (vs - 1):+.2f}%" if vs is not None else "") + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
