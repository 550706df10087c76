"""The Markdown report: same sections as the page, text escaped, readable in a terminal."""

from __future__ import annotations

import re

import pytest

from gradguard._finding import Finding
from gradguard.report import markdown as md
from gradguard.report import write_report
from tests.test_report_data import make_store

EVIL = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("md")
    make_store(tmp / "run.sqlite").close()
    return write_report(tmp / "run.sqlite", tmp / "report.md", format="md").read_text()


def test_sections_in_the_same_order_as_the_page(report):
    headings = [line for line in report.splitlines() if line.startswith("#")]
    assert headings[:2] == ["# gradguard report: demo run", "## Findings"]
    names = [h.split(" ", 1)[1] for h in headings[2:]]
    assert names == [
        "Run: demo run",
        "Gradient flow",
        "Total gradient norm",
        "Gradient norm per time step: `rnn`",
        "Saturation and dead units",
        "Clipping statistics",
        "Update-to-weight ratio (step 101)",
        "Events",
    ]


def test_findings_carry_severity_evidence_and_remedy(report):
    assert "- **ERROR** `VANISHING_GRADIENT` at step 100: Gradient norm falls 1e4-fold from head to rnn." in report
    assert "  - evidence: ratio = 1.000e-04; threshold = 0.001" in report
    assert "  - remedy: Raise the threshold to about 3.0." in report  # stored, and not made again by the rules
    assert report.index("**ERROR**") < report.index("**WARNING**") < report.index("**INFO**")


def test_tables_are_well_formed(report):
    for block in report.split("\n\n"):
        rows = [r for r in block.splitlines() if r.startswith("|")]
        if rows:
            widths = {r.replace("\\|", "").count("|") for r in rows}
            assert len(widths) == 1, block


def test_user_strings_are_escaped(tmp_path):
    store = make_store(tmp_path / "e.sqlite", name=EVIL, modules=[EVIL, "a|b", "c`d"], recurrent=False, findings=False)
    store.add_findings([Finding("NONFINITE", "error", EVIL + " | *x*", [EVIL], {"k": EVIL}, EVIL)])
    store.close()
    text = write_report(tmp_path / "e.sqlite", tmp_path / "r.md", format="md").read_text()
    outside_code = re.sub(r"(`+)(.+?)\1", "", text)  # module names sit in code spans, shown verbatim
    assert not re.search(r"(?<!\\)<script", outside_code)
    assert "&lt;script>alert(1)&lt;/script> | \\*x\\*" in text  # a pipe outside a table is just text
    assert "| `a\\|b` |" in text  # a pipe in a module name does not split the table cell
    assert "``c`d``" in text


def test_code_spans_survive_backticks():
    assert md.code("plain") == "`plain`"
    assert md.code("a`b") == "``a`b``"
    assert md.code("`x`") == "`` `x` ``"


def test_skipped_steps_read_as_a_phrase(tmp_path):
    make_store(tmp_path / "one.sqlite", steps=200, skips=(150,), recurrent=False).close()
    text = write_report(tmp_path / "one.sqlite", tmp_path / "one.md", format="md").read_text()
    assert "skipped at step 150" in text and "skipped steps: 150" not in text
    make_store(tmp_path / "two.sqlite", steps=60, recurrent=False).close()  # steps 40 and 41
    assert "skipped at steps 40 and 41" in write_report(tmp_path / "two.sqlite", tmp_path / "two.md", format="md").read_text()
    from gradguard.report._summaries import steps_text

    assert steps_text(list(range(10, 20))) == "steps 10\u201319 (10 steps: 10, 11, 12, \u2026)"


def test_events_are_summaries(report):
    events = report[report.index("### Events") :]
    assert "| 40 | skip | step skipped: non-finite gradient in layers.0.weight |" in events
    assert "NaN/Inf first appeared in layers.1 (backward)" in events
    assert "parameters=" not in events and '["' not in events


def test_findings_follow_the_rules_order_per_run(tmp_path):
    from gradguard.report import data

    make_store(tmp_path / "a.sqlite", name="first", recurrent=False).close()
    make_store(tmp_path / "b.sqlite", name="second", recurrent=False, findings=False, seed=1).close()
    runs = data.load([tmp_path / "a.sqlite", tmp_path / "b.sqlite"])
    text = write_report([tmp_path / "a.sqlite", tmp_path / "b.sqlite"], tmp_path / "r.md", format="md").read_text()
    findings = text[text.index("## Findings") : text.index("## All runs")]
    assert findings.index("### first") < findings.index("### second")
    for run, block in zip(runs, findings.split("### ")[1:]):
        codes = re.findall(r"^- \*\*\w+\*\* `(\w+)`", block, flags=re.MULTILINE)
        assert codes == [f.code for f in run.findings]
