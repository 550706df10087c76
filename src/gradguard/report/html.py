"""The HTML report: one self-contained file that opens offline.

CSS is inline and nothing on the page points outside it. A run's figures are interactive where
Bokeh is installed (``_interactive``: zoom on the step axis, hover values, series toggled from the
legend; BokehJS is inlined, so the page opens offline), else static SVG embedded as ``data:`` URIs
(an ``<img>`` never runs scripts), else, without matplotlib too, tables. Lab figures are always
SVG. Every string that comes from a run (module, run and file names, finding texts, event
payloads, lab tables) goes through ``html.escape``.

Order: findings first (per run, in the order the rules return them: root causes before the
symptoms they explain; coloured by severity), then with several runs their overlaid series, then for each run
the gradient flow, the total-norm timeline, the per-time-step heatmap, saturation and dead units,
clipping statistics, update-to-weight ratio and events; then each lab claim beside its anchor,
with the figures its experiment declares (or, for results that declare none, its list metrics).
"""

from __future__ import annotations

import base64
import contextvars
import html
import math
import re
import time
from collections.abc import Callable, Sequence

import numpy as np

from gradguard._extras import available, install_command
from gradguard.report import plots
from gradguard.report._summaries import event_summary
from gradguard.report.data import (
    Claim,
    LabData,
    LabFigure,
    RunData,
    clipper_text,
    clipping_stats,
    default_title,
    describe,
    figure_table,
    forward_order,
    severity_counts,
    versions_text,
)

MAX_EVENT_ROWS = 200
MAX_TABLE_ROWS = 400


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: object) -> str:
    """Numbers in 3-4 significant digits; NaN as an em dash; anything else as escaped text."""
    if isinstance(value, bool) or value is None:
        return "\u2014" if value is None else ("yes" if value else "no")
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}".replace(",", "\u2009")
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "\u2014"
        if math.isinf(v):
            return "\u221e" if v > 0 else "\u2212\u221e"
        if v == 0:
            return "0"
        if 1e-3 <= abs(v) < 1e5:
            return f"{v:.4g}"
        return f"{v:.3e}"
    return esc(value)


def _figure(svg: str | None, caption: str, alt: str) -> str:
    if not svg:
        return ""
    data = base64.b64encode(svg.encode("utf-8")).decode("ascii")
    return f'<figure><img src="data:image/svg+xml;base64,{data}" alt="{esc(alt)}"><figcaption>{caption}</figcaption></figure>'


_SEPARATOR = re.compile(r"([._/:\-,])(?=[^\s<])")


def breakable(value: object) -> str:
    """Escaped text that may wrap only after a separator (``layers.0.weight_hh`` breaks at the
    dots and the underscore, never inside "weight"): a ``<wbr>`` after each one; the CSS lets
    table cells grow instead of breaking words (their container scrolls sideways)."""
    return _SEPARATOR.sub(r"\1<wbr>", esc(value))


def _cell(v: object, breaks: bool) -> str:
    if isinstance(v, (int, float, np.number)) and not isinstance(v, bool):
        return f'<td class="num">{fmt(v)}</td>'
    if v is None or isinstance(v, bool) or not breaks:
        return f"<td>{fmt(v)}</td>"
    return f"<td>{breakable(v)}</td>"


def _table(columns: Sequence[str], rows: Sequence[Sequence[object]], cls: str = "data", limit: int = MAX_TABLE_ROWS, breaks: bool = False) -> str:
    """A table in a sideways-scrolling box; ``breaks``: text cells may wrap after separators
    (module names, event summaries), else only at spaces."""
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = []
    for row in rows[:limit]:
        cells = "".join(_cell(v, breaks) for v in row)
        body.append(f"<tr>{cells}</tr>")
    more = f'<p class="note">{len(rows) - limit} more rows not shown.</p>' if len(rows) > limit else ""
    return f'<div class="scroll"><table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>{more}'


def _details(summary: str, body: str) -> str:
    return f"<details><summary>{esc(summary)}</summary>{body}</details>"


def _plot(fn: Callable[..., str | None], *args, **kwargs) -> str | None:
    """Call a plot function when matplotlib is there; None (the table stands alone) otherwise."""
    if not available("matplotlib"):
        return None
    return fn(*args, **kwargs)


