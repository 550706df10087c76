"""`gradguard lab list`, `gradguard lab run` and `gradguard demo`, on tiny budgets."""

from __future__ import annotations

import json

import pytest

from gradguard.cli import main
from gradguard.lab import registry


def test_lab_list_shows_every_experiment_with_claim_anchor_and_time(capsys):
    assert main(["lab", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in listed] == registry.names()
    assert all(e["claim"] and e["anchor"] and e["quick_seconds"] > 0 for e in listed)
    assert main(["lab", "list"]) == 0
    table = capsys.readouterr().out
    assert "clip-threshold" in table and "quick" in table


def test_lab_run_a_tiny_config_writes_results_and_summaries(tmp_path, capsys):
    out = tmp_path / "res"
    rc = main(["lab", "run", "clipping", "--preset", "quick", "--set", "steps=5", "--set", "variants=none,norm", "--set", "length=8", "--set", "hidden=4", "--set", "test_size=20", "--out", str(out), "--device", "cpu", "--workers", "1", "--seeds", "2"])
    assert rc == 0
    result = json.loads((out / "clipping" / "quick" / "result.json").read_text())
    assert result["config"]["steps"] == 5 and result["seeds"] == [0, 1] and len(result["jobs"]) == 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["experiments"][0]["experiment"] == "clipping"
    md = (out / "summary.md").read_text()
    assert "`clipping` (preset quick, 2 seed(s))" in md and "Criterion: " in md  # the report's Markdown rendering
    assert list((out / "clipping" / "quick" / "stores").rglob("*.db"))  # run stores for `gradguard report`
    printed = capsys.readouterr().out
    assert "clipping" in printed


def test_lab_run_unknown_name_suggests_close_matches(capsys):
    assert main(["lab", "run", "clipng"]) == 2
    err = capsys.readouterr().err
    assert "unknown experiment 'clipng'" in err and "Did you mean 'clipping'" in err


def test_lab_run_bad_set_is_a_clear_error(tmp_path, capsys):
    assert main(["lab", "run", "bptt", "--set", "length", "--out", str(tmp_path)]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main(["lab", "run", "bptt", "--set", "lenght=3", "--out", str(tmp_path)]) == 2
    assert "Did you mean 'length'" in capsys.readouterr().err


def test_lab_without_subcommand_prints_help(capsys):
    assert main(["lab"]) == 2
    assert "list" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_smoke_runs_the_suite_and_writes_markdown_and_json(tmp_path, capsys):
    from gradguard._cli.demo import DEMO_SUITE

    out = tmp_path / "demo"
    assert main(["demo", "--preset", "smoke", "--out", str(out), "--device", "cpu", "--workers", "1", "--no-stores"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [e["experiment"] for e in summary["experiments"]] == [n for n in registry.names() if n in DEMO_SUITE]
    assert all(e["status"] == "set-up ran (smoke)" for e in summary["experiments"])  # smoke judges no claim
    assert summary["headline"].startswith("smoke preset: the set-up of") and "claims reproduced" not in summary["headline"]
    md = (out / "summary.md").read_text()
    assert md.startswith("# gradguard demo") and all(f"`{name}`" in md for name in DEMO_SUITE)
    printed = capsys.readouterr()
    assert "set-up of" in printed.out and "claims reproduced" not in printed.out and "summary.md" in printed.err


def test_demo_rejects_the_full_preset(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--preset", "full"])
