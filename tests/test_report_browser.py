"""The HTML report in a real browser: headless Chromium renders demo-like reports offline.

Chromium comes from the Debian package ``chromium``. Where it is missing, the fixture installs it
(as root, with apt-get, under a time limit; set GRADGUARD_NO_INSTALL=1 to forbid that); where it
cannot be had, the tests skip and say why.

The interactive page is driven over the DevTools protocol (``tests/_browser.py``): trusted wheel,
click and hover input on the figures, their data read back from BokehJS, full-page screenshots,
console errors and every network request the page made. One browser serves the whole module.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from gradguard.report import data, write_report
from tests._browser import Browser
from tests.test_report_data import make_store
from tests.test_report_lab import make_lab_results

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

# Starting Chromium and writing the reports take longer than a few seconds on a loaded machine.
pytestmark = pytest.mark.slow

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
EVIL = "<script>alert(1)</script>"
TEX = "$$\\alpha$$"  # Bokeh would typeset this with MathJax from a CDN if it took it for TeX


def _find() -> str | None:
    return next((path for path in map(shutil.which, NAMES) if path), None)


def _install() -> str:
    """Try apt-get; return why Chromium is still missing (or '' when the install worked)."""
    if os.environ.get("GRADGUARD_NO_INSTALL"):
        return "Chromium is not installed and GRADGUARD_NO_INSTALL is set"
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "Chromium is not installed and installing it needs root (apt-get install chromium)"
    if not shutil.which("apt-get"):
        return "Chromium is not installed and there is no apt-get to install it with"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = [(["apt-get", "update"], 300), (["apt-get", "install", "-y", "--no-install-recommends", "chromium"], 900)]
    for cmd, limit in steps:
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit, check=False)
        except subprocess.TimeoutExpired:
            return f"'{' '.join(cmd)}' took more than {limit} s"
        if done.returncode != 0:
            return f"'{' '.join(cmd)}' failed: {done.stderr.strip()[-300:]}"
    return ""


@pytest.fixture(scope="module")
def chromium():
    path = _find()
    if path is None:
        reason = _install()
        path = _find()
        if path is None:
            reason = reason or "apt-get reported success but no chromium binary is on PATH"
            print(f"skipping the browser tests: {reason}")
            pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Like `gradguard demo`: lab claims, and an RNN run without clipping and one with."""
    tmp = tmp_path_factory.mktemp("browser")
    make_store(tmp / "a.sqlite", name="tanh RNN, no clipping", steps=200).close()
    make_store(tmp / "b.sqlite", name="tanh RNN, ClipNorm(1.0)", modules=[EVIL, TEX, "encoder.layers.0.self_attn.out_proj", "head"], steps=200, seed=1).close()
    return [tmp / "a.sqlite", tmp / "b.sqlite", make_lab_results(tmp / "lab")]


@pytest.fixture(scope="module")
def demo_report(stores):
    """The static page (SVG figures, no script)."""
    return write_report(stores, stores[0].parent / "report.html", interactive=False)


@pytest.fixture(scope="module")
def interactive_report(stores):
    pytest.importorskip("bokeh")
    return write_report(stores, stores[0].parent / "interactive.html")


@pytest.fixture(scope="module")
def browser(chromium, tmp_path_factory):
    b = Browser(chromium, str(tmp_path_factory.mktemp("profile")))
    yield b
    b.close()


# Helpers evaluated in the page: views and screen positions of the Bokeh figures.
HELPERS = """
window.gg = {
  ready: async () => {
    for (let i = 0; i < 200 && !(window.Bokeh && Bokeh.documents.length && Bokeh.index.roots.length); i++) await new Promise((r) => setTimeout(r, 50));
    await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    return Bokeh.index.roots.length;
  },
  models: (name) => Bokeh.documents[0].all_models ? [...Bokeh.documents[0].all_models].filter((m) => m.name === name) : [],
  find: (view, model) => {
    if (view.model === model) return view;
    const kids = [...(view.child_views || []), ...(view.renderer_views ? view.renderer_views.values() : [])];
    for (const c of kids) { const f = gg.find(c, model); if (f) return f; }
    return null;
  },
  view: (model) => { for (const r of Bokeh.index.roots) { const f = gg.find(r, model); if (f) return f; } return null; },
  plot: (name, i = 0) => gg.models(name).filter((m) => m.type === "Figure")[i],
  // the plot frame in viewport pixels, after scrolling the figure to the middle of the window
  frame: (name, i = 0) => {
    const v = gg.view(gg.plot(name, i));
    v.el.scrollIntoView({block: "center"});
    const r = v.canvas_view.events_el.getBoundingClientRect(), f = v.frame.bbox;
    return {left: r.left + f.left, top: r.top + f.top, width: f.width, height: f.height, canvas_left: r.left, canvas_top: r.top};
  },
  legend_item: (name, k, i = 0) => {
    const p = gg.plot(name, i), v = gg.view(p);
    v.el.scrollIntoView({block: "center"});
    const legend = [...p.center, ...p.right].find((m) => m.type === "Legend");
    const bb = gg.find(v, legend).bbox, r = v.canvas_view.events_el.getBoundingClientRect();
    const step = legend.glyph_height + legend.spacing;  // items stacked top to bottom
    return {x: r.left + bb.left + legend.padding + legend.glyph_width / 2, y: r.top + bb.top + legend.padding + k * step + legend.glyph_height / 2,
            renderer: legend.items[k].renderers[0].name, label: legend.items[k].label.value};
  },
  series: (name, renderer, i = 0) => {
    const r = gg.plot(name, i).renderers.find((x) => x.name === renderer);
    const d = r.data_source.data, num = (a) => Array.from(a, (v) => (Number.isFinite(v) ? v : null));
    return {x: num(d.x), y: num(d.y), visible: r.visible};
  },
  visible: (name, renderer, i = 0) => gg.plot(name, i).renderers.filter((x) => x.name === renderer).map((x) => x.visible),
  range: (name, i = 0) => { const p = gg.plot(name, i); return {x: [p.x_range.start, p.x_range.end], y: [p.y_range.start, p.y_range.end]}; },
  tooltips: () => {
    const out = [];
    const walk = (root) => { for (const el of root.querySelectorAll("*")) { if (el.shadowRoot) walk(el.shadowRoot); if (typeof el.className === "string" && /tooltip/i.test(el.className) && el.offsetParent !== null) out.push(el.textContent); } };
    walk(document);
    return out;
  },
};
"""