class _Figures:
    """The interactive figures of the page being rendered: each gets a placeholder in the body,
    replaced by its ``<div>`` once every model is known (one Bokeh document for the page)."""

    def __init__(self) -> None:
        self.models: list = []
        self.captions: list[tuple[str, str]] = []

    def add(self, model, caption: str, alt: str) -> str:
        self.models.append(model)
        self.captions.append((caption, alt))
        return f"<!--gradguard-figure-{len(self.models) - 1}-->"  # user text is escaped: it never holds "<!--"

    def fill(self, page: str) -> tuple[str, str]:
        """(page with the figures in place, the scripts to put at the end of the body)."""
        if not self.models:
            return page, ""
        from gradguard.report import _interactive

        library, script, divs = _interactive.embed(self.models)
        for i, (div, (caption, alt), model) in enumerate(zip(divs, self.captions, self.models)):
            fig = f'<figure class="interactive" data-figure="{esc(model.name or "")}" role="img" aria-label="{esc(alt)}">{div}<figcaption>{caption}</figcaption></figure>'
            page = page.replace(f"<!--gradguard-figure-{i}-->", fig, 1)
        return page, library + script


_FIGURES: contextvars.ContextVar[_Figures | None] = contextvars.ContextVar("gradguard_report_figures", default=None)


def _show(kind: str, args: Sequence, caption: str, alt: str) -> str:
    """A run figure: interactive (``_interactive.<kind>``) while an interactive page renders,
    else the static SVG of ``plots.<kind>``; "" when there is nothing to draw."""
    figures = _FIGURES.get()
    if figures is not None:
        from gradguard.report import _interactive

        model = getattr(_interactive, kind)(*args)
        return figures.add(model, caption, alt) if model is not None else ""
    return _figure(_plot(getattr(plots, kind), *args), caption, alt)


# ---------------------------------------------------------------------- findings
def _finding_html(f, run_label: str | None) -> str:
    where = "".join(f"<code>{esc(w)}</code>" for w in f.where[:12])
    if len(f.where) > 12:
        where += f'<span class="note">and {len(f.where) - 12} more</span>'
    evidence = ""
    if f.evidence:
        items = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(describe(v, _plain_number))}</dd></div>" for k, v in f.evidence.items())
        evidence = f'<dl class="evidence">{items}</dl>'
    remedy = f'<div class="remedy"><span class="label">Remedy</span> {esc(f.remedy)}</div>' if f.remedy else ""
    step = f'<span class="step">step {fmt(int(f.step))}</span>' if f.step is not None else ""
    run = f'<span class="run-tag">{esc(run_label)}</span>' if run_label else ""
    return (
        f'<article class="finding sev-{esc(f.severity)}">'
        f'<header><span class="badge">{esc(f.severity)}</span><span class="code">{esc(f.code)}</span>{step}{run}</header>'
        f'<p class="message">{esc(f.message)}</p>'
        + (f'<div class="where">{where}</div>' if where else "")
        + evidence
        + remedy
        + "</article>"
    )


def _plain_number(value) -> str:
    """fmt() without escaping (describe's output is escaped as a whole)."""
    return html.unescape(fmt(value))


def _counts(findings) -> str:
    counts = severity_counts(findings)
    pills = " ".join(f'<span class="pill sev-{k}">{v} {k}{"s" if v != 1 and k != "info" else ""}</span>' for k, v in counts.items() if v)
    return f'<p class="counts">{pills}</p>'


NO_FINDINGS = '<p class="ok">No findings: nothing in the recorded statistics tripped a diagnosis rule.</p>'


def _findings_section(runs: list[RunData], nav: list[tuple[str, str, int]]) -> str:
    """Each run's findings in the order the rules return them (root causes before the symptoms
    they explain, so the first warning or error is the likeliest cause); several runs get one
    block each, in the order given."""
    if len(runs) == 1:
        findings = runs[0].findings
        body = _counts(findings) + "".join(_finding_html(f, None) for f in findings) if findings else NO_FINDINGS
        return _section("findings", "Findings", body)
    blocks = []
    for i, run in enumerate(runs, 1):
        bid = f"findings-{i}"
        nav.append((bid, f"Findings: {run.name}", 1))
        inner = _counts(run.findings) + "".join(_finding_html(f, run.name) for f in run.findings) if run.findings else NO_FINDINGS
        blocks.append(f'<div class="run-findings" id="{bid}" data-run="{i}"><h3>{esc(run.name)}</h3>{inner}</div>')
    return _section("findings", "Findings", "".join(blocks))


