"""Run many (experiment, config, seed) jobs: in parallel where that pays, resumable, atomic.

Every job writes its own result file, ``<out>/<experiment>/<preset>/jobs/<variant>.seed<k>.json``
(a ``records.JobRecord``), atomically through ``gradguard._io`` (temporary file, fsync, rename;
the temporary file is removed when the write fails, e.g. on a full disk), from the process that
ran it. A job whose file
exists with the same config hash is finished and is never run again; a job killed half-way left
no file and runs again from the start. So a killed run, started again, loses no finished job and
repeats none. When an experiment's jobs are all done, its ``judge`` turns them into
``result.json`` (a ``records.Result``) next to the ``jobs`` folder.

Parallelism: CPU jobs of experiments marked ``parallel`` go to a pool of spawned processes, one
thread each (spawned, not forked: forking a process that already ran torch can deadlock). Worker
processes die with the runner (Linux ``PR_SET_PDEATHSIG``), so a killed runner leaves no orphan
that could finish a job behind the back of the next run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import platform
import re
import signal
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gradguard import _io
from gradguard._errors import check_choice, check_int
from gradguard.lab import registry
from gradguard.lab.records import JobRecord, Result, Verdict
from gradguard.lab.registry import Context, Experiment

DEVICES = ("auto", "cpu", "cuda")


# --------------------------------------------------------------------------- files
def config_hash(cfg: Any) -> str:
    text = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name)


# --------------------------------------------------------------------------- jobs
@dataclass(frozen=True)
class Job:
    experiment: str
    preset: str
    variant: str
    seed: int
    config: Any
    config_hash: str
    directory: Path  # <out>/<experiment>/<preset>
    module: str  # the module that registers the experiment (imported by worker processes)

    @property
    def key(self) -> str:
        return f"{self.variant}.seed{self.seed}"

    @property
    def path(self) -> Path:
        return self.directory / "jobs" / f"{_safe(self.key)}.json"

    @property
    def store_dir(self) -> Path:
        return self.directory / "stores" / _safe(self.key)

    def finished(self) -> JobRecord | None:
        """The job's record when it ran to the end with this config, else None."""
        record = JobRecord.read(self.path)
        if record is not None and record.config_hash == self.config_hash:
            return record
        return None


@dataclass
class Plan:
    """The jobs of one experiment run."""

    experiment: Experiment
    preset: str
    config: Any
    seeds: list[int]
    directory: Path
    jobs: list[Job] = field(default_factory=list)


def plan(name: str, preset: str = "quick", seeds: int | None = None, out: str | os.PathLike = "lab-results", overrides: Mapping[str, str] | None = None) -> Plan:
    """The jobs of experiment ``name`` at ``preset`` (config ``overrides`` applied) for ``seeds`` seeds."""
    exp = registry.get(name)
    check_choice("preset", preset, registry.PRESETS)
    cfg = exp.preset(preset, overrides)
    n_seeds = exp.seeds.get(preset, 1) if seeds is None else check_int("seeds", seeds, minimum=1)
    directory = Path(out) / _safe(name) / preset
    digest = config_hash(cfg)
    variants = list(exp.variants(cfg))
    if len({_safe(v) for v in variants}) != len(variants):
        raise ValueError(f"experiment {name!r} has variants whose file names collide: {variants}")
    jobs = [Job(name, preset, v, s, cfg, digest, directory, exp.run.__module__) for s in range(n_seeds) for v in variants]
    return Plan(exp, preset, cfg, list(range(n_seeds)), directory, jobs)


def resolve_device(device: str) -> torch.device:
    check_choice("device", device, DEVICES)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device (torch.cuda.is_available() is False). Use --device cpu or auto.")
    return torch.device(device)


def _die_with_parent() -> None:
    """Worker initializer: ask Linux to SIGKILL this process when the runner dies."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
            if os.getppid() == 1:  # the runner died before we asked
                os._exit(1)
    torch.set_num_threads(1)


def execute(job: Job, device: str, keep_stores: bool = True) -> dict[str, Any]:
    """Run one job and write its result file; returns the record. Runs in the runner or a worker."""
    if job.module not in sys.modules:
        __import__(job.module)
    exp = registry.get(job.experiment)
    ctx = Context(torch.device(device), job.store_dir if keep_stores else None)
    torch.manual_seed(job.seed)
    start, cpu = time.perf_counter(), time.process_time()
    metrics = exp.run(job.config, job.variant, job.seed, ctx)
    record = JobRecord(job.experiment, job.preset, job.variant, job.seed, metrics, job.config_hash, device, time.perf_counter() - start, time.time(), os.getpid(), time.process_time() - cpu)
    _io.write_json(job.path, record)
    return record.to_dict()


# --------------------------------------------------------------------------- the runner
class RunLocked(RuntimeError):
    """Another runner holds the results directory."""


Progress = Callable[[str, "Job | None", "dict[str, Any] | None"], None]


@contextlib.contextmanager
def _locked(directory: Path):
    """One runner per results folder: a second one would run the same jobs twice."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    fh = open(directory / ".lock", "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RunLocked(f"another `gradguard lab` run is writing to {directory}; wait for it or use another --out.") from None
        yield
    finally:
        fh.close()


