"""`gradguard lab`: list the experiments, or run them (resumable, in parallel where that pays).

    gradguard lab list
    gradguard lab run clipping --preset quick --seeds 3 --out lab-results --device auto
    gradguard lab run all --set steps=100        # every experiment, a config field overridden

Results land in ``OUT/<experiment>/<preset>/`` (one JSON per job, ``result.json`` per
experiment) plus ``OUT/summary.md`` and ``OUT/summary.json``. Interrupt a run and start it again:
finished jobs are kept, nothing runs twice.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path

from gradguard._cli import UsageError

PRESET_CHOICES = ("quick", "standard", "full", "smoke")
DEVICE_CHOICES = ("auto", "cpu", "cuda")


def register(subparsers) -> None:
    p = subparsers.add_parser("lab", help="reproduce the classic vanishing/exploding-gradient claims", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="lab_command", metavar="{list,run}")
    ls = sub.add_parser("list", help="the experiments: name, claim, anchor, quick-preset time")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(handler=list_experiments)
    run = sub.add_parser("run", help="run one or more experiments ('all' for every one)")
    run.add_argument("names", nargs="+", metavar="NAME", help="experiment name(s) from `gradguard lab list`, or 'all'")
    add_run_options(run)
    run.add_argument("--seeds", type=int, default=None, help="seeds per experiment (default: the preset's)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config field, e.g. --set steps=200 (repeatable; tuples as 1,2,3)")
    run.set_defaults(handler=run_experiments)
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])


def add_run_options(p: argparse.ArgumentParser, default_out: str = "lab-results") -> None:
    p.add_argument("--preset", choices=PRESET_CHOICES, default="quick", help="quick: 2 CPU cores, seconds to a few minutes each (see `gradguard lab list`); standard: quick plus the longer runs some claims need; full: paper scale; smoke: a few steps, checks the set-up only")
    p.add_argument("--out", default=default_out, help="results directory (default %(default)s); rerunning into it resumes")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="auto: cuda if available, else cpu")
    p.add_argument("--workers", type=int, default=None, help="processes for CPU jobs (default: one per core; 1 runs everything here)")
    p.add_argument("--no-stores", action="store_true", help="do not keep the per-job run stores (SQLite files for `gradguard report`)")
    p.set_defaults(resumable=True)  # Ctrl-C says: rerun the same command to resume


def check_out_dir(out: str) -> None:
    """``--out`` must be a directory or not exist yet, and not lie under a file."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {out!r} is a file; results go into a directory: pass a new or existing folder, e.g. --out {str(path.with_suffix(''))+'-results'!r}.")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"--out {out!r}: {str(parent)!r} is a file, not a directory; choose another folder.")
            break


def check_override_values(plans, overrides: dict[str, str]) -> None:
    """A --set number must be finite and keep the sign of the preset's value: a count or size
    (steps, batch, hidden...) stays >= 1 and a rate stays > 0, so steps=-5 is refused."""
    for plan in plans:
        preset = plan.experiment.presets[plan.preset]
        for key, text in overrides.items():
            value, default = getattr(plan.config, key), getattr(preset, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not isinstance(default, (int, float)):
                continue
            if not math.isfinite(value):
                raise UsageError(f"--set {key}={text}: {key} must be a finite number (the {plan.preset} preset of {plan.experiment.name} has {default}).")
            if default > 0 and value <= 0:
                bound = "at least 1" if isinstance(default, int) else "> 0"
                raise UsageError(f"--set {key}={text}: {key} must be {bound} (the {plan.preset} preset of {plan.experiment.name} has {default}).")
            if default >= 0 and value < 0:
                raise UsageError(f"--set {key}={text}: {key} must be >= 0 (the {plan.preset} preset of {plan.experiment.name} has {default}).")


def _parse_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}.")
        out[key.strip()] = value.strip()
    return out


