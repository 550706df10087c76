"""The HTML report: sections in order, escaping, offline, and sections skipped cleanly without data;
static (SVG) and interactive (Bokeh) figures, and the rendering details: captions, tables, events."""

from __future__ import annotations

import base64
import re
import sys

import numpy as np
import pytest

from gradguard._errors import MissingDependencyError
from gradguard._finding import Finding
from gradguard._history import Chunk
from gradguard._store import RunStore
from gradguard.report import data, write_report
from tests.test_report_data import make_store

pytest.importorskip("matplotlib")

EVIL = "<script>alert(1)</script>"
RUN_SECTIONS = ["gradient-flow", "timeline", "timesteps", "units", "clipping", "update-ratio", "events"]


def section_order(page: str) -> list[str]:
    return re.findall(r'<section id="[^"]*" data-section="([^"]+)"', page)


def interactive_figures(page: str) -> list[str]:
    """The names of the interactive figures, in page order."""
    return re.findall(r'<figure class="interactive" data-figure="([^"]*)"', page)


def figures(page: str) -> list[str]:
    """The SVG text of every embedded figure."""
    return [base64.b64decode(b).decode() for b in re.findall(r'src="data:image/svg\+xml;base64,([^"]+)"', page)]


@pytest.fixture(scope="module")
def full_page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("full")
    make_store(tmp / "run.sqlite").close()
    path = write_report(tmp / "run.sqlite", tmp / "out" / "report.html", interactive=False)
    return path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def interactive_page(tmp_path_factory):
    pytest.importorskip("bokeh")
    tmp = tmp_path_factory.mktemp("interactive")
    make_store(tmp / "run.sqlite").close()
    return write_report(tmp / "run.sqlite", tmp / "report.html").read_text(encoding="utf-8")  # interactive by default where Bokeh is there


def test_findings_come_first_then_every_run_section_in_order(full_page):
    assert section_order(full_page) == ["findings", "run", *RUN_SECTIONS]
    # the rules' findings on the data (root causes first), then the stored ones they did not
    # make again; each coloured by its severity, with its evidence and remedy
    cards = re.findall(r'<article class="finding sev-(\w+)">', full_page)
    assert cards[0] == "error" and set(cards) == {"error", "warning", "info"}
    assert "Use an LSTM or GRU, or initialise W_hh orthogonally." in full_page
    assert "<dt>ratio</dt><dd>1.000e-04</dd>" in full_page


def test_every_figure_is_an_embedded_svg_and_the_page_needs_no_network(full_page):
    svgs = figures(full_page)
    assert len(svgs) == 6  # flow, flow heatmap, timeline, time steps, units, update ratio
    assert all(s.startswith("<svg") for s in svgs)
    assert "<script" not in full_page and "<link" not in full_page and "@import" not in full_page
    assert not re.search(r"https?://", full_page)  # SVG namespaces live inside the base64 data
    assert all(src.startswith("data:") for src in re.findall(r'src="([^"]*)"', full_page))


def test_numbers_tables_hold_the_measured_values(full_page):
    # error_norm at the latest probe step (101): depth_scale * 0.5 for the input-side module
    assert "‖dL/dh‖ (step 101)" in full_page
    assert '<td class="num">5.000e-05</td>' in full_page
    assert "share clipped" in full_page and "skipped steps" in full_page


def _evil_store(path):
    store = make_store(path, name=EVIL, modules=[EVIL, "b", "c"], steps=40)
    store.add_findings([Finding("NONFINITE", "error", EVIL, [EVIL], {EVIL: EVIL}, EVIL, 3)])
    store.add_event(3, EVIL, {EVIL: EVIL})
    store.close()
    return path


def test_user_strings_are_escaped_in_page_and_figures(tmp_path):
    page = write_report(_evil_store(tmp_path / "evil.sqlite"), tmp_path / "r.html", title=EVIL, interactive=False).read_text()
    assert "<script" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 8
    for svg in figures(page):
        assert "<script" not in svg


