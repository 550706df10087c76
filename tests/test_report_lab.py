"""Lab results in the report: one claim per experiment, its measured numbers beside its anchor."""

from __future__ import annotations

import json
import re

import pytest

from gradguard.report import data, write_report
from gradguard.report.lab import jobs_table, measured_table

EVIL = "<script>alert(1)</script>"


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def make_lab_results(root, evil=False):
    """What `gradguard lab run` leaves behind: two judged experiments and one interrupted."""
    name = EVIL if evil else "clipping"
    jobs = [{"variant": v, "seed": 0, "seconds": 1.0, "metrics": {"final_loss": loss, "diverged": loss > 1, "curve": [1, 2, 3]}} for v, loss in (("none", 3.2), ("norm", 0.02))]
    _write(
        root / name / "quick" / "result.json",
        {
            "experiment": name,
            "claim": "Clipping the global norm keeps a tanh RNN from diverging at a high learning rate.",
            "anchor": "Pascanu et al. 2013, section 3.2",
            "preset": "quick",
            "seeds": [0],
            "seconds": 2.0,
            "jobs": jobs,
            "created": 2.0,
            "environment": {"gradguard": "0.1.0", "torch": "2.x", "python": "3.11", "cuda": None},
            "device": "cpu",
            "verdict": {"status": "pass", "passed": True, "criterion": "clipped loss < 0.1 and unclipped diverges", "summary": "final loss: none 3.2, norm 0.02", "measured": {"final_loss": {"none": 3.2, "norm": 0.02}}, "scale_limited": False},
        },
    )
    _write(
        root / "long-range" / "quick" / "result.json",
        {
            "experiment": "long-range",
            "claim": "LSTM solves the adding problem at T = 400.",
            "anchor": "Hochreiter & Schmidhuber 1997",
            "preset": "quick",
            "seeds": [0, 1],
            "seconds": 50.0,
            "jobs": [],
            "created": 1.0,
            "verdict": {"status": "not reproduced at quick scale", "passed": False, "criterion": "MSE < 0.0167", "summary": "MSE 0.16 after 500 steps", "measured": {"mse": 0.16, "steps": 500}, "scale_limited": True},
            "errors": {"long-range/lstm.seed1": "Traceback ...\nRuntimeError: out of memory"},
        },
    )
    _write(root / "bptt" / "quick" / "jobs" / "tanh.seed0.json", {"experiment": "bptt", "preset": "quick", "variant": "tanh", "seed": 0, "seconds": 0.5, "metrics": {"ratio": 1e-5}})
    (root / "bptt" / "quick" / "jobs" / "torn.seed1.json").write_text('{"experiment": "bp')  # a torn write is skipped
    return root


def test_claims_come_in_the_order_they_were_judged_with_their_verdicts(tmp_path):
    (lab,) = data.load(make_lab_results(tmp_path))
    assert [(c.experiment, c.status) for c in lab.claims] == [("long-range", "not reproduced at quick scale"), ("clipping", "pass"), ("bptt", "no verdict")]
    long_range, clipping, bptt = lab.claims
    assert clipping.columns == ["", "final_loss"] and clipping.rows == [["none", 3.2], ["norm", 0.02]]
    assert clipping.job_columns == ["variant", "seed", "final_loss", "diverged"]  # the curve (a list) is left out
    assert long_range.rows == [["mse", 0.16], ["steps", 500]] and "RuntimeError: out of memory" in long_range.notes[0]
    assert len(bptt.job_rows) == 1 and bptt.passed is None


def test_the_page_shows_each_claim_beside_its_anchor(tmp_path):
    pytest.importorskip("matplotlib")
    page = write_report(make_lab_results(tmp_path / "lab"), tmp_path / "r.html").read_text()
    statuses = re.findall(r'<article class="claim verdict-(\w+)" id="[^"]+" data-status="([^"]+)"', page)
    assert statuses == [("scale", "not reproduced at quick scale"), ("pass", "pass"), ("none", "no verdict")]
    assert "<h4>Anchor</h4><p class=\"anchor\">Pascanu et al. 2013, section 3.2</p>" in page
    assert '<td class="num">0.02</td>' in page and 'data-section="lab"' in page


def test_lab_strings_are_escaped(tmp_path):
    page = write_report(make_lab_results(tmp_path / "lab", evil=True), tmp_path / "r.html").read_text()
    assert "<script" not in page and "&lt;script&gt;" in page
    md = write_report(tmp_path / "lab", tmp_path / "r.md", format="md").read_text()
    assert "`<script>alert(1)</script>`" in md  # in a code span, shown verbatim


def test_markdown_lists_claims_with_verdicts(tmp_path):
    md = write_report(make_lab_results(tmp_path / "lab"), tmp_path / "r.md", format="md").read_text()
    assert "1 of 3 claims pass" in md
    assert "### PASS: `clipping` (preset quick, 1 seed(s))" in md
    assert "Anchor: Pascanu et al. 2013, section 3.2" in md
    assert "| none | 3.2 |" in md


def test_tables_from_nested_and_flat_measurements():
    assert measured_table({"a": {"x": 1}, "b": {"y": [1.0, None]}}) == (["", "a", "b"], [["x", 1, None], ["y", None, "[1, \u2014]"]])
    assert measured_table({"a": 1, "b": {"x": 2}}) == (["quantity", "value"], [["a", 1], ["b", "x=2"]])
    assert jobs_table([]) == ([], [])


def test_the_real_runner_output_reads(tmp_path):
    runner = pytest.importorskip("gradguard.lab.runner")
    runner.run_experiment("activations", preset="smoke", out=tmp_path, device="cpu", workers=1)
    (lab,) = data.load(tmp_path)
    (claim,) = lab.claims
    assert claim.experiment == "activations" and claim.status == "pass" and claim.anchor.startswith("Pascanu")
    assert ["sigmoid", 0.25] == claim.rows[0][:2]
