"""Run the benchmarks: ``python -m benchmarks.run [--smoke] [--device cpu|cuda] [--out DIR]``.

Prints each table as Markdown and writes ``<table>.md`` and ``<table>.json`` to ``--out``, with
``machine.json`` (versions, cores, threads, device, load at the start). ``--smoke`` runs every
table at tiny sizes in seconds: it checks the scripts, its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

import torch

from benchmarks._config import Config
from benchmarks._report import machine, machine_markdown, write_text

# Table modules in the order they run. gpu_syncs needs CUDA and says so on a CPU run.
TABLES = ("grad_pass", "train_step", "clippers", "gpu_syncs", "keras_step")
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, a few rounds: checks that every script runs")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where models and gradients live (default %(default)s)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON and Markdown files (default benchmarks/results)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default %(default)s; recorded in machine.json)")
    p.add_argument("--only", nargs="+", choices=TABLES, metavar="TABLE", help=f"run only these tables: {', '.join(TABLES)}")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("benchmarks: --device cuda asked for, but this machine has no CUDA device; nothing run (skipped).")
        return 0
    # One thread by default: on a small shared machine, a second OpenMP thread waits at every
    # barrier for a core another process holds, and timings swing by 10x or more.
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = Config(device=device, smoke=args.smoke, out=args.out)
    info = machine(device)
    info["mode"] = cfg.mode
    info["timer"] = cfg.timer
    print(machine_markdown(info))
    args.out.mkdir(parents=True, exist_ok=True)
    sections = [machine_markdown(info)]
    for key in args.only or TABLES:
        module = importlib.import_module(f"benchmarks.{key}")
        if getattr(module, "NEEDS_CUDA", False) and not cfg.cuda:
            print(f"({key}: skipped, it needs CUDA: run with --device cuda on a GPU machine)\n", flush=True)
            continue
        start = time.perf_counter()
        tables = module.run(cfg)
        took = time.perf_counter() - start
        for table in tables:
            table.data["seconds"] = round(took, 1)
            table.write(args.out)
            text = table.markdown()
            print(text, flush=True)
            sections.append(text)
        print(f"({key}: {took:.0f} s)\n", file=sys.stderr, flush=True)
    write_text(args.out / "machine.json", json.dumps(info, indent=1) + "\n")
    write_text(args.out / "all.md", "\n".join(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