def test_user_strings_stay_data_in_the_interactive_page(tmp_path):
    pytest.importorskip("bokeh")
    page = write_report(_evil_store(tmp_path / "evil.sqlite"), tmp_path / "r.html", title=EVIL).read_text()
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 8
    # the only script elements are BokehJS, the figures' JSON and the call that builds them:
    # a module name never closes or opens one
    opened = re.findall(r"<script\b[^>]*>", page)
    assert len(opened) == page.count("</script>") == 3, opened
    figures_script = re.findall(r"<script>(.*?)</script>", page, flags=re.DOTALL)[-1]
    assert EVIL not in figures_script and "&lt;script&gt;alert(1)&lt;/script&gt;" in figures_script  # in the figures' data, escaped


def test_the_interactive_page_has_every_run_figure_and_needs_no_network(interactive_page):
    assert interactive_figures(interactive_page) == ["gradient-flow", "gradient-heatmap", "timeline-with-loss", "timesteps", "units-panels", "update-ratio"]
    assert figures(interactive_page) == []  # no static copy beside them
    # nothing in the page points outside the file: every src/href attribute is an in-page anchor
    # or data. (BokehJS holds loaders for MathJax and an icon font from a CDN; they run only for
    # TeX labels and icon models, which the report never makes: the browser test checks that the
    # page makes no request.)
    markup = re.sub(r"<script>.*?</script>", "", interactive_page, flags=re.DOTALL)
    for attr in re.findall(r"""\b(?:src|href)\s*=\s*["']([^"']*)["']""", markup):
        assert attr.startswith(("#", "data:")), attr
    assert not re.search(r"https?://", markup)
    assert "<link" not in markup and "@import" not in markup
    assert "cdn.bokeh.org" not in interactive_page  # the library is inlined, not loaded
    scripts = re.findall(r"<script>(.*?)</script>", interactive_page, flags=re.DOTALL)
    assert len(scripts) == 3 and interactive_page.count("Bokeh={}") <= 1
    assert len(interactive_page) < 2_000_000