# ---------------------------------------------------------------------- per-run sections
def _section(sid: str, heading: str, body: str, level: int = 2, kind: str | None = None) -> str:
    kind_attr = f' data-section="{esc(kind or sid)}"'
    return f'<section id="{esc(sid)}"{kind_attr}><h{level}>{esc(heading)}</h{level}>{body}</section>'


def _gradient_flow(run: RunData) -> str | None:
    grad, err = run.metrics.get("grad_norm"), run.metrics.get("error_norm")
    g = grad.latest() if grad else None
    e = err.latest() if err else None
    if g is None and e is None:
        return None
    all_modules = (grad or err).modules
    measured = sorted(set().union(*(m.measured().tolist() for m in (grad, err) if m is not None)))
    order = [j for j in forward_order(run, all_modules) if j in measured]
    modules = [all_modules[j] for j in order]
    g = (g[0], g[1][order]) if g else None
    e = (e[0], e[1][order]) if e else None
    caption = "Norm per module at the latest step that measured it, log scale. A slope down towards the input side is a vanishing gradient; up is an exploding one."
    flow = _show("gradient_flow", (modules, g[1] if g else None, e[1] if e else None, g[0] if g else None, e[0] if e else None), caption, "gradient flow per module")
    rows = [[m, g[1][j] if g else math.nan, e[1][j] if e else math.nan] for j, m in enumerate(modules)]
    table = _details("Numbers", _table(["module", f"‖dL/dW‖ (step {g[0]})" if g else "‖dL/dW‖", f"‖dL/dh‖ (step {e[0]})" if e else "‖dL/dh‖"], rows, breaks=True))
    heat = ""
    if grad is not None and len(grad.steps) >= 2:
        rows = [j for j in order if j in set(grad.measured().tolist())]
        heat = _show("norm_heatmap", (grad.steps, [all_modules[j] for j in rows], grad.values[:, rows]), "Weight-gradient norm per module over training (log10, colour).", "gradient norm heatmap")
    return flow + table + heat


def _timeline(run: RunData) -> str | None:
    s = run.columns()
    if not run.n_steps:
        return None
    if _FIGURES.get() is None and not available("matplotlib"):
        rows = [[int(st), nb, na, th, bool(sk)] for st, nb, na, th, sk in zip(s["step"], s["norm_before"], s["norm_after"], s["threshold"], s["skipped"])]
        return _table(["step", "norm before", "norm after", "threshold", "skipped"], rows)
    args = (s["step"], s["norm_before"], s["norm_after"], s["threshold"], s["skipped"], s["loss"])
    return _show("norm_timeline", args, timeline_caption(run), "total gradient norm timeline")


def timeline_caption(run: RunData) -> str:
    """What the timeline shows, naming only what is drawn: the threshold and the after-clipping
    line where a clipper was in force, the triangles where steps were skipped."""
    s = run.scalars
    clipper = clipper_text(run.meta.get("clipper")) or (s["threshold"].size and bool(np.isfinite(s["threshold"]).any()))
    n_skipped = int(s["skipped"].sum())
    if clipper:
        text = "Total gradient norm per optimizer step before and after clipping, with the clipping threshold (dashed)."
    else:
        text = "Total gradient norm per optimizer step (no clipper was in force)."
    if n_skipped:
        text += f" Triangles at the top mark the {n_skipped} skipped step{'s' if n_skipped != 1 else ''}."
    if "loss" in s and np.isfinite(s["loss"]).any():
        text += " Below: the loss."
    if run.n_steps > plots.MAX_POINTS:
        text += " Long runs show each bin's maximum."
    return text


