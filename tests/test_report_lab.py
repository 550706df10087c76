"""Lab results in the report: one claim per experiment, its measured numbers beside its anchor."""

from __future__ import annotations

import json
import re

import numpy as np
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
    assert claim.experiment == "activations" and claim.status == "set-up ran (smoke)" and claim.anchor.startswith("Pascanu")
    assert ["sigmoid", 0.25] == claim.rows[0][:2]


# ---------------------------------------------------------------------- figures
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from gradguard.lab.records import FigureSpec, JobRecord  # noqa: E402
from gradguard.report import lab as lab_report  # noqa: E402
from gradguard.report.lab import aggregate  # noqa: E402


def lab_figures(jobs, specs):
    """The report's figures of jobs and specs written as result.json holds them."""
    return lab_report.lab_figures([JobRecord.from_dict(j) for j in jobs], [s for s in map(FigureSpec.from_dict, specs) if s])

BPTT_SPEC = {"metric": "ratio", "title": "Ratio k steps back", "x_label": "k", "y_label": "ratio", "log_y": True, "reference": "bound", "reference_label": "bound s^k"}
LOSS_SPEC = {"metric": "loss_curve", "title": "Training loss", "x": "loss_curve_step", "x_label": "step", "y_label": "loss", "variants": ["norm", "n*ne"], "hlines": [[0.1667, "baseline"]]}


def _job(variant, seed, **metrics):
    return {"variant": variant, "seed": seed, "seconds": 0.1, "metrics": metrics}


def write_result(root, name, jobs, figures=None, verdict_status="pass"):
    result = {"experiment": name, "claim": f"{name} claim", "anchor": "an anchor", "preset": "quick", "seeds": sorted({j["seed"] for j in jobs}), "seconds": 1.0, "jobs": jobs, "created": 1.0,
              "verdict": {"status": verdict_status, "passed": True, "criterion": "c", "summary": "s", "measured": {}}}
    if figures is not None:
        result["figures"] = figures
    _write(root / name / "quick" / "result.json", result)
    return root


def bptt_jobs(seeds=2):
    jobs = []
    for seed in range(seeds):
        for s in (0.5, 3.0):
            jobs.append(_job(f"tanh-s{s:g}", seed, ratio=[(s * (0.9 + 0.1 * seed)) ** k for k in range(6)], bound=[s**k for k in range(6)], lambda_1=s))
        jobs.append(_job("lstm", seed, ratio=[0.5**k for k in range(6)], lambda_1=None))
    return jobs


def test_seeds_aggregate_by_the_geometric_mean_checked_by_hand():
    notes = []
    line = aggregate("v", [(None, np.array([1.0, 100.0, 4.0])), (None, np.array([100.0, 1.0, 9.0]))], notes)
    assert line.y == pytest.approx([10.0, 10.0, 6.0])  # sqrt(1 * 100), sqrt(100 * 1), sqrt(4 * 9)
    assert line.low.tolist() == [1.0, 1.0, 4.0] and line.high.tolist() == [100.0, 100.0, 9.0] and line.seeds == 2
    line = aggregate("v", [(None, np.array([-1.0, 2.0])), (None, np.array([3.0, 4.0]))], notes)  # not all positive
    assert line.y.tolist() == [1.0, 3.0] and not notes
    one = aggregate("v", [(None, np.array([0.1, 0.3]))], notes)
    assert one.y.tolist() == [0.1, 0.3] and one.low is None  # one seed: its values exactly, no band


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(st.floats(1e-30, 1e30), min_size=1, max_size=12), min_size=1, max_size=5))
def test_aggregate_is_the_pointwise_geometric_mean_of_the_shortest_prefix(seeds):
    notes = []
    line = aggregate("v", [(None, np.array(s)) for s in seeds], notes)
    n = min(map(len, seeds))
    expected = np.exp(np.mean(np.log(np.array([s[:n] for s in seeds])), axis=0))
    assert len(line.y) == len(line.x) == n and line.x.tolist() == list(range(n))
    np.testing.assert_allclose(line.y, expected, rtol=1e-9)
    if len(seeds) > 1:
        assert (line.low <= line.y * (1 + 1e-9)).all() and (line.y <= line.high * (1 + 1e-9)).all()
    assert any("shortest" in note for note in notes) == (len(set(map(len, seeds))) > 1)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["nan", "inf", "-inf"]), st.integers(-5, 5)), max_size=10), min_size=1, max_size=4))
def test_missing_non_finite_and_ragged_values_never_crash(values):
    jobs = [_job("v", seed, curve=v, pairs=[[k, x] for k, x in enumerate(v)]) for seed, v in enumerate(values)]
    for spec in ({"metric": "curve", "title": "c", "log_y": True}, {"metric": "pairs", "title": "p"}):
        figures, notes = lab_figures(jobs, [spec])
        for fig in figures:
            (line,) = fig.curves
            assert len(line.x) == len(line.y) == min(map(len, values))
            assert not np.isinf(line.y).any()  # infinities are gaps, like missing values


def test_ragged_seeds_are_cut_to_the_shortest_and_the_note_says_so(tmp_path):
    jobs = [_job("gru", 0, error_curve=[[100, 0.5], [200, 0.2], [300, 0.01]]), _job("gru", 1, error_curve=[[100, 0.4], [200, None]])]
    (fig,), _ = lab_figures(jobs, [{**BPTT_SPEC, "metric": "error_curve", "reference": ""}])
    (line,) = fig.curves
    assert line.x.tolist() == [100, 200] and line.y[0] == pytest.approx(np.sqrt(0.5 * 0.4)) and line.y[1] == 0.2
    assert any("drawn up to the shortest (2)" in n for n in fig.notes) and any("only some seeds" in n for n in fig.notes)