def list_experiments(args: argparse.Namespace) -> int:
    from gradguard.lab import registry

    exps = [registry.get(n) for n in registry.names()]
    if args.json:
        import json

        print(json.dumps([{"name": e.name, "claim": e.claim, "anchor": e.anchor, "quick_seconds": e.quick_seconds} for e in exps], indent=1))
        return 0
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        for e in exps:
            print(f"{e.name:<16} ~{e.quick_seconds:>4.0f} s  {e.claim}\n{'':<24}anchor: {e.anchor}")
        return 0
    table = Table(title="gradguard lab experiments", show_lines=True, expand=True)
    table.add_column("name", no_wrap=True)
    table.add_column("claim", ratio=3)
    table.add_column("anchor", ratio=2)
    table.add_column("quick", justify="right", no_wrap=True)
    for e in exps:
        table.add_row(e.name, e.claim, e.anchor, f"~{e.quick_seconds:.0f} s")
    Console().print(table)
    print("quick: measured wall time with the preset's default seeds on 2 CPU cores.")
    return 0


@contextlib.contextmanager
def progress_bar(label: str):
    """A callback for the runner's progress events: a rich progress bar, or one line per job."""
    try:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    except ImportError:
        def plain(event, job, record):
            if event == "done":
                print(f"  done {job.experiment} {job.key} ({record['seconds']:.1f} s)", flush=True)
            elif event == "error":
                print(f"  FAILED {job.experiment} {job.key}: {record['error'].strip().splitlines()[-1]}", flush=True)
        yield plain
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[last]}")) as bar:
        task = bar.add_task(label, total=None, last="")

        def update(event, job, record):
            if event == "total":
                bar.update(task, total=record["total"], completed=record["done"], last=f"{record['done']} resumed" if record["done"] else "")
            elif event == "done":
                bar.update(task, advance=1, last=f"{job.experiment} {job.key}")
            elif event == "error":
                bar.update(task, advance=1, last=f"FAILED {job.experiment} {job.key}")
                bar.console.print(f"[red]job {job.experiment} {job.key} failed:[/]\n{record['error']}")

        yield update


def run_plans(names: list[str], args: argparse.Namespace, overrides: dict[str, str] | None = None, seeds: int | None = None, title: str = "gradguard lab results"):
    """Plan, run, summarise: the shared body of `lab run` and `demo`. Returns (results, seconds)."""
    from gradguard.lab import results as summary
    from gradguard.lab import runner

    check_out_dir(args.out)
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}; --workers 1 runs every job in this process.")
    if seeds is not None and seeds < 1:
        raise UsageError(f"--seeds must be at least 1, got {seeds}.")
    plans = [runner.plan(n, args.preset, seeds, args.out, overrides) for n in names]
    if overrides:
        check_override_values(plans, overrides)
    start = time.perf_counter()
    with progress_bar(f"{len(plans)} experiment(s), {args.preset}") as progress:
        try:
            out = runner.run(plans, device=args.device, workers=args.workers, progress=progress, keep_stores=not args.no_stores)
        except runner.RunLocked as exc:
            raise ValueError(str(exc)) from None
    wall = time.perf_counter() - start
    summary.write_summary(args.out, summary.load_results(args.out), title=title, wall_seconds=wall)
    return out, wall


def run_experiments(args: argparse.Namespace) -> int:
    from gradguard.lab import registry
    from gradguard.lab import results as summary

    names = registry.names() if args.names == ["all"] else [registry.get(n).name for n in args.names]
    results, wall = run_plans(names, args, _parse_overrides(args.overrides), args.seeds)
    summary.print_table(results, title=f"gradguard lab ({args.preset} preset, {wall:.0f} s)")
    print(f"Results: {args.out}/ (summary.md, summary.json, <experiment>/{args.preset}/result.json)", file=sys.stderr)
    return 0 if all(r["verdict"]["status"] != "error" for r in results) else 1