def _timestep_section(run: RunData) -> str | None:
    if not run.timesteps:
        return None
    parts = []
    for ts in run.timesteps:
        last = ts.values[np.flatnonzero(np.isfinite(ts.values).any(axis=1))[-1]] if np.isfinite(ts.values).any() else None
        ratio = _ends_ratio(last)
        caption = (
            f"<code>{esc(ts.module)}</code>: norm of the loss gradient with respect to the hidden state at each time step t, "
            f"measured at {len(ts.steps)} training step(s)."
            + (f" At the latest, ‖dL/dh_1‖ / ‖dL/dh_T‖ = {fmt(ratio)}." if ratio is not None else "")
        )
        shown = _show("timestep_heatmap", (ts.steps, ts.values, ts.module), caption, f"per-time-step gradient norms of {ts.module}")
        parts.append(shown or f"<p>{caption}</p>")
    return "".join(parts)


def _ends_ratio(profile) -> float | None:
    if profile is None:
        return None
    finite = profile[np.isfinite(profile)]
    if len(finite) < 2 or finite[-1] == 0:
        return None
    return float(finite[0] / finite[-1])


def _units(run: RunData) -> str | None:
    sat, dead = run.metrics.get("saturation"), run.metrics.get("dead_fraction")
    s = sat.latest() if sat else None
    d = dead.latest() if dead else None
    if s is None and d is None:
        return None
    order = forward_order(run, (sat or dead).modules)
    modules = [(sat or dead).modules[j] for j in order]
    s = (s[0], s[1][order]) if s else None
    d = (d[0], d[1][order]) if d else None
    steps = ", ".join(f"{label} at step {x[0]}" for label, x in (("saturation", s), ("dead units", d)) if x)
    caption = f"Share of units per module that are saturated (activation derivative near zero) or dead (never active on the batch); {steps}."
    rows = [[m, 100 * s[1][j] if s else math.nan, 100 * d[1][j] if d else math.nan] for j, m in enumerate(modules)]
    rows = [r for r in rows if not (math.isnan(r[1]) and math.isnan(r[2]))]
    bars = _show("unit_bars", (modules, s[1] if s else None, d[1] if d else None), caption, "saturation and dead units per module")
    return bars + _details("Numbers", _table(["module", "saturated (%)", "dead (%)"], rows, breaks=True))


def _clipping(run: RunData) -> str | None:
    stats = clipping_stats(run)
    if stats is None:
        return None
    rows = []
    for key, value in stats.items():
        if key == "share clipped":
            rows.append([key, f"{100 * value:.1f}%"])
        elif key.endswith("steps") or key == "steps":
            rows.append([key, int(value)])
        else:
            rows.append([key, value])
    clipper = clipper_text(run.meta.get("clipper"))
    if clipper:
        rows.insert(0, ["clipper", clipper])
    body = "".join(f"<tr><th>{esc(k)}</th><td class=\"num\">{v if isinstance(v, str) and v.endswith('%') else fmt(v)}</td></tr>" for k, v in rows)
    note = '<p class="note">Coefficient: norm after / norm before clipping on the steps where clipping acted (1 means untouched).</p>'
    return f'<table class="kv">{body}</table>{note}'


def _update_ratio(run: RunData) -> str | None:
    ur = run.metrics.get("update_ratio")
    if ur is None or not np.isfinite(ur.values).any():
        return None
    latest = ur.latest()
    rows = [[m, latest[1][j]] for j, m in enumerate(ur.modules) if np.isfinite(latest[1][j])] if latest else []
    caption = "Size of each optimizer update relative to the weights it changes, per module; the dashed line marks the 1e-3 rule of thumb."
    return _show("update_ratio", (ur.steps, ur.modules, ur.values), caption, "update to weight ratio") + _details(f"Numbers (step {latest[0]})" if latest else "Numbers", _table(["module", "‖update‖ / ‖weight‖"], rows, breaks=True))


def _events(run: RunData) -> str | None:
    if not run.events:
        return None
    counts: dict[str, int] = {}
    for ev in run.events:
        counts[ev["kind"]] = counts.get(ev["kind"], 0) + 1
    summary = " ".join(f'<span class="pill">{esc(k)}: {v}</span>' for k, v in counts.items())
    rows = [[ev.get("step") if ev.get("step") is not None else "\u2014", ev["kind"], event_summary(ev, fmt=_plain_number)] for ev in run.events]
    return f'<p class="counts">{summary}</p>' + _table(["step", "kind", "what happened"], rows, limit=MAX_EVENT_ROWS, breaks=True)