@pytest.fixture(scope="module")
def page(browser, interactive_report):
    """The interactive report, loaded, its figures built, the helpers installed."""
    browser.open(interactive_report.as_uri())
    browser.eval(HELPERS)
    assert browser.eval("gg.ready()") >= 10
    return browser


def test_the_page_has_its_sections_in_the_browser_dom(browser, demo_report):
    browser.open(demo_report.as_uri())
    dom = browser.eval("document.documentElement.outerHTML")
    sections = re.findall(r'<section id="([^"]+)" data-section="([^"]+)"', dom)
    ids = [sid for sid, _ in sections]
    assert ids[:2] == ["findings", "comparison"]
    for run in ("run-1", "run-2"):
        for key in ("gradient-flow", "timeline", "units", "clipping", "update-ratio", "events"):
            assert f"{run}-{key}" in ids
    assert "run-1-timesteps" in ids and ids[-1] == "lab-1"
    assert len(re.findall(r'<article class="claim ', dom)) == 3
    assert len(re.findall(r"<img ", dom)) >= 10
    # the module named like a script tag is text in the DOM, never an element
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    assert "<script" not in dom


def test_the_screenshot_shows_a_rendered_page(browser, demo_report):
    browser.open(demo_report.as_uri())
    pixels = np.asarray(Image.open(io.BytesIO(browser.screenshot(full_page=False))).convert("RGB"), dtype=np.float64)
    assert pixels.shape == (1000, 1280, 3)
    gray = pixels.mean(axis=2)
    assert gray.std() > 20, "the screenshot is (nearly) blank"
    assert (gray < 200).mean() > 0.02, "hardly any ink on the page"
    # the error badge's red (#b42318) is there: the inline CSS was applied
    red = (np.abs(pixels - [0xB4, 0x23, 0x18]).sum(axis=2) < 30).sum()
    assert red > 200


# ---------------------------------------------------------------------- interactive page
def test_every_figure_renders_without_errors_or_requests(page, interactive_report):
    names = page.eval("[...document.querySelectorAll('figure.interactive')].map((f) => f.dataset.figure)")
    assert names[:2] == ["comparison", "comparison-loss"] and names.count("timeline-with-loss") == 2
    # each figure was laid out with a canvas of real size
    sizes = page.eval("[...Bokeh.index.roots].filter((v) => v.model.type === 'Figure').map((v) => [v.canvas_view.bbox.width, v.canvas_view.bbox.height])")
    assert len(sizes) >= 6 and all(w > 200 and h > 100 for w, h in sizes), sizes
    assert page.console_errors() == []
    # offline: the page itself and data: URIs (toolbar icons, lab figures), nothing else; a
    # module named like TeX did not make Bokeh fetch MathJax
    assert page.requests()[0] == interactive_report.as_uri()
    assert all(url.startswith(("data:", interactive_report.as_uri())) for url in page.requests()), [u[:80] for u in page.requests()]
    # scripts: BokehJS, the figures, the call that embeds them; the module named like a script tag is text
    assert page.eval("document.scripts.length") == 3
    assert EVIL in page.eval("gg.models('update-ratio').flatMap((p) => p.renderers.map((r) => r.name)).join(' ')")


def test_the_timeline_holds_the_recorded_norms(page, stores):
    run = data.load(stores[0])[0]
    got = page.eval("gg.series('timeline', 'norm before clipping')")
    assert got["x"] == run.steps.astype(float).tolist()
    want = [None if not np.isfinite(v) else float(v) for v in run.scalars["norm_before"]]
    assert [None if v is None else round(v, 9) for v in got["y"]] == [None if v is None else round(v, 9) for v in want]
    assert page.eval("gg.series('timeline', 'skipped step (2)').x") == [40.0, 41.0]


