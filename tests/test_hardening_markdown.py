"""The Markdown report is inert under every renderer: no tag from a run's strings comes alive,
under Python-Markdown (which takes no backslash escape for "<") as under CommonMark."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gradguard._finding import Finding
from gradguard.report import markdown as md
from gradguard.report import write_report
from tests.test_report_data import make_store

python_markdown = pytest.importorskip("markdown")

EVIL = [
    "<style>body{display:none}</style>",
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<!-- hidden -->",
    "<http://example.com>",
    "</td></tr></table><b>out</b>",
    "&lt;script&gt;",
]
# What the report itself writes: headings, lists, emphasis, code spans, tables.
REPORT_TAGS = {"h1", "h2", "h3", "h4", "p", "ul", "li", "strong", "em", "code", "table", "thead", "tbody", "tr", "th", "td"}


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.comments: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_comment(self, data):
        self.comments.append(data)


def tags_of(html: str) -> Tags:
    parser = Tags()
    parser.feed(html)
    return parser


def renderers():
    yield "python-markdown", lambda text: python_markdown.markdown(text, extensions=["tables"])
    try:
        from markdown_it import MarkdownIt
    except ImportError:
        return
    yield "commonmark", MarkdownIt("commonmark").enable("table").render


@pytest.fixture(scope="module")
def evil_report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evil")
    store = make_store(tmp / "run.sqlite", name=EVIL[0], recurrent=False, findings=False)
    for i, payload in enumerate(EVIL):
        store.add_event(i, payload, {"details": payload, "reason": payload})
    store.add_findings([Finding("NONFINITE", "error", " ".join(EVIL), ["a"], {"k": EVIL[1]}, EVIL[2])])
    store.close()
    lab = tmp / "lab" / "clipping" / "quick"
    lab.mkdir(parents=True)
    verdict = {"status": EVIL[0], "claim": EVIL[1], "summary": EVIL[2], "criterion": EVIL[5], "measured": {EVIL[3]: 1.0}}
    (lab / "result.json").write_text(json.dumps({"experiment": "clipping", "preset": "quick", "claim": EVIL[1], "anchor": EVIL[4], "verdict": verdict, "jobs": []}))
    return write_report([tmp / "run.sqlite", tmp / "lab"], tmp / "r.md", format="md").read_text()


@pytest.mark.parametrize("name, render", list(renderers()), ids=[n for n, _ in renderers()])
def test_no_tag_from_a_run_comes_alive(evil_report, name, render):
    assert "style" in evil_report and "script" in evil_report  # the strings are in the report, as text
    found = tags_of(render(evil_report))
    assert set(found.tags) <= REPORT_TAGS, f"{name} rendered live tags {set(found.tags) - REPORT_TAGS}"
    assert not found.comments
    assert "a" not in found.tags  # no autolink either


@given(st.text(alphabet=st.sampled_from(list("<>/&;#!?[]()`*\\|_ -abcsty1")), max_size=40))
def test_escaped_text_never_renders_a_tag(s):
    """Mid-line, as the report places it: the most escaped text can do is emphasis."""
    found = tags_of(python_markdown.markdown("x " + md.text(s)))
    assert set(found.tags) <= {"p", "em", "strong"}, (s, md.text(s))
    assert not found.comments


def test_plain_comparisons_stay_readable():
    assert md.text("x < 0 and y > 1") == "x < 0 and y > 1"
    assert md.text("[0.1, 0.2]") == "[0.1, 0.2]"
    assert md.text("<b>") == "&lt;b>"