RUN_SECTIONS = (
    ("gradient-flow", "Gradient flow", _gradient_flow),
    ("timeline", "Total gradient norm", _timeline),
    ("timesteps", "Gradient norm per time step", _timestep_section),
    ("units", "Saturation and dead units", _units),
    ("clipping", "Clipping statistics", _clipping),
    ("update-ratio", "Update-to-weight ratio", _update_ratio),
    ("events", "Events", _events),
)


def _run_meta(run: RunData) -> str:
    items = [("source", run.source), ("steps", run.n_steps)]
    if "norm_type" in run.meta:
        items.append(("norm type", run.meta["norm_type"]))
    if clipper_text(run.meta.get("clipper")):
        items.append(("clipper", clipper_text(run.meta["clipper"])))
    if isinstance(run.meta.get("created"), (int, float)):
        items.append(("created", time.strftime("%Y-%m-%d %H:%M", time.localtime(run.meta["created"]))))
    versions = versions_text(run.meta)
    if versions:
        items.append(("versions", versions))
    return '<dl class="meta">' + "".join(f"<dt>{esc(k)}</dt><dd>{fmt(v) if isinstance(v, (int, float)) else esc(v)}</dd>" for k, v in items) + "</dl>"


def _run_section(run: RunData, index: int, nav: list[tuple[str, str, int]]) -> str:
    rid = f"run-{index}"
    nav.append((rid, f"Run: {run.name}", 0))
    parts = [_run_meta(run)]
    for key, heading, build in RUN_SECTIONS:
        body = build(run)
        if body:
            sid = f"{rid}-{key}"
            nav.append((sid, heading, 1))
            parts.append(_section(sid, heading, body, level=3, kind=key))
    if len(parts) == 1:
        parts.append('<p class="note">This run store holds no recorded steps yet.</p>')
    return f'<section id="{rid}" data-section="run" class="run"><h2>Run: {esc(run.name)}</h2>{"".join(parts)}</section>'


def _comparison(runs: list[RunData]) -> str:
    rows = []
    for run in runs:
        stats = clipping_stats(run) or {}
        c = severity_counts(run.findings)
        rows.append([run.name, run.n_steps, stats.get("median norm before clipping", math.nan), stats.get("largest norm before clipping", math.nan), f"{100 * stats.get('share clipped', 0):.1f}%", int(stats.get("skipped steps", 0)), c["error"], c["warning"], c["info"]])
    table = _table(["run", "steps", "median norm", "largest norm", "clipped", "skipped", "errors", "warnings", "info"], rows)
    names = _distinct_names(runs)
    norms = _show("overlaid_timelines", ({n: (run.steps, run.scalars["norm_before"]) for n, run in zip(names, runs)},), "Total gradient norm before clipping, every run on one log axis.", "total gradient norm of every run")
    loss = ""
    if _FIGURES.get() is not None:  # the static page keeps its one overlay
        from gradguard.report import _interactive

        model = _interactive.overlaid_timelines({n: (run.steps, run.scalars["loss"]) for n, run in zip(names, runs)}, name="comparison-loss", y_label="loss", log_y=False)
        loss = _FIGURES.get().add(model, "Loss of every run.", "loss of every run") if model is not None else ""
    return table + norms + loss


def _distinct_names(runs: list[RunData]) -> list[str]:
    """Run names for legends, numbered where two runs share one (a legend entry per run)."""
    names = [run.name for run in runs]
    return [f"{n} ({i})" if names.count(n) > 1 else n for i, n in enumerate(names, 1)]


# ---------------------------------------------------------------------- lab
VERDICT_CLASS = {"pass": "pass", "fail": "fail", "error": "fail", "not reproduced at quick scale": "scale"}