def test_the_wheel_zooms_the_step_axis_only(page):
    before = page.eval("gg.range('timeline')")
    f = page.eval("gg.frame('timeline')")
    page.wheel(f["left"] + f["width"] / 2, f["top"] + f["height"] / 2, -400)
    after = page.eval("new Promise((r) => setTimeout(() => r(gg.range('timeline')), 100))")
    assert after["x"][1] - after["x"][0] < 0.9 * (before["x"][1] - before["x"][0])  # zoomed in on the steps
    assert after["y"] == before["y"]  # the norm axis stays put
    assert page.eval("gg.range('loss')")["x"] == after["x"]  # the loss below follows the same steps
    page.eval("gg.plot('timeline').reset.emit()")


def test_a_legend_click_hides_and_shows_a_series(page):
    item = page.eval("gg.legend_item('timeline', 0)")
    assert item["label"] == "norm before clipping"
    page.click(item["x"], item["y"])
    assert page.eval("gg.visible('timeline', 'norm before clipping')") == [False]
    page.click(item["x"], item["y"])
    assert page.eval("gg.visible('timeline', 'norm before clipping')") == [True]
    # in the comparison, one entry per run, named after it
    labels = [page.eval(f"gg.legend_item('comparison', {k}).label") for k in range(2)]
    assert labels == ["tanh RNN, no clipping", "tanh RNN, ClipNorm(1.0)"]
    second = page.eval("gg.legend_item('comparison', 1)")
    page.click(second["x"], second["y"])
    assert page.eval("gg.visible('comparison', 'tanh RNN, ClipNorm(1.0)')") == [False]
    assert page.eval("gg.visible('comparison', 'tanh RNN, no clipping')") == [True]
    page.click(second["x"], second["y"])


def test_hover_shows_the_step_and_value(page):
    point = page.eval("""(() => {
      const s = gg.series('timeline', 'norm before clipping'), v = gg.view(gg.plot('timeline')), f = gg.frame('timeline');
      const i = 100;
      return {x: f.canvas_left + v.frame.x_scale.compute(s.x[i]), y: f.canvas_top + v.frame.y_scale.compute(s.y[i]), step: s.x[i], norm: s.y[i]};
    })()""")
    page.mouse("mouseMoved", point["x"], point["y"])
    tips = page.eval("new Promise((r) => setTimeout(() => r(gg.tooltips()), 150))")
    assert any("norm before clipping" in t and f"step: {int(point['step'])}" in t for t in tips), tips
    page.mouse("mouseMoved", 5, 5)


def test_the_interactive_screenshot_shows_drawn_lines(page, tmp_path):
    f = page.eval("gg.frame('timeline')")  # scrolled to the middle of the window
    shot = Image.open(io.BytesIO(page.screenshot(full_page=False))).convert("RGB")
    shot.save(os.environ.get("GRADGUARD_SCREENSHOT", tmp_path / "interactive.png"))  # to look at
    # inside the timeline's frame the norm line's blue (#1f5fbf) is drawn, and the skipped steps' red
    pixels = np.asarray(shot.crop((int(f["left"]), int(f["top"]), int(f["left"] + f["width"]), int(f["top"] + f["height"]))), dtype=np.float64)
    blue = (np.abs(pixels - [0x1F, 0x5F, 0xBF]).sum(axis=2) < 60).sum()
    red = (np.abs(pixels - [0xC0, 0x26, 0x2D]).sum(axis=2) < 60).sum()
    assert blue > 300 and red > 20, (blue, red)
    gray = np.asarray(shot.convert("L"), dtype=np.float64)
    assert gray.std() > 20 and (gray < 200).mean() > 0.02


def test_table_cells_wrap_only_at_separators(browser, demo_report):
    """At a narrow window, every line break inside a table cell follows a separator or a space."""
    browser.call("Emulation.setDeviceMetricsOverride", width=520, height=900, deviceScaleFactor=1, mobile=False)
    try:
        browser.open(demo_report.as_uri())
        bad = browser.eval("""(() => {
          const bad = [];
          for (const td of [...document.querySelectorAll('table.data td')].slice(0, 400)) {
            const walker = document.createTreeWalker(td, NodeFilter.SHOW_TEXT);
            let prev = null, prevChar = '', node;
            while ((node = walker.nextNode())) {
              for (let i = 0; i < node.length; i++) {
                const range = document.createRange(); range.setStart(node, i); range.setEnd(node, i + 1);
                const rect = range.getClientRects()[0];
                if (!rect) continue;
                if (prev !== null && rect.top > prev + 2 && !/[\\s._/:,\\-]/.test(prevChar)) bad.push(td.textContent);
                prev = rect.top; prevChar = node.data[i];
              }
            }
          }
          return bad;
        })()""")
    finally:
        browser.call("Emulation.setDeviceMetricsOverride", width=1280, height=1000, deviceScaleFactor=1, mobile=False)
    assert bad == []
