"""One record of a run: declared step columns, the store by name, the recorder's two ways in,
and the report's findings whether or not the run reached close()."""

from __future__ import annotations

import math
import sqlite3

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import gradguard as gg
from gradguard._metrics import coef, metrics
from gradguard._recorder import Recorder
from gradguard._rundata import COLUMN_NAMES, STEP_COLUMNS, RunData
from gradguard._store import RunStore


def train(guard, model, opt, steps, nan_at=()):
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    for step in range(1, steps + 1):
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        if step in nan_at:
            next(model.parameters()).grad.fill_(math.nan)
        guard.step(opt, loss=loss)


def test_every_column_is_declared_once_with_a_kind_and_a_meaning():
    assert len(set(COLUMN_NAMES)) == len(COLUMN_NAMES)
    assert all(c.kind in ("float", "bool") and c.meaning for c in STEP_COLUMNS)
    assert {"norm_before", "coef", "lr", "skipped"} <= set(COLUMN_NAMES)


def test_lr_is_the_largest_learning_rate_of_the_param_groups():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1}, {"params": model[1].parameters(), "lr": 0.3}])
    guard = gg.Guard(model, clip=1.0, log_every=2)
    train(guard, model, opt, 3)
    opt.param_groups[1]["lr"] = 0.05
    train(guard, model, opt, 1)
    guard.check()  # no optimizer: NaN
    guard.flush()
    lr = guard.history.lr
    assert lr[:3].tolist() == [0.3, 0.3, 0.3] and lr[3] == 0.1 and math.isnan(lr[4])


def test_the_store_writes_and_reads_columns_by_name_and_an_older_file_gains_new_ones(tmp_path):
    path = tmp_path / "old.sqlite"
    with RunStore(path):
        pass
    db = sqlite3.connect(path)  # a store made before `lr` and `coef` existed
    db.execute("ALTER TABLE steps DROP COLUMN lr")
    db.execute("ALTER TABLE steps DROP COLUMN coef")
    db.execute("INSERT INTO steps(step, norm_before, norm_after, clipped, skipped) VALUES (1, 4.0, 1.0, 1, 0)")
    db.commit()
    db.close()
    with RunStore(path) as store:
        cols = store.steps()
        assert math.isnan(cols["lr"][0]) and math.isnan(cols["coef"][0]) and cols["clipped"].tolist() == [True]
        run = RunData.from_store(store)
    assert coef(run.scalars["norm_before"], run.scalars["norm_after"], run.scalars["coef"]).tolist() == [0.25]


def test_an_adapter_feeds_numpy_chunks_and_gets_the_same_record(tmp_path):
    with RunStore(tmp_path / "k.sqlite") as store:
        rec = Recorder(["dense", "out"], store=store, meta={"name": "keras run"})
        rec.add_chunk([1, 2], {"norm_before": [3.0, np.nan], "norm_after": [1.0, np.nan], "skipped": [False, True], "lr": [1e-3, 1e-3]}, [[1.0, 2.0], [np.nan, np.nan]])
        live = rec.run_data()
        stored = RunData.from_store(store)
    for run in (live, stored):
        assert run.steps.tolist() == [1, 2] and run.scalars["skipped"].tolist() == [False, True]
        assert run.scalars["lr"].tolist() == [1e-3, 1e-3] and run.grad_norms[0].tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="expected \\(2, 2\\)"):
        rec.add_chunk([3, 4], {}, np.zeros((2, 3)))


def test_a_run_killed_before_close_gets_the_findings_of_a_closed_one(tmp_path):
    from gradguard.report import data

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = gg.Guard(model, clip=1.0, store=tmp_path / "run.sqlite", log_every=5)
    train(guard, model, opt, 20, nan_at=(7,))
    guard.flush()  # what a SIGKILL after the last flush leaves: no close(), no findings written
    with RunStore(tmp_path / "run.sqlite") as store:
        assert store.findings() == []
        killed = data.from_store(store)
    guard.close()
    with RunStore(tmp_path / "run.sqlite") as store:
        closed = data.from_store(store)
    assert [f.code for f in killed.findings] == [f.code for f in closed.findings]
    assert "NONFINITE" in [f.code for f in killed.findings]