def _claim_html(claim: Claim, lab_index: int, index: int) -> str:
    cls = VERDICT_CLASS.get(claim.status, "none")
    facts = [f"preset {claim.preset}" if claim.preset else "", f"{claim.seeds} seed{'s' if claim.seeds != 1 else ''}" if claim.seeds else ""]
    if not math.isnan(claim.seconds):
        facts.append(f"{claim.seconds:.1f} s")
    facts_html = "".join(f'<span class="step">{esc(f)}</span>' for f in facts if f)
    left = ""
    if claim.claim:
        left += f"<h4>Claim</h4><p>{esc(claim.claim)}</p>"
    if claim.anchor:
        left += f'<h4>Anchor</h4><p class="anchor">{esc(claim.anchor)}</p>'
    if claim.criterion:
        left += f'<h4>Criterion</h4><p class="anchor">{esc(claim.criterion)}</p>'
    right = "<h4>Measured</h4>"
    if claim.summary:
        right += f'<p class="summary">{esc(claim.summary)}</p>'
    if claim.rows:
        right += _table(claim.columns, claim.rows)
    if claim.job_rows:
        right += _details(f"Per job ({len(claim.job_rows)})", _table(claim.job_columns, claim.job_rows))
    right += "".join(f'<p class="note">{esc(n)}</p>' for n in claim.notes)
    figures = "".join(_lab_figure(f) for f in claim.figures)
    return (
        f'<article class="claim verdict-{cls}" id="lab-{lab_index}-claim-{index}" data-status="{esc(claim.status)}">'
        f'<header><span class="badge">{esc(claim.status)}</span><span class="code">{esc(claim.experiment)}</span>{facts_html}</header>'
        f'<div class="claim-grid"><div>{left or "<p class=note>Not judged yet.</p>"}</div><div>{right}</div></div>'
        + (f'<div class="claim-figures">{figures}</div>' if figures else "")
        + "</article>"
    )


def _lab_figure(fig: LabFigure) -> str:
    """A lab figure with its caption and notes, and its numbers at a few x positions (all that
    shows without matplotlib)."""
    svg = _plot(plots.lab_figure, fig.curves, title=fig.title, x_label=fig.x_label, y_label=fig.y_label, log_y=fig.log_y, hlines=fig.hlines, reference_label=fig.reference_label)
    seeds = max(c.seeds for c in fig.curves)
    how = f"Each line: the geometric mean over up to {seeds} seeds where all its values are positive, else the mean; band: min to max over the seeds." if seeds > 1 else ""
    caption = " ".join(esc(t) for t in (fig.caption, how, *fig.notes) if t)
    columns, rows = figure_table(fig)
    if svg:
        label = f"Numbers: {fig.title}"
    else:
        label = f"{fig.title} (numbers; {'the figure needs matplotlib' if not available('matplotlib') else 'no finite value to draw'})"
    return _figure(svg, caption, fig.title) + _details(label, _table(columns, rows))


def _lab_section(lab: LabData, index: int, nav: list[tuple[str, str, int]]) -> str:
    lid = f"lab-{index}"
    nav.append((lid, f"Lab: {lab.name}", 0))
    counts: dict[str, int] = {}
    for c in lab.claims:
        counts[c.status] = counts.get(c.status, 0) + 1
    pills = " ".join(f'<span class="pill verdict-{VERDICT_CLASS.get(k, "none")}">{v} {esc(k)}</span>' for k, v in counts.items())
    meta = '<dl class="meta">' + f"<dt>source</dt><dd>{esc(lab.source)}</dd>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in lab.meta.items()) + "</dl>"
    claims = "".join(_claim_html(c, index, i) for i, c in enumerate(lab.claims, 1))
    nav.extend((f"{lid}-claim-{i}", f"{c.experiment} ({c.status})", 1) for i, c in enumerate(lab.claims, 1))
    return f'<section id="{lid}" data-section="lab" class="lab"><h2>Lab: {esc(lab.name)}</h2>{meta}<p class="counts">{pills}</p>{claims}</section>'


# ---------------------------------------------------------------------- page
def render(items: Sequence[RunData | LabData], title: str | None = None, interactive: bool | None = None) -> str:
    """The whole page as one string. ``interactive``: Bokeh figures for the runs (True: required,
    False: static SVG, None: where Bokeh is installed)."""
    if interactive is None:
        interactive = available("bokeh")
    elif interactive:
        from gradguard._extras import require

        require("bokeh", "the interactive report")
    figures = _Figures() if interactive else None
    token = _FIGURES.set(figures)
    try:
        return _render(items, title, figures)
    finally:
        _FIGURES.reset(token)


