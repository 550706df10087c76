"""The HTML report: sections in order, escaping, offline, and sections skipped cleanly without data."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest

from gradguard._finding import Finding
from gradguard._history import Chunk
from gradguard._store import RunStore
from gradguard.report import write_report
from tests.test_report_data import make_store

pytest.importorskip("matplotlib")

EVIL = "<script>alert(1)</script>"
RUN_SECTIONS = ["gradient-flow", "timeline", "timesteps", "units", "clipping", "update-ratio", "events"]


def section_order(page: str) -> list[str]:
    return re.findall(r'<section id="[^"]*" data-section="([^"]+)"', page)


def figures(page: str) -> list[str]:
    """The SVG text of every embedded figure."""
    return [base64.b64decode(b).decode() for b in re.findall(r'src="data:image/svg\+xml;base64,([^"]+)"', page)]


@pytest.fixture(scope="module")
def full_page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("full")
    make_store(tmp / "run.sqlite").close()
    path = write_report(tmp / "run.sqlite", tmp / "out" / "report.html")
    return path.read_text(encoding="utf-8")


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


@pytest.mark.slow  # a training run of seconds: make test, not make test-fast
def test_user_strings_are_escaped_in_page_and_figures(tmp_path):
    store = make_store(tmp_path / "evil.sqlite", name=EVIL, modules=[EVIL, "b", "c"], steps=40)
    store.add_findings([Finding("NONFINITE", "error", EVIL, [EVIL], {EVIL: EVIL}, EVIL, 3)])
    store.add_event(3, EVIL, {EVIL: EVIL})
    store.close()
    page = write_report(tmp_path / "evil.sqlite", tmp_path / "r.html", title=EVIL).read_text()
    assert "<script" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 8
    for svg in figures(page):
        assert "<script" not in svg


def test_sections_without_data_are_left_out(tmp_path):
    with RunStore(tmp_path / "bare.sqlite", meta={"name": "bare"}) as store:
        n = 5
        steps = np.arange(1, n + 1)
        scalars = {"norm_before": np.full(n, 2.0), "norm_after": np.full(n, 2.0)}  # the rest reads as not measured
        store.write_chunk(Chunk(steps, scalars, [], np.zeros((n, 0))))
    page = write_report(tmp_path / "bare.sqlite", tmp_path / "r.html").read_text()
    assert section_order(page) == ["findings", "run", "timeline", "clipping"]
    assert "No findings" in page and len(figures(page)) == 1


def test_an_empty_store_renders_a_note(tmp_path):
    RunStore(tmp_path / "empty.sqlite").close()
    page = write_report(tmp_path / "empty.sqlite", tmp_path / "r.html").read_text()
    assert "holds no recorded steps" in page and section_order(page) == ["findings", "run"]


@pytest.mark.slow  # a training run of seconds: make test, not make test-fast
def test_several_runs_get_a_comparison_and_one_section_each(tmp_path):
    a = make_store(tmp_path / "a.sqlite", name="no clipping", steps=40, recurrent=False)
    b = make_store(tmp_path / "b.sqlite", name="ClipNorm(1.0)", steps=40, findings=False, recurrent=False)
    page = write_report([a, b], tmp_path / "r.html").read_text()
    order = section_order(page)
    assert order[:2] == ["findings", "comparison"] and order.count("run") == 2
    assert 'id="run-1"' in page and 'id="run-2"' in page
    assert '<span class="run-tag">no clipping</span>' in page  # findings say which run they belong to
    a.close(), b.close()


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
    page = write_report(tmp_path / "run.sqlite", tmp_path / "r.html").read_text()
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
