"""The Markdown report (``--format md``): the same sections as the HTML page, as text and tables.

Meant for terminals and CI logs, so it stays readable as plain text and renders on GitHub.
Strings from a run are escaped: module names go in code spans; in other text, what Markdown would
act on (a backslash, backtick or star, a "](" that could close a link) is backslash-escaped, a
"<" that could open a tag or an autolink becomes ``&lt;`` and an "&" that could start an entity
``&amp;``, pipes are escaped inside tables, and newlines become spaces. Entities rather than
backslashes for "<": Python-Markdown, unlike CommonMark, does not take "\\<" as an escape and
would render a live ``<style>`` or ``<script>`` from an events cell.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence

import numpy as np

from gradguard.report._summaries import event_summary, steps_text
from gradguard.report.data import (
    LabData,
    RunData,
    clipping_stats,
    default_title,
    describe,
    figure_table,
    forward_order,
    severity_counts,
)

MAX_ROWS = 40  # rows per table; the HTML report has the rest

# What would make Markdown act rather than show: a backslash, a backtick, emphasis stars, a "<"
# that could open an HTML tag, comment or autolink, an "&" that could start an entity, and "]("
# that could close a link. Escaping only these keeps text such as "x < 0" or "[0.1, 0.2]"
# readable in a terminal. "<" and "&" become entities, which every Markdown renderer honours.
_SPECIAL = re.compile(r"[\\`*]|<(?=[A-Za-z/!?])|&(?=#?[A-Za-z0-9]+;)|\](?=[(\[])")
_ENTITIES = {"<": "&lt;", "&": "&amp;"}


def text(value: object) -> str:
    return _SPECIAL.sub(lambda m: _ENTITIES.get(m.group(0)) or "\\" + m.group(0), " ".join(str(value).split()))


def code(value: object) -> str:
    """An inline code span that survives any backticks in ``value``."""
    s = " ".join(str(value).split())
    ticks = "`" * (max((len(run) for run in re.findall(r"`+", s)), default=0) + 1)
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{ticks}{pad}{s}{pad}{ticks}"


def num(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "-"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return "0" if v == 0 else (f"{v:.4g}" if 1e-3 <= abs(v) < 1e5 else f"{v:.3e}")
    return text(value)


def table(columns: Sequence[str], rows: Sequence[Sequence[object]], limit: int = MAX_ROWS) -> list[str]:
    lines = ["| " + " | ".join(_cell(text(c)) for c in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows[:limit]:
        lines.append("| " + " | ".join(_cell(v if isinstance(v, _Raw) else num(v)) for v in row) + " |")
    if len(rows) > limit:
        lines.append(f"\n({len(rows) - limit} more rows in the HTML report)")
    return lines + [""]


def _cell(s: str) -> str:
    return s.replace("|", "\\|")  # a pipe would end the cell, even inside a code span (GFM)


class _Raw(str):
    """Already formatted cell text (e.g. a code span): written as is."""


def _findings(runs: list[RunData]) -> list[str]:
    """Each run's findings in the order the rules return them (root causes first); with several
    runs, one block per run."""
    out = ["## Findings", ""]
    several = len(runs) > 1
    for run in runs:
        if several:
            out += [f"### {text(run.name)}", ""]
        out += _finding_lines(run)
    return out


def _finding_lines(run: RunData) -> list[str]:
    out = []
    for f in run.findings:
        where = ", ".join(code(w) for w in f.where[:8]) + (f" and {len(f.where) - 8} more" if len(f.where) > 8 else "")
        head = f"- **{f.severity.upper()}** {code(f.code)}"
        if f.step is not None:
            head += f" at step {int(f.step)}"
        out.append(f"{head}: {text(f.message)}")
        if where:
            out.append(f"  - where: {where}")
        if f.evidence:
            out.append("  - evidence: " + "; ".join(f"{text(k)} = {text(describe(v, num))}" for k, v in f.evidence.items()))
        if f.remedy:
            out.append(f"  - remedy: {text(f.remedy)}")
    if not run.findings:
        out.append("No findings: nothing in the recorded statistics tripped a diagnosis rule.")
    return out + [""]


def _run(run: RunData, heading: str = "##") -> list[str]:
    out = [f"{heading} Run: {text(run.name)}", "", f"source: {code(run.source)}, {run.n_steps} steps", ""]
    sub = heading + "#"
    grad, err = run.metrics.get("grad_norm"), run.metrics.get("error_norm")
    g = grad.latest() if grad else None
    e = err.latest() if err else None
    if g or e:
        modules = (grad or err).modules
        measured = set().union(*(m.measured().tolist() for m in (grad, err) if m is not None))
        out += [f"{sub} Gradient flow", ""]
        rows = [[_Raw(code(modules[j])), g[1][j] if g else math.nan, e[1][j] if e else math.nan] for j in forward_order(run, modules) if j in measured]
        out += table(["module", f"‖dL/dW‖ (step {g[0]})" if g else "‖dL/dW‖", f"‖dL/dh‖ (step {e[0]})" if e else "‖dL/dh‖"], rows)
    stats = clipping_stats(run)
    if stats:
        s = run.columns()
        out += [f"{sub} Total gradient norm", ""]
        finite = s["norm_before"][np.isfinite(s["norm_before"])]
        if len(finite):
            q = np.percentile(finite, [0, 50, 90, 100])
            out.append(f"norm before clipping: min {num(q[0])}, median {num(q[1])}, 90th percentile {num(q[2])}, max {num(q[3])}")
        skipped = s["step"][s["skipped"]]
        if len(skipped):
            out.append(f"skipped at {steps_text(skipped.tolist())}")
        out.append("")
    for ts in run.timesteps:
        rows = np.flatnonzero(np.isfinite(ts.values).any(axis=1))
        if not len(rows):
            continue
        last = ts.values[rows[-1]]
        out += [f"{sub} Gradient norm per time step: {code(ts.module)}", ""]
        picks = sorted({0, len(last) // 4, len(last) // 2, 3 * len(last) // 4, len(last) - 1})
        out += table(["time step t", f"‖dL/dh_t‖ (step {int(ts.steps[rows[-1]])})"], [[t + 1, last[t]] for t in picks])
    sat, dead = run.metrics.get("saturation"), run.metrics.get("dead_fraction")
    sl = sat.latest() if sat else None
    dl = dead.latest() if dead else None
    if sl or dl:
        modules = (sat or dead).modules
        rows = [[_Raw(code(modules[j])), 100 * sl[1][j] if sl else math.nan, 100 * dl[1][j] if dl else math.nan] for j in forward_order(run, modules)]
        rows = [r for r in rows if not (math.isnan(r[1]) and math.isnan(r[2]))]
        out += [f"{sub} Saturation and dead units", ""] + table(["module", "saturated (%)", "dead (%)"], rows)
    if stats:
        rows = [[k, _Raw(f"{100 * v:.1f}%") if k == "share clipped" else (int(v) if k.endswith("steps") else v)] for k, v in stats.items()]
        out += [f"{sub} Clipping statistics", ""] + table(["statistic", "value"], rows)
    ur = run.metrics.get("update_ratio")
    latest = ur.latest() if ur else None
    if latest:
        rows = [[_Raw(code(m)), latest[1][j]] for j, m in enumerate(ur.modules) if np.isfinite(latest[1][j])]
        out += [f"{sub} Update-to-weight ratio (step {latest[0]})", ""] + table(["module", "‖update‖ / ‖weight‖"], rows)
    if run.events:
        rows = [[ev.get("step"), _Raw(text(ev["kind"])), _Raw(text(event_summary(ev, fmt=num, limit=160)))] for ev in run.events]
        out += [f"{sub} Events", ""] + table(["step", "kind", "what happened"], rows)
    return out


def _lab(lab: LabData) -> list[str]:
    passed = sum(c.status == "pass" for c in lab.claims)
    out = [f"## Lab: {text(lab.name)}", "", f"source: {code(lab.source)}; {passed} of {len(lab.claims)} claims pass", ""]
    for claim in lab.claims:
        facts = ", ".join(x for x in (f"preset {claim.preset}" if claim.preset else "", f"{claim.seeds} seed(s)" if claim.seeds else "") if x)
        out += [f"### {text(claim.status.upper())}: {code(claim.experiment)}" + (f" ({text(facts)})" if facts else ""), ""]
        for label, value in (("Claim", claim.claim), ("Anchor", claim.anchor), ("Criterion", claim.criterion), ("Measured", claim.summary)):
            if value:
                out += [f"{label}: {text(value)}", ""]
        if claim.rows:
            out += table(claim.columns, claim.rows)
        for fig in claim.figures:
            # Markdown stays one self-contained file: a figure becomes its numbers at a few x
            # positions, as the run sections give the gradient flow and time-step profiles.
            axes = "; ".join(x for x in (f"x: {fig.x_label}" if fig.x_label else "", f"y: {fig.y_label}" + (" (log scale)" if fig.log_y else "") if fig.y_label else "") if x)
            out += [f"Figure: {text(fig.title)}" + (f" ({text(axes)})" if axes else "") + ", drawn in the HTML report", ""]
            out += [text(fig.caption), ""] if fig.caption else []
            out += table(*figure_table(fig))
            out += [f"note: {text(n)}" for n in fig.notes] + ([""] if fig.notes else [])
        out += [f"note: {text(n)}" for n in claim.notes] + ([""] if claim.notes else [])
    return out


def render(items: Sequence[RunData | LabData], title: str | None = None) -> str:
    runs = [x for x in items if isinstance(x, RunData)]
    labs = [x for x in items if isinstance(x, LabData)]
    from gradguard import __version__

    title = title or default_title(items)
    out = [f"# {text(title)}", "", f"Generated {time.strftime('%Y-%m-%d %H:%M')} by gradguard {__version__}", ""]
    if runs:
        out += _findings(runs)
    if len(runs) > 1:
        rows = []
        for run in runs:
            st = clipping_stats(run) or {}
            c = severity_counts(run.findings)
            rows.append([_Raw(text(run.name)), run.n_steps, st.get("median norm before clipping", math.nan), st.get("largest norm before clipping", math.nan), _Raw(f"{100 * st.get('share clipped', 0):.1f}%"), int(st.get("skipped steps", 0)), c["error"], c["warning"]])
        out += ["## All runs", ""] + table(["run", "steps", "median norm", "largest norm", "clipped", "skipped", "errors", "warnings"], rows)
    for run in runs:
        out += _run(run)
    for lab in labs:
        out += _lab(lab)
    return "\n".join(out).rstrip() + "\n"