def _render(items: Sequence[RunData | LabData], title: str | None, figures: _Figures | None) -> str:
    runs = [x for x in items if isinstance(x, RunData)]
    labs = [x for x in items if isinstance(x, LabData)]
    from gradguard import __version__

    title = title or default_title(items)
    nav: list[tuple[str, str, int]] = []
    body = []
    if runs:
        nav.append(("findings", "Findings", 0))
        body.append(_findings_section(runs, nav))
    if len(runs) > 1:
        nav.append(("comparison", "All runs", 0))
        body.append(_section("comparison", "All runs", _comparison(runs)))
    for i, run in enumerate(runs, 1):
        body.append(_run_section(run, i, nav))
    for i, lab in enumerate(labs, 1):
        body.append(_lab_section(lab, i, nav))
    if not available("matplotlib") and (figures is None or labs):
        body.insert(0, f'<p class="note">Figures are missing because matplotlib is not installed; install it with: {esc(install_command("matplotlib"))}</p>')
    elif figures is None and runs and not available("bokeh"):
        body.insert(0, f'<p class="note">The figures are static: for zoom, hover values and series shown or hidden from the legend, install Bokeh with: {esc(install_command("bokeh"))}</p>')
    toc = "".join(f'<li class="lvl{lvl}"><a href="#{esc(sid)}">{esc(text)}</a></li>' for sid, text, lvl in nav)
    generated = time.strftime("%Y-%m-%d %H:%M")
    page = (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="generator" content="gradguard {esc(__version__)}"><title>{esc(title)}</title><style>{CSS}</style></head>'
        f'<body><header class="page"><h1>{esc(title)}</h1><p class="sub">Generated {generated} by gradguard {esc(__version__)}</p></header>'
        f'<div class="layout"><nav><ol>{toc}</ol></nav><main>{"".join(body)}</main></div><!--gradguard-scripts--></body></html>\n'
    )
    scripts = ""
    if figures is not None:
        page, scripts = figures.fill(page)
    return page.replace("<!--gradguard-scripts-->", scripts, 1)