def run(
    plans: Sequence[Plan],
    device: str = "auto",
    workers: int | None = None,
    progress: Progress | None = None,
    keep_stores: bool = True,
) -> list[dict[str, Any]]:
    """Run every unfinished job of ``plans``, then judge each experiment; returns the results.

    ``workers``: processes for parallel CPU jobs (None: one per CPU core; 1: all in this process).
    ``progress(event, job, record)`` is called with "total" (job None, record {"total", "done"}),
    "done", "resumed" and "error".
    """
    dev = resolve_device(device)
    emit = progress or (lambda *a: None)
    with contextlib.ExitStack() as stack:
        for p in plans:
            stack.enter_context(_locked(p.directory))
        pending: list[Job] = []
        resumed: list[tuple[Job, dict[str, Any]]] = []
        for p in plans:
            for job in p.jobs:
                record = job.finished()
                if record:
                    resumed.append((job, record.to_dict()))
                else:
                    pending.append(job)
        emit("total", None, {"total": sum(len(p.jobs) for p in plans), "done": len(resumed)})
        for job, record in resumed:
            emit("resumed", job, record)
        errors: dict[str, str] = {}
        n_workers = _worker_count(workers, dev, pending, plans)
        parallel = [j for j in pending if n_workers > 1 and registry.get(j.experiment).parallel]
        # Longest jobs first, so that the pool does not end waiting on one long job (the estimate:
        # an experiment's quick time shared among its jobs; exact order does not matter).
        per_job = {p.experiment.name: p.experiment.quick_seconds / max(1, len(p.jobs)) for p in plans}
        parallel.sort(key=lambda j: -per_job[j.experiment])
        inline = [j for j in pending if not (n_workers > 1 and registry.get(j.experiment).parallel)]
        if parallel:
            _run_pool(parallel, str(dev), n_workers, keep_stores, emit, errors)
        for job in inline:
            _run_one(job, str(dev), keep_stores, emit, errors)
        return [_judge(p, errors, str(dev)) for p in plans]


def _worker_count(workers: int | None, dev: torch.device, pending: list[Job], plans: Sequence[Plan]) -> int:
    if workers is not None:
        return check_int("workers", workers, minimum=1)
    if dev.type != "cpu":
        return 1  # one accelerator: processes would only queue on it
    splittable = [j for j in pending if registry.get(j.experiment).parallel]
    return max(1, min(cpu_count(), len(splittable)))


def cpu_count() -> int:
    """CPU cores this process may run on (respects ``taskset`` and container CPU sets)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _run_one(job: Job, device: str, keep_stores: bool, emit: Progress, errors: dict[str, str]) -> None:
    try:
        emit("done", job, execute(job, device, keep_stores))
    except Exception:
        errors[f"{job.experiment}/{job.key}"] = traceback.format_exc()
        emit("error", job, {"error": traceback.format_exc(limit=3)})


def _run_pool(jobs: list[Job], device: str, n_workers: int, keep_stores: bool, emit: Progress, errors: dict[str, str]) -> None:
    """Jobs in a process pool. A worker that dies (killed, out of memory) breaks the pool: the
    jobs it had not finished are resubmitted to a fresh pool, once."""
    todo = list(jobs)
    for attempt in range(2):
        ctx = multiprocessing.get_context("spawn")
        lost: list[Job] = []
        with ProcessPoolExecutor(max_workers=min(n_workers, len(todo)), mp_context=ctx, initializer=_die_with_parent) as pool:
            futures = {pool.submit(execute, job, device, keep_stores): job for job in todo}
            remaining = set(futures)
            while remaining:
                finished, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                for fut in finished:
                    job = futures[fut]
                    try:
                        emit("done", job, fut.result())
                    except BrokenProcessPool:
                        if record := job.finished():  # it wrote its file before the pool broke
                            emit("done", job, record.to_dict())
                        else:
                            lost.append(job)
                    except Exception as exc:
                        text = "".join(traceback.format_exception(exc))
                        errors[f"{job.experiment}/{job.key}"] = text
                        emit("error", job, {"error": text})
        if not lost:
            return
        todo = lost
        if attempt == 1:
            for job in lost:
                errors[f"{job.experiment}/{job.key}"] = "its worker process died twice"
                emit("error", job, {"error": "worker process died"})


def _judge(p: Plan, errors: Mapping[str, str], device: str) -> dict[str, Any]:
    """Turn an experiment's finished jobs into ``result.json`` (or an error result)."""
    exp = p.experiment
    records = [job.finished() for job in p.jobs]
    failed = {k: v for k, v in errors.items() if k.startswith(exp.name + "/")}
    done = [r for r in records if r]
    if failed or len(done) < len(records):
        verdict = Verdict(False, "", f"{len(failed) or len(records) - len(done)} job(s) failed", error=True)
    else:
        verdict = exp.judge(p.config, [r.brief() for r in done])
        if p.preset == "smoke":
            verdict.setup_only = True  # a smoke run only checks that the code runs end to end
    result = Result(
        experiment=exp.name,
        claim=exp.claim,
        anchor=exp.anchor,
        short_anchor=exp.short_anchor or exp.anchor,
        preset=p.preset,
        verdict=verdict,
        seeds=p.seeds,
        config=dataclasses.asdict(p.config),
        config_hash=config_hash(p.config),
        device=device,
        environment=environment(),
        seconds=sum(r.seconds for r in done),
        cpu_seconds=sum(r.cpu_seconds for r in done),
        jobs=done,
        figures=list(exp.figures),
        errors=failed,
        created=time.time(),
    )
    result.write(p.directory / "result.json")
    return _io.from_json(_io.to_json(result.to_dict()))  # as a reader of result.json sees it


def environment() -> dict[str, Any]:
    from gradguard import __version__

    return {
        "gradguard": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def run_experiment(name: str, preset: str = "quick", seeds: int | None = None, out: str | os.PathLike = "lab-results", device: str = "auto", overrides: Mapping[str, str] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Plan and run one experiment; returns its result (also written to ``result.json``)."""
    return run([plan(name, preset, seeds, out, overrides)], device=device, **kwargs)[0]