def test_static_figures_and_the_install_command_without_bokeh(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bokeh", None)  # import bokeh now fails, as when it is not installed
    make_store(tmp_path / "run.sqlite", steps=20, recurrent=False).close()
    page = write_report(tmp_path / "run.sqlite", tmp_path / "r.html").read_text()
    assert len(figures(page)) == 5 and interactive_figures(page) == [] and "<script" not in page
    assert "install Bokeh with: python -m pip install &#x27;gradguard[report]&#x27;" in page
    with pytest.raises(MissingDependencyError, match=r"Install it with: python -m pip install 'gradguard\[report\]'"):
        write_report(tmp_path / "run.sqlite", tmp_path / "r2.html", interactive=True)


def test_sections_without_data_are_left_out(tmp_path):
    with RunStore(tmp_path / "bare.sqlite", meta={"name": "bare"}) as store:
        n = 5
        steps = np.arange(1, n + 1)
        scalars = {"norm_before": np.full(n, 2.0), "norm_after": np.full(n, 2.0)}  # the rest reads as not measured
        store.write_chunk(Chunk(steps, scalars, [], np.zeros((n, 0))))
    page = write_report(tmp_path / "bare.sqlite", tmp_path / "r.html", interactive=False).read_text()
    assert section_order(page) == ["findings", "run", "timeline", "clipping"]
    assert "No findings" in page and len(figures(page)) == 1


def test_an_empty_store_renders_a_note(tmp_path):
    RunStore(tmp_path / "empty.sqlite").close()
    page = write_report(tmp_path / "empty.sqlite", tmp_path / "r.html").read_text()
    assert "holds no recorded steps" in page and section_order(page) == ["findings", "run"]


def test_several_runs_get_a_comparison_and_one_section_each(tmp_path):
    a = make_store(tmp_path / "a.sqlite", name="no clipping", steps=40, recurrent=False)
    b = make_store(tmp_path / "b.sqlite", name="ClipNorm(1.0)", steps=40, findings=False, recurrent=False)
    page = write_report([a, b], tmp_path / "r.html", interactive=False).read_text()
    order = section_order(page)
    assert order[:2] == ["findings", "comparison"] and order.count("run") == 2
    assert 'id="run-1"' in page and 'id="run-2"' in page
    assert '<span class="run-tag">no clipping</span>' in page  # findings say which run they belong to
    # one findings block per run, in the order given, each with its own findings
    blocks = re.findall(r'<div class="run-findings" id="findings-(\d)" data-run="\d"><h3>([^<]*)</h3>', page)
    assert blocks == [("1", "no clipping"), ("2", "ClipNorm(1.0)")]
    a.close(), b.close()


def test_a_comparison_overlays_each_run_by_name(tmp_path):
    pytest.importorskip("bokeh")
    make_store(tmp_path / "a.sqlite", name="no clipping", steps=40, recurrent=False).close()
    make_store(tmp_path / "b.sqlite", name="no clipping", steps=40, recurrent=False, seed=1).close()
    page = write_report([tmp_path / "a.sqlite", tmp_path / "b.sqlite"], tmp_path / "r.html", names=["baseline", "clipped"]).read_text()
    assert interactive_figures(page)[:2] == ["comparison", "comparison-loss"]
    assert interactive_figures(page).count("timeline-with-loss") == 2
    figures_script = re.findall(r"<script>(.*?)</script>", page, flags=re.DOTALL)[-1]
    legend_labels = re.findall(r'"label":\{"type":"value","value":"([^"]*)"\}', figures_script)
    assert legend_labels.count("baseline") == 2 and legend_labels.count("clipped") == 2  # norms and losses
    same = write_report([tmp_path / "a.sqlite", tmp_path / "b.sqlite"], tmp_path / "s.html").read_text()
    assert "no clipping (1)" in same and "no clipping (2)" in same  # two runs of one name stay apart in the legend
    with pytest.raises(ValueError, match="got 1 run name"):
        write_report([tmp_path / "a.sqlite", tmp_path / "b.sqlite"], tmp_path / "x.html", names=["only one"])


def test_findings_are_listed_as_diagnosed_not_resorted(tmp_path):
    make_store(tmp_path / "run.sqlite").close()
    (run,) = data.load(tmp_path / "run.sqlite")
    expected = [(f.code, f.severity) for f in run.findings]
    assert [s for _, s in expected] != sorted((s for _, s in expected), key=["error", "warning", "info"].index)  # a root cause may be a warning before an error
    page = write_report(tmp_path / "run.sqlite", tmp_path / "r.html", interactive=False).read_text()
    shown = re.findall(r'<article class="finding sev-(\w+)"><header><span class="badge">\w+</span><span class="code">(\w+)</span>', page)
    assert [(c, s) for s, c in shown] == expected


def test_forward_order_from_meta_puts_the_input_side_first(tmp_path):
    with RunStore(tmp_path / "o.sqlite", meta={"forward_order": ["c", "b", "a"]}) as store:
        store.write_module_stats(1, "grad_norm", {"a": 3.0, "b": 2.0, "c": 1.0})
    page = write_report(tmp_path / "o.sqlite", tmp_path / "r.html").read_text()
    table = page[page.index('data-section="gradient-flow"') :]
    assert table.index("<td>c</td>") < table.index("<td>b</td>") < table.index("<td>a</td>")


def test_without_matplotlib_the_report_falls_back_to_tables(tmp_path, monkeypatch):
    from gradguard.report import html

    monkeypatch.setattr(html, "available", lambda name: name != "matplotlib")
    make_store(tmp_path / "run.sqlite", steps=20, recurrent=False).close()
    page = write_report(tmp_path / "run.sqlite", tmp_path / "r.html", interactive=False).read_text()
    assert figures(page) == []
    assert "pip install &#x27;gradguard[report]&#x27;" in page
    assert "<th>norm before</th>" in page  # the timeline as a table


def test_write_report_is_atomic_and_validates_its_format(tmp_path):
    make_store(tmp_path / "run.sqlite", steps=20, recurrent=False).close()
    out = tmp_path / "r.md"
    out.write_text("old")
    with pytest.raises(ValueError, match="format must be one of 'html', 'md'.*Did you mean 'html'"):
        write_report(tmp_path / "run.sqlite", out, format="htm")
    assert out.read_text() == "old"
    assert write_report(tmp_path / "run.sqlite", out, format="md") == out
    assert out.read_text().startswith("# gradguard report")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.md", "run.sqlite"]  # no temporary file left


def test_an_in_memory_store_is_reported(tmp_path):
    store = RunStore(":memory:")
    store.write_module_stats(1, "grad_norm", {"layer": 1.0})
    page = write_report(store, tmp_path / "r.html").read_text()
    assert "Run: run" in page and "gradient-flow" in page
    store.close()


# ---------------------------------------------------------------------- rendering details
def _timeline_caption(page: str) -> str:
    part = page[page.index('data-section="timeline"') :]
    return re.search(r"<figcaption>(.*?)</figcaption>", part).group(1)


@pytest.mark.parametrize("interactive", [False, True])
def test_the_timeline_caption_names_only_what_is_drawn(tmp_path, interactive):
    if interactive:
        pytest.importorskip("bokeh")
    with RunStore(tmp_path / "plain.sqlite", meta={"name": "plain"}) as store:  # no clipper, nothing skipped
        n = 30
        store.write_chunk(Chunk(np.arange(1, n + 1), {"norm_before": np.linspace(2, 3, n), "norm_after": np.linspace(2, 3, n)}, [], np.zeros((n, 0))))
    caption = _timeline_caption(write_report(tmp_path / "plain.sqlite", tmp_path / "p.html", interactive=interactive).read_text())
    assert "threshold" not in caption and "riangle" not in caption and "clipping" not in caption
    make_store(tmp_path / "run.sqlite", steps=60, recurrent=False).close()  # ClipNorm(1.0), steps 40 and 41 skipped
    caption = _timeline_caption(write_report(tmp_path / "run.sqlite", tmp_path / "r.html", interactive=interactive).read_text())
    assert "clipping threshold" in caption and "Triangles at the top mark the 2 skipped steps." in caption


def test_table_cells_break_names_only_at_separators(full_page):
    css = full_page[full_page.index("<style>") : full_page.index("</style>")]
    cell_rules = [rule for rule in re.findall(r"([^{}]+)\{([^}]*)\}", css) if re.search(r"(?<![.\w-])(td|th|code)\b", rule[0])]
    assert cell_rules and all("anywhere" not in body for _, body in cell_rules), cell_rules
    assert "<td>layers.<wbr>0</td>" in full_page  # a break opportunity after each dot, none inside a word
    from gradguard.report.html import breakable

    assert breakable("model.encoder.tensor_norm") == "model.<wbr>encoder.<wbr>tensor_<wbr>norm"
    assert breakable("a <b>.c") == "a &lt;b&gt;.<wbr>c"


def test_events_read_as_summaries_not_payload_dumps(tmp_path):
    store = make_store(tmp_path / "run.sqlite", steps=60, recurrent=False)
    ring = list(range(20, 52))
    store.add_event(52, "forensics", {"steps": ring, "total_norm": [1.0] * 31 + [40.0], "loss": [0.5] * 32, "modules": ["a", "b"], "module_norms": [[1.0, 2.0]] * 32})
    store.add_event(52, "spike", {"trigger": "grad_norm", "z": 9.5, "z_threshold": 6.0, "first_module": "layers.1", "first_step": 51})
    store.close()
    page = write_report(tmp_path / "run.sqlite", tmp_path / "r.html", interactive=False).read_text()
    events = page[page.index('data-section="events"') :]
    text = re.sub(r"<wbr>", "", events)
    assert "step skipped: non-finite gradient in layers.0.weight" in text
    assert "recent history kept at the spike: steps 20\u201351 (32 steps: 20, 21, 22, \u2026); total norm 1 to 40; loss 0.5; 2 modules&#x27; norms" in text
    assert "gradient norm spike, z = 9.5 (threshold 6); first module to move: layers.1 at step 51" in text
    assert "NaN/Inf first appeared in layers.1 (backward)" in text
    assert "[20, 21" not in text and "[[1.0" not in text and "parameters=" not in text  # no raw lists