def test_report_without_a_store_opens_no_sqlite(tmp_path, monkeypatch):
    model = nn.Linear(4, 1)
    guard = gg.Guard(model, clip=1.0)
    train(guard, model, torch.optim.SGD(model.parameters(), lr=0.1), 5)

    def refuse(*args, **kwargs):
        raise AssertionError("report() opened a run store")

    monkeypatch.setattr(RunStore, "__init__", refuse)
    page = guard.report(tmp_path / "r.html").read_text()
    assert "Linear" in page


def test_metrics_names_and_coefficient_come_from_one_place():
    m = metrics({"norm_before": 4.0, "norm_after": 1.0, "coef": 0.25, "skipped": False}, active_frac=0.5, skipped=2, module_norms=[("a", 1.0), ("b", math.nan)])
    assert m == {"clip/active_frac": 0.5, "steps/skipped": 2, "grad_norm/pre_clip": 4.0, "grad_norm/post_clip": 1.0, "clip/coef": 0.25, "grad_norm/a": 1.0}
    skipped = metrics({"norm_before": math.nan, "norm_after": math.nan, "skipped": True}, active_frac=0.0, skipped=3)
    assert set(skipped) == {"clip/active_frac", "steps/skipped"}
    assert coef([2.0, 0.0], [1.0, 0.0]).tolist() == [0.5, 1.0]


def test_a_failing_store_warns_once_and_training_goes_on(tmp_path):
    model = nn.Linear(4, 1)
    store = RunStore(tmp_path / "s.sqlite")
    guard = gg.Guard(model, clip=1.0, store=store, log_every=2)
    store.close()  # every write now fails (no connection)
    with pytest.warns(gg.GradGuardWarning, match="could not be written"):
        train(guard, model, torch.optim.SGD(model.parameters(), lr=0.1), 6)
    assert len(guard.history) == 6 and guard.findings() is not None


def test_the_cli_reports_the_findings_of_a_run_that_never_closed(tmp_path, capsys):
    from gradguard.cli import main

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    guard = gg.Guard(model, clip=1.0, store=tmp_path / "run.sqlite", log_every=5)
    train(guard, model, torch.optim.SGD(model.parameters(), lr=0.1), 10, nan_at=(3,))
    guard.flush()
    assert main(["report", str(tmp_path / "run.sqlite"), "-o", "-"]) == 0
    assert "`NONFINITE`" in capsys.readouterr().out


@settings(max_examples=25)
@given(
    n=st.integers(0, 6),
    data=st.data(),
)
def test_any_columns_survive_the_store_by_name(tmp_path_factory, n, data):
    floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
    columns = {}
    for col in STEP_COLUMNS:
        if data.draw(st.booleans(), label=f"has {col.name}"):
            kind = st.booleans() if col.kind == "bool" else floats
            columns[col.name] = np.array(data.draw(st.lists(kind, min_size=n, max_size=n), label=col.name))
    path = tmp_path_factory.mktemp("prop") / "p.sqlite"
    with RunStore(path) as store:
        rec = Recorder(["m"], store=store)
        rec.add_chunk(np.arange(1, n + 1), columns, np.ones((n, 1)))
        back = RunData.from_store(store)
    live = rec.run_data()
    for col in STEP_COLUMNS:
        # NaN reads back as NaN, inf as inf, bools as bools; a column not given reads as not measured
        np.testing.assert_array_equal(back.scalars[col.name], live.scalars[col.name])
        expected = columns.get(col.name)
        if expected is not None:
            np.testing.assert_array_equal(live.scalars[col.name], expected.astype(bool if col.kind == "bool" else float))
