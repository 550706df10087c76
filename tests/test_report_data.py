"""Report data: reading run stores (and only run stores) into plain arrays, and the shared summaries.

``make_store`` builds a demo-like run store by hand (what Guard with probes writes); the other
report tests import it.
"""

from __future__ import annotations

import math
import sqlite3

import numpy as np
import pytest

from gradguard._finding import Finding
from gradguard._rules import diagnose as gg_diagnose
from gradguard._history import Chunk
from gradguard._store import RunStore
from gradguard.report import data

MODULES = ["rnn", "layers.0", "layers.1", "layers.2", "head"]


def make_store(path, steps=120, modules=MODULES, name="demo run", seed=0, recurrent=True, findings=True, skips=(40, 41), log_every=20):
    """A run with every kind of data a report shows: norms that vanish towards the input side,
    a spike, skipped steps, probes every 20 steps, per-time-step vectors, events and findings."""
    rng = np.random.default_rng(seed)
    store = RunStore(path, meta={"name": name, "norm_type": 2.0, "clipper": {"name": "norm", "repr": "ClipNorm(max_norm=1.0)", "max_norm": 1.0}, "versions": {"torch": "2.x"}})
    depth_scale = np.logspace(-4, 0, len(modules))  # input side 1e4 times smaller
    for start in range(1, steps + 1, log_every):
        idx = np.arange(start, min(start + log_every, steps + 1))
        n = len(idx)
        mods = depth_scale[None, :] * np.exp(rng.normal(0, 0.3, (n, len(modules)))) * 3.0
        before = np.sqrt((mods**2).sum(1))
        before[idx == 75] *= 40.0  # a spike
        skipped = np.isin(idx, skips)
        before[skipped] = np.nan
        mods[skipped] = np.nan
        threshold = np.full(n, 1.0)
        clipped = (before > threshold) & ~skipped
        after = np.where(clipped, threshold, before)
        loss = 1.0 / np.sqrt(idx) + rng.normal(0, 0.01, n)
        scalars = {"norm_before": before, "norm_after": after, "threshold": threshold, "clipped": clipped, "skipped": skipped, "loss": loss}
        store.write_chunk(Chunk(idx.astype(np.int64), scalars, list(modules), mods))
        # Probes ran on the first step of each chunk, as Guard writes them.
        probes = {
            "error_norm": depth_scale * 0.5,
            "saturation": np.linspace(0.6, 0.05, len(modules)),
            "dead_fraction": np.linspace(0.0, 0.3, len(modules)),
            "update_ratio": np.logspace(-5, -2, len(modules)),
        }
        for metric, values in probes.items():
            store.write_module_stats(int(idx[0]), metric, dict(zip(modules, values.tolist())))
        if recurrent:
            t = np.arange(1, 31)
            store.write_vector(int(idx[0]), modules[0], "timestep_grad_norm", 0.8 ** (30 - t) * (1 + 0.1 * rng.random(30)))
    for s in skips:
        store.add_event(s, "skip", {"reason": "nonfinite", "parameters": [f"{modules[1]}.weight"]})
    store.add_event(75, "spike", {"norm": 40.0, "median": 1.0})
    store.add_event(40, "nonfinite_location", {"module": modules[2], "phase": "backward"})
    if findings:
        store.add_findings(
            [
                Finding("VANISHING_GRADIENT", "error", "Gradient norm falls 1e4-fold from head to rnn.", [modules[0], modules[1]], {"ratio": 1e-4, "threshold": 1e-3}, "Use an LSTM or GRU, or initialise W_hh orthogonally.", 100),
                Finding("GRADIENT_SPIKE", "warning", "Total norm jumped to 40x its running median.", [], {"norm": 40.0, "median": 1.0}, "gg.ClipNorm(max_norm=2.0)", 75),
                Finding("CLIPPING_ALWAYS", "info", "Clipping acted on most steps.", ["(total)"], {"share": 0.9}, "Raise the threshold to about 3.0."),
            ]
        )
    return store


