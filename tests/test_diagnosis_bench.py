"""The diagnosis benchmark in smoke form: a handful of zoo scenarios, end to end (train, diagnose,
remedy, score), in well under a minute. The full run is ``make bench-diagnosis``."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.diagnosis import run as bench
from benchmarks.diagnosis.train import apply_fix, config
from benchmarks.diagnosis.zoo import BY_NAME, SCENARIOS, SMOKE, SMOKE_STEPS


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_zoo_is_data_and_covers_the_targets():
    broken = [s for s in SCENARIOS if not s.healthy]
    assert len(broken) >= 20 and sum(s.healthy for s in SCENARIOS) >= 5
    for s in broken:
        cfg, unused = apply_fix(s.config(), s.fix)
        assert not unused and cfg != s.config(), s.name  # the known fix is a config change the harness applies
    causes = {c for s in broken for c in s.causes}
    for code in ("LR_TOO_HIGH", "NONFINITE_INPUT", "NONFINITE", "FP16_OVERFLOW", "SCALER_COLLAPSE", "DEAD_UNITS",
                 "LOSS_NOT_AVERAGED", "VANISHING_GRADIENT", "EXPLODING_GRADIENT", "SATURATION", "INIT_SCALE"):
        assert code in causes
    assert sum(s.lr_blowup for s in broken) >= 5


def test_apply_fix_reports_keys_it_cannot_apply():
    cfg, unused = apply_fix(config(lr=1.0), {"lr": 0.1, "warmup_steps": 10, "teleport": True})
    assert cfg["lr"] == 0.1 and cfg["lr_cap"] == 0.1 and cfg["warmup_steps"] == 10 and unused == ["teleport"]


@pytest.fixture(scope="module")
def rows():
    return [bench.score(BY_NAME[name], steps=SMOKE_STEPS) for name in SMOKE]


def test_smoke_scenarios_are_diagnosed_and_remedied(rows):
    by = {r["name"]: r for r in rows}
    for name, row in by.items():
        if row["healthy"]:
            assert row["false_warnings"] == [], f"{name}: {row['findings']}"
            continue
        assert row["top1"], f"{name}: causes {row['causes']}, findings {row['findings']}"
        assert row["remedy"] == "trains", f"{name}: fix {row['fix']} -> {row['remedy_loss']} vs twin {row['twin_loss']}"
    fast = by["lr_sgd_mlp_fast"]
    assert fast["before_nonfinite"] and fast["detected_at"] < fast["first_nonfinite"]


def test_totals_and_table(rows, tmp_path):
    tot = bench.totals(rows)
    assert tot["scenarios"] == sum(not r["healthy"] for r in rows)
    assert 0.0 <= tot["top1"] <= tot["top3"] <= 1.0 and not math.isnan(tot["remedy"])
    table = bench.markdown(rows, tot, before=tot)
    assert "| lr_sgd_mlp_fast |" in table and "top-1 root-cause accuracy" in table
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n## Method\n\nkept\n\n## Diagnosis benchmark\n\nold\n\n## GPU\n\nkept too\n")
    bench.replace_section(doc, table)
    text = doc.read_text()
    assert "old" not in text and "kept\n" in text and "kept too" in text and text.count("## Diagnosis benchmark") == 1


def test_cut_is_the_run_as_it_stood(rows):
    from benchmarks.diagnosis.train import train

    data = train(config(steps=20, probes="business")).data
    early = bench.cut(data, 7)
    assert early.steps.tolist() == list(range(1, 8))
    assert all(s <= 7 for entries in early.records.values() for s, _ in entries)
    assert len(early.scalars["loss"]) == 7 and early.grad_norms.shape[0] == 7
