"""The lab runner: atomic result files, resume after SIGKILL (no finished job lost, none run twice),
a worker process dying mid-suite, one runner per results folder, failing jobs, config changes."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradguard.lab import registry, runner

# A stand-in experiment: each job appends "start"/"end" lines to a journal, so the tests can
# count how often each job ran. ``die_once`` names a job whose process kills itself the first
# time (a worker dying mid-suite).
SLEEPY = textwrap.dedent(
    '''
    import os, signal, time
    from dataclasses import dataclass
    from pathlib import Path
    from gradguard.lab.registry import Experiment, Verdict, register

    @dataclass
    class Config:
        jobs: int = 8
        sleep: float = 0.0
        journal: str = ""
        die_once: str = ""
        fail: str = ""

    def variants(cfg):
        return [f"job{i}" for i in range(cfg.jobs)]

    def run(cfg, variant, seed, ctx):
        with open(cfg.journal, "a") as fh:
            fh.write(f"start {variant}.seed{seed} {os.getpid()}\\n")
        if variant == cfg.die_once and not Path(cfg.journal + ".died").exists():
            Path(cfg.journal + ".died").write_text("once")
            os.kill(os.getpid(), signal.SIGKILL)
        if variant == cfg.fail:
            raise RuntimeError("this job fails on purpose")
        time.sleep(cfg.sleep)
        with open(cfg.journal, "a") as fh:
            fh.write(f"end {variant}.seed{seed} {os.getpid()}\\n")
        return {"value": int(variant[3:]) + seed, "inf": float("inf")}

    def judge(cfg, jobs):
        return Verdict(len({j["variant"] for j in jobs}) == cfg.jobs, "every job reported", f"{len(jobs)} jobs", {"jobs": len(jobs)})

    EXPERIMENT = register(Experiment("sleepy", "a test claim", "a test anchor", Config,
                                     {"quick": Config(), "full": Config(), "smoke": Config()},
                                     variants, run, judge, quick_seconds=1.0))
    '''
)

DRIVER = textwrap.dedent(
    """
    import sys
    import labtest_sleepy  # registers "sleepy"
    from gradguard.lab import runner

    if __name__ == "__main__":  # worker processes are spawned: they import this file too
        out, journal, workers, sleep = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
        extra = dict(arg.split("=", 1) for arg in sys.argv[5:])
        plan = runner.plan("sleepy", "quick", 1, out, {"journal": journal, "sleep": sleep, **extra})
        result = runner.run([plan], device="cpu", workers=workers)[0]
        print(result["verdict"]["status"], result.get("errors", ""))
    """
)


@pytest.fixture
def sleepy(tmp_path, monkeypatch):
    (tmp_path / "labtest_sleepy.py").write_text(SLEEPY)
    (tmp_path / "driver.py").write_text(DRIVER)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    sys.modules.pop("labtest_sleepy", None)
    importlib.import_module("labtest_sleepy")
    yield tmp_path
    registry._REGISTRY.pop("sleepy", None)
    sys.modules.pop("labtest_sleepy", None)


def journal_lines(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    return [tuple(line.split()[:2]) for line in path.read_text().splitlines()]


def counts(path: Path, kind: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for k, job in journal_lines(path):
        if k == kind:
            out[job] = out.get(job, 0) + 1
    return out


def driver(tmp: Path, out: Path, journal: Path, workers: int, sleep: float, *extra: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp), str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, str(tmp / "driver.py"), str(out), str(journal), str(workers), str(sleep), *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


# ---------------------------------------------------------------- in-process resume
def test_second_run_resumes_every_job_and_a_config_change_reruns(sleepy, tmp_path):
    journal, out = tmp_path / "journal", tmp_path / "out"
    events = []
    result = runner.run([runner.plan("sleepy", "quick", 2, out, {"journal": str(journal)})], device="cpu", workers=1, progress=lambda e, j, r: events.append(e))[0]
    assert result["verdict"]["status"] == "pass" and len(result["jobs"]) == 16
    assert events.count("done") == 16
    assert math.isinf(result["jobs"][0]["metrics"]["inf"])
    events.clear()
    runner.run([runner.plan("sleepy", "quick", 2, out, {"journal": str(journal)})], device="cpu", workers=1, progress=lambda e, j, r: events.append(e))
    assert events.count("resumed") == 16 and "done" not in events
    assert all(n == 1 for n in counts(journal, "start").values()) and len(counts(journal, "start")) == 16
    # a different config is a different job: nothing is reused
    runner.run([runner.plan("sleepy", "quick", 1, out, {"journal": str(journal), "jobs": "3"})], device="cpu", workers=1)
    assert counts(journal, "start")["job0.seed0"] == 2  # once per config


def test_a_failing_job_is_reported_and_retried_on_the_next_run(sleepy, tmp_path):
    journal, out = tmp_path / "journal", tmp_path / "out"
    events = []
    result = runner.run([runner.plan("sleepy", "quick", 1, out, {"journal": str(journal), "fail": "job2", "jobs": "4"})], device="cpu", workers=1, progress=lambda e, j, r: events.append(e))[0]
    assert result["verdict"]["status"] == "error" and "this job fails on purpose" in next(iter(result["errors"].values()))
    assert events.count("done") == 3 and events.count("error") == 1
    assert not (out / "sleepy" / "quick" / "jobs" / "job2.seed0.json").exists()
    result = runner.run([runner.plan("sleepy", "quick", 1, out, {"journal": str(journal), "fail": "job2", "jobs": "4"})], device="cpu", workers=1)[0]
    assert counts(journal, "start") == {"job0.seed0": 1, "job1.seed0": 1, "job2.seed0": 2, "job3.seed0": 1}


def test_one_runner_per_results_folder(sleepy, tmp_path):
    plan = runner.plan("sleepy", "quick", 1, tmp_path / "out", {"journal": str(tmp_path / "j")})
    with runner._locked(plan.directory):
        with pytest.raises(runner.RunLocked, match="another `gradguard lab` run"):
            runner.run([plan], device="cpu", workers=1)


def test_unknown_device_and_missing_cuda_are_clear_errors(sleepy, tmp_path):
    plan = runner.plan("sleepy", "quick", 1, tmp_path / "out", {"journal": str(tmp_path / "j")})
    with pytest.raises(ValueError, match="device"):
        runner.run([plan], device="tpu")
    if not __import__("torch").cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            runner.run([plan], device="cuda")


# ---------------------------------------------------------------- figure specs
CURVY_FIGURES = (
    registry.Figure("loss", "Loss by step", x="step", x_label="step", y_label="loss", log_y=True, reference="bound", reference_label="a bound",
                    variants=("a*",), hlines=((0.5, "half"),), caption="What to read."),
    registry.Figure("nested.f", "Nested"),
)


@dataclasses.dataclass
class CurvyConfig:
    points: int = 4


@pytest.fixture
def curvy():
    """An in-process experiment that declares figures: its jobs return curves."""

    def run(cfg, variant, seed, ctx):
        return {"loss": [1.0 / (k + 1 + seed) for k in range(cfg.points)], "step": [10, 20, 30, 40], "bound": [1.0] * 4, "nested": {"f": [0.0, float("nan"), 2.0]}}

    presets = {p: CurvyConfig() for p in registry.PRESETS}
    exp = registry.register(registry.Experiment("curvy", "a claim", "an anchor", CurvyConfig, presets, lambda cfg: ["a1", "b"], run,
                                                lambda cfg, jobs: registry.Verdict(True, "c", "s"), quick_seconds=1.0, parallel=False, figures=CURVY_FIGURES))
    yield exp
    registry._REGISTRY.pop("curvy", None)


def test_figure_specs_round_trip_through_result_json(curvy, tmp_path):
    runner.run([runner.plan("curvy", "quick", 2, tmp_path)], device="cpu", workers=1)
    on_disk = json.loads((tmp_path / "curvy" / "quick" / "result.json").read_text())
    assert on_disk["figures"][0] == {"metric": "loss", "title": "Loss by step", "x": "step", "x_label": "step", "y_label": "loss", "log_y": True, "reference": "bound",
                                     "reference_label": "a bound", "variants": ["a*"], "hlines": [[0.5, "half"]], "caption": "What to read."}
    restored = [registry.Figure(**{**d, "variants": tuple(d["variants"]), "hlines": tuple(map(tuple, d["hlines"]))}) for d in on_disk["figures"]]
    assert tuple(restored) == CURVY_FIGURES
    # and the report draws them from the JSON alone: the first for variant a1 only, with its bound
    from gradguard.report import data

    (lab,) = data.load(tmp_path)
    loss, nested = lab.claims[0].figures
    assert [(c.label, c.reference) for c in loss.curves] == [("a1", False), ("a1: a bound", True)]
    assert loss.curves[0].x.tolist() == [10, 20, 30, 40] and loss.log_y and loss.hlines == [(0.5, "half")]
    assert [c.label for c in nested.curves] == ["a1", "b"] and nested.declared


@settings(max_examples=60, deadline=None)
@given(
    texts=st.lists(st.text(max_size=12), min_size=7, max_size=7),
    log_y=st.booleans(),
    variants=st.lists(st.text(min_size=1, max_size=8), max_size=3),
    hlines=st.lists(st.tuples(st.floats(allow_nan=False, allow_infinity=False, width=32), st.text(max_size=8)), max_size=3),
)
def test_any_figure_spec_survives_result_json_into_the_report(texts, log_y, variants, hlines):
    from gradguard import _io
    from gradguard.lab.records import FigureSpec

    metric, title, x, x_label, y_label, reference, caption = texts
    fig = registry.Figure(metric or "m", title or "t", x=x, x_label=x_label, y_label=y_label, log_y=log_y, reference=reference, variants=tuple(variants), hlines=tuple(hlines), caption=caption)
    text = _io.dumps({"figures": [fig.to_dict()]})
    spec = FigureSpec.from_dict(_io.loads(text)["figures"][0])
    assert spec == registry.Figure(fig.metric, fig.title, x=x, x_label=x_label, y_label=y_label, log_y=log_y, reference=reference, variants=tuple(variants), hlines=tuple((float(v), label) for v, label in hlines), caption=caption)


def test_a_figure_spec_is_checked_when_declared():
    with pytest.raises(ValueError, match="metric and a title"):
        registry.Figure("", "t")
    with pytest.raises(TypeError, match="tuple of patterns"):
        registry.Figure("m", "t", variants="adding:*")
    with pytest.raises(TypeError, match="value, label"):
        registry.Figure("m", "t", hlines=((1.0,),))
    with pytest.raises(TypeError, match="registry.Figure"):
        registry.register(registry.Experiment("bad", "c", "a", object, {"quick": 0, "full": 0, "smoke": 0}, list, list, list, 1.0, figures=({"metric": "m"},)))
    assert "bad" not in registry._REGISTRY


# ---------------------------------------------------------------- killed processes
@pytest.mark.slow
def test_sigkill_mid_suite_then_rerun_loses_nothing_and_repeats_nothing(sleepy):
    tmp = sleepy
    out, journal = tmp / "out", tmp / "journal"
    jobs_dir = out / "sleepy" / "quick" / "jobs"
    proc = driver(tmp, out, journal, 2, 0.4)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(jobs_dir.glob("*.json"))) < 3:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # the runner only: its workers must die with it
    proc.wait()
    finished = {p.name: p.read_text() for p in jobs_dir.glob("*.json")}
    assert 3 <= len(finished) < 8
    time.sleep(1.5)  # an orphaned worker would finish its job and write a file in this time
    assert {p.name for p in jobs_dir.glob("*.json")} == set(finished)
    for text in finished.values():
        json.loads(text)  # whole files only
    proc = driver(tmp, out, journal, 2, 0.4)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert stdout.split()[0] == "pass", stdout
    assert len(list(jobs_dir.glob("*.json"))) == 8
    starts = counts(journal, "start")
    for name, text in finished.items():
        assert (jobs_dir / name).read_text() == text  # kept, not rewritten
        assert starts[name.removesuffix(".json")] == 1  # and never started again
    assert all(n == 1 for n in counts(journal, "end").values()) and len(counts(journal, "end")) == 8


@pytest.mark.slow
def test_a_worker_dying_mid_suite_breaks_no_finished_job(sleepy):
    tmp = sleepy
    out, journal = tmp / "out", tmp / "journal"
    proc = driver(tmp, out, journal, 2, 0.2, "die_once=job3")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert stdout.split()[0] == "pass", stdout
    assert (tmp / "journal.died").exists()
    assert counts(journal, "start")["job3.seed0"] == 2  # killed once, run again in a fresh pool
    ends = counts(journal, "end")
    assert len(ends) == 8 and all(n == 1 for n in ends.values())  # every job finished exactly once