def test_reads_every_table_of_a_store(tmp_path):
    make_store(tmp_path / "run.sqlite").close()
    (run,) = data.load(tmp_path / "run.sqlite")
    assert run.name == "demo run" and run.n_steps == 120
    assert set(run.metrics) == {"grad_norm", "error_norm", "saturation", "dead_fraction", "update_ratio"}
    step, values = run.metrics["error_norm"].latest()
    assert step == 101 and np.allclose(values, np.logspace(-4, 0, 5) * 0.5)
    step, values = run.metrics["grad_norm"].latest()
    assert step == 120  # the latest step with any finite value
    (ts,) = run.timesteps
    assert ts.module == "rnn" and ts.values.shape == (6, 30) and list(ts.steps) == [1, 21, 41, 61, 81, 101]
    # The report ran the rules on the data, and kept what the store held that they did not make again.
    stored = [(f.code, f.severity) for f in run.findings if f.step in (100, 75, None) and f.code in ("VANISHING_GRADIENT", "GRADIENT_SPIKE", "CLIPPING_ALWAYS")]
    assert ("CLIPPING_ALWAYS", "info") in stored
    assert run.findings[: len(gg_diagnose(run))] == gg_diagnose(run)
    assert {e["kind"] for e in run.events} == {"skip", "spike", "nonfinite_location"}


def test_timestep_vectors_of_different_lengths_are_nan_padded(tmp_path):
    with RunStore(tmp_path / "r.sqlite") as store:
        store.write_vector(1, "rnn", "timestep_grad_norm", [1.0, 2.0])
        store.write_vector(2, "rnn", "timestep_grad_norm", [1.0, 2.0, 3.0])
        (ts,) = data.from_store(store).timesteps
    assert ts.values.shape == (2, 3) and math.isnan(ts.values[0, 2]) and ts.values[1, 2] == 3.0


def test_clipping_stats_count_clipped_and_skipped_steps(tmp_path):
    with make_store(tmp_path / "run.sqlite") as store:
        run = data.from_store(store)
    stats = data.clipping_stats(run)
    s = run.columns()
    taken = ~s["skipped"]
    assert stats["skipped steps"] == 2
    assert stats["clipped steps"] == (s["clipped"] & taken).sum()
    assert stats["share clipped"] == pytest.approx((s["clipped"] & taken).sum() / taken.sum())
    coef = (s["norm_after"] / s["norm_before"])[s["clipped"] & taken]
    assert stats["median coefficient (clipped steps)"] == pytest.approx(np.median(coef))
    assert 0 < stats["smallest coefficient"] <= stats["median coefficient (clipped steps)"] <= 1


def test_an_empty_store_has_no_clipping_stats(tmp_path):
    with RunStore(tmp_path / "e.sqlite") as store:
        run = data.from_store(store)
    assert run.n_steps == 0 and data.clipping_stats(run) is None and run.metrics == {}


def test_a_foreign_sqlite_file_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "other.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t(x)")
    db.commit()
    db.close()
    with pytest.raises(ValueError, match="not a gradguard run store"):
        data.load(path)
    db = sqlite3.connect(path)
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    db.close()
    assert tables == ["t"]


def test_a_pickle_is_never_loaded(tmp_path):
    import pickle

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    path = tmp_path / "evil.sqlite"
    path.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(ValueError, match="not a gradguard run store"):
        data.load(path)


def test_missing_paths_and_bad_sources_say_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="run store file"):
        data.load(tmp_path / "nope.sqlite")
    with pytest.raises(TypeError, match="RunStore, a RunData or a path"):
        data.load([42])
    with pytest.raises(ValueError, match="no runs given"):
        data.load([])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither lab results"):
        data.load(tmp_path / "empty")


def test_a_directory_of_run_stores_gives_one_run_each(tmp_path):
    make_store(tmp_path / "a.sqlite", name="a").close()
    make_store(tmp_path / "sub" / "b.sqlite", name="b").close()
    assert [r.name for r in data.load(tmp_path)] == ["a", "b"]


def test_event_details_are_shortened():
    text = data.event_details({"step": 3, "kind": "skip", "parameters": ["x" * 500]}, limit=50)
    assert len(text) == 50 and text.endswith("\u2026") and "step" not in text