CSS = """
:root{--fg:#111827;--muted:#6b7280;--line:#e5e7eb;--bg:#fff;--soft:#f9fafb;
--err:#b42318;--err-bg:#fef3f2;--warn:#b54708;--warn-bg:#fffaeb;--info:#175cd3;--info-bg:#eff8ff;--ok:#067647;--ok-bg:#ecfdf3}
*{box-sizing:border-box}
body{margin:0;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"DejaVu Sans",sans-serif;color:var(--fg);background:var(--bg)}
header.page{padding:20px 32px 12px;border-bottom:1px solid var(--line)}
h1{font-size:22px;margin:0 0 2px;font-weight:650;overflow-wrap:anywhere}
h2{font-size:18px;margin:32px 0 10px;padding-bottom:4px;border-bottom:1px solid var(--line);font-weight:650;overflow-wrap:anywhere}
h3{font-size:15px;margin:24px 0 8px;font-weight:600}
h4{font-size:12px;margin:0 0 4px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted);font-weight:600}
.sub,.note{color:var(--muted);font-size:12.5px;margin:4px 0}
.layout{display:flex;gap:28px;max-width:1280px;margin:0 auto;padding:0 32px 48px}
nav{flex:0 0 210px;position:sticky;top:0;align-self:flex-start;max-height:100vh;overflow:auto;padding-top:20px;font-size:13px}
nav ol{list-style:none;margin:0;padding:0}
nav li{margin:2px 0;overflow-wrap:anywhere}
nav li.lvl1{padding-left:12px;font-size:12.5px}
nav a{color:var(--fg);text-decoration:none}
nav a:hover{text-decoration:underline}
main{flex:1;min-width:0}
section{scroll-margin-top:8px}
figure{margin:8px 0 16px}
figure img{display:block;max-width:100%;height:auto}
figure.interactive{min-height:120px}
.run-findings h3{margin-top:16px}
figcaption{color:var(--muted);font-size:12.5px;margin-top:4px;max-width:80ch}
code{font:12.5px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;background:var(--soft);border:1px solid var(--line);border-radius:4px;padding:0 4px;overflow-wrap:break-word}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{padding:4px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top;overflow-wrap:normal;word-break:normal}
thead th{font-weight:600;background:var(--soft);white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.kv th{font-weight:500;color:var(--muted);padding-right:24px}
details{margin:4px 0 12px}
summary{cursor:pointer;color:var(--muted);font-size:12.5px}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;font-size:12.5px;margin:6px 0 8px}
dl.meta dt{color:var(--muted)}
dl.meta dd{margin:0;overflow-wrap:anywhere}
.counts{margin:6px 0 12px}
.pill{display:inline-block;font-size:12px;padding:1px 8px;border-radius:999px;background:var(--soft);border:1px solid var(--line);margin-right:4px}
.finding,.claim{border:1px solid var(--line);border-left:4px solid var(--muted);border-radius:6px;padding:10px 14px;margin:10px 0;background:#fff}
.finding header,.claim header{display:flex;gap:10px;align-items:baseline;flex-wrap:wrap}
.badge{font-size:11px;font-weight:700;text-transform:uppercase;letter-spacing:.05em;padding:1px 7px;border-radius:4px;color:#fff;background:var(--muted)}
.finding .code,.claim .code{font-weight:600;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;font-size:13px;overflow-wrap:anywhere}
.step,.run-tag{color:var(--muted);font-size:12.5px;overflow-wrap:anywhere}
.message{margin:6px 0;overflow-wrap:anywhere}
.where{display:flex;flex-wrap:wrap;gap:4px;margin:4px 0}
dl.evidence{display:flex;flex-wrap:wrap;gap:2px 20px;font-size:12.5px;margin:6px 0}
dl.evidence div{display:flex;gap:6px;max-width:100%}
dl.evidence dt{color:var(--muted)}
dl.evidence dd{margin:0;font-variant-numeric:tabular-nums;overflow-wrap:anywhere}
.remedy{margin-top:6px;padding:6px 10px;background:var(--soft);border-radius:4px;font-size:13px;overflow-wrap:anywhere}
.remedy .label{font-weight:600;margin-right:4px}
.sev-error{border-left-color:var(--err)} .sev-error .badge{background:var(--err)} .pill.sev-error{background:var(--err-bg);color:var(--err);border-color:#fecdca}
.sev-warning{border-left-color:var(--warn)} .sev-warning .badge{background:var(--warn)} .pill.sev-warning{background:var(--warn-bg);color:var(--warn);border-color:#fedf89}
.sev-info{border-left-color:var(--info)} .sev-info .badge{background:var(--info)} .pill.sev-info{background:var(--info-bg);color:var(--info);border-color:#b2ddff}
.verdict-pass{border-left-color:var(--ok)} .verdict-pass .badge{background:var(--ok)} .pill.verdict-pass{background:var(--ok-bg);color:var(--ok)}
.verdict-fail{border-left-color:var(--err)} .verdict-fail .badge{background:var(--err)} .pill.verdict-fail{background:var(--err-bg);color:var(--err)}
.verdict-scale{border-left-color:var(--warn)} .verdict-scale .badge{background:var(--warn)} .pill.verdict-scale{background:var(--warn-bg);color:var(--warn)}
.summary{margin:0 0 6px;overflow-wrap:anywhere}
.pill.verdict-pass{border-color:#abefc6} .pill.verdict-fail{border-color:#fecdca} .pill.verdict-scale{border-color:#fedf89}
.claim-grid{display:grid;grid-template-columns:minmax(200px,1fr) 2fr;gap:18px;margin-top:8px}
.claim-grid p{margin:0 0 10px}
.claim-figures{margin-top:10px}
.anchor{color:var(--muted);font-size:13px}
.ok{color:var(--ok)}
@media (max-width:900px){.layout{display:block;padding:0 16px 32px}nav{display:none}.claim-grid{grid-template-columns:1fr}}
@media print{nav{display:none}}
"""