def test_declared_specs_draw_each_variant_with_its_reference(tmp_path):
    write_result(tmp_path, "bptt", bptt_jobs(), [BPTT_SPEC])
    (lab,) = data.load(tmp_path)
    (fig,) = lab.claims[0].figures
    assert [(c.label, c.reference, c.group) for c in fig.curves] == [("tanh-s0.5", False, 0), ("tanh-s0.5: bound s^k", True, 0), ("tanh-s3", False, 1), ("tanh-s3: bound s^k", True, 1), ("lstm", False, 2)]
    assert fig.declared and fig.log_y and fig.curves[2].y[2] == pytest.approx(np.sqrt(2.7**2 * 3.0**2))


def test_the_page_has_one_figure_per_declared_spec_with_data(tmp_path):
    pytest.importorskip("matplotlib")
    jobs = [_job(v, 0, loss_curve=[1.0, 0.5, "nan"], loss_curve_step=[1, 2, 3]) for v in ("none", "norm", "value")]
    specs = [LOSS_SPEC, {**LOSS_SPEC, "title": "All clippers", "variants": []}, {**LOSS_SPEC, "title": "Absent variants", "variants": ["adding:*"]}, {"metric": "no_such", "title": "Missing"}]
    write_result(tmp_path / "lab", "clipping", jobs, specs)
    page = write_report(tmp_path / "lab", tmp_path / "r.html").read_text()
    article = re.search(r'<article class="claim.*?</article>', page).group(0)
    assert re.findall(r'<figure><img src="data:image/svg\+xml;base64,[^"]+" alt="([^"]+)">', article) == ["Training loss", "All clippers"]
    assert "figure &#x27;Missing&#x27; not drawn: no job has a curve in metric &#x27;no_such&#x27;" in article
    md = write_report(tmp_path / "lab", tmp_path / "r.md", format="md").read_text()
    assert md.count("Figure: ") == 2 and "Figure: Training loss (x: step; y: loss), drawn in the HTML report" in md
    assert "| line | x = 1 | x = 2 | x = 3 |" in md and "| none | 1 | 0.5 | - |" in md


def test_old_results_without_specs_fall_back_to_their_list_metrics(tmp_path):
    (lab,) = data.load(make_lab_results(tmp_path))  # written before figure specs: clipping has "curve" [1, 2, 3]
    _, clipping, bptt = lab.claims
    (fig,) = clipping.figures
    assert (fig.title, fig.declared, fig.log_y, fig.x_label) == ("curve", False, False, "index")
    assert [c.label for c in fig.curves] == ["none", "norm"] and fig.curves[0].y.tolist() == [1, 2, 3]
    assert bptt.figures == []  # its one job's ratio is a number, not a curve
    old_bptt = [{**j, "metrics": {k: v for k, v in j["metrics"].items()}} for j in bptt_jobs(1)]
    write_result(tmp_path / "old", "bptt", old_bptt)  # no "figures" key at all
    (old,) = data.load(tmp_path / "old")
    ratio, bound = old.claims[0].figures
    assert (ratio.title, bound.title) == ("ratio", "bound") and ratio.log_y and bound.log_y  # 1 to 3^5: over 100x
    assert [c.label for c in bound.curves] == ["tanh-s0.5", "tanh-s3"]  # lstm has no bound
    ragged = [_job("a", 0, c=[1, 2, 3], flags=[True, False]), _job("b", 0, c=[1, 2])]
    assert lab_figures(ragged, [])[0] == []  # lengths differ across jobs, flags are no numbers: nothing drawn


def test_old_results_render_with_figures_in_html(tmp_path):
    pytest.importorskip("matplotlib")
    write_result(tmp_path / "lab", "bptt", bptt_jobs())
    page = write_report(tmp_path / "lab", tmp_path / "r.html").read_text()
    assert re.findall(r'alt="([^"]+)"><figcaption>', page) == ["ratio", "bound"]
    assert "This result declares no figure" in page


def test_jobs_in_progress_get_fallback_figures(tmp_path):
    for seed in (0, 1):
        _write(tmp_path / "bptt" / "quick" / "jobs" / f"lstm.seed{seed}.json", {"experiment": "bptt", "preset": "quick", "variant": "lstm", "seed": seed, "metrics": {"ratio": [1.0, 0.1 ** (seed + 1)]}})
    (lab,) = data.load(tmp_path)
    (fig,) = lab.claims[0].figures
    assert lab.claims[0].status == "no verdict" and fig.curves[0].y == pytest.approx([1.0, np.sqrt(0.1 * 0.01)])


def test_without_matplotlib_lab_figures_become_their_numbers(tmp_path, monkeypatch):
    from gradguard.report import html

    monkeypatch.setattr(html, "available", lambda name: name != "matplotlib")
    write_result(tmp_path / "lab", "bptt", bptt_jobs(1), [BPTT_SPEC])
    page = write_report(tmp_path / "lab", tmp_path / "r.html").read_text()
    assert "<figure>" not in page and "Ratio k steps back (numbers; the figure needs matplotlib)" in page
    assert "<th>x = 0</th>" in page and "<td>tanh-s3: bound s^k</td>" in page


def test_a_figure_with_nothing_finite_says_so_instead_of_drawing(tmp_path):
    pytest.importorskip("matplotlib")
    write_result(tmp_path / "lab", "clipping", [_job("none", 0, loss_curve=["inf", "nan", None])], [{"metric": "loss_curve", "title": "Loss", "log_y": True}])
    page = write_report(tmp_path / "lab", tmp_path / "r.html").read_text()
    assert "<figure>" not in page and "Loss (numbers; no finite value to draw)" in page
