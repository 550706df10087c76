"""Summaries of lab results: the claims table for the terminal, and Markdown and JSON files.

Reads what the runner wrote (``<out>/<experiment>/<preset>/result.json``, through
``records.read_results``, the one reader the report uses too) or takes the result dicts it
returned. ``write_summary`` writes ``summary.md`` (the report's Markdown rendering of the
results folder) and ``summary.json``, both atomically; ``write_html_report`` is the hook to the
HTML report of ``gradguard.report``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gradguard import _io
from gradguard.lab import records
from gradguard.lab.runner import environment

STATUS_STYLE = {records.STATUS_PASS: "green", records.STATUS_FAIL: "red", records.STATUS_SCALE: "yellow", records.STATUS_ERROR: "red", records.STATUS_SETUP: "cyan"}


def load_results(out: str | Path) -> list[dict[str, Any]]:
    """Every ``result.json`` under ``out`` (as the runner returned them), in the registry's order of experiments."""
    from gradguard.lab import registry

    order = {name: i for i, name in enumerate(registry.names())}
    found = [_io.from_json(_io.to_json(r.to_dict())) for _, r in records.read_results(out)]
    return sorted(found, key=lambda r: (order.get(r["experiment"], len(order)), r["experiment"], r["preset"]))


def rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per experiment: name, preset, status, measured summary, claim, anchor, seconds."""
    return [
        {
            "experiment": r["experiment"],
            "preset": r["preset"],
            "seeds": len(r.get("seeds", [])),
            "status": r["verdict"]["status"],
            "measured": r["verdict"].get("summary", ""),
            "headline": r["verdict"].get("headline") or r["verdict"].get("summary", ""),
            "short_anchor": r.get("short_anchor") or r["anchor"],
            "criterion": r["verdict"].get("criterion", ""),
            "claim": r["claim"],
            "anchor": r["anchor"],
            "seconds": r.get("seconds", 0.0),
        }
        for r in results
    ]


def headline(results: Sequence[dict[str, Any]]) -> str:
    """One line on the whole run: claims reproduced, or, for smoke runs, that only the set-up was checked."""
    statuses = [r["verdict"]["status"] for r in results]
    if statuses and all(s == records.STATUS_SETUP for s in statuses):
        return f"smoke preset: the set-up of {len(statuses)} experiment(s) ran end to end; no claim is judged at this size (run the quick preset for verdicts)"
    judged = [s for s in statuses if s != records.STATUS_SETUP]
    return f"{sum(s == records.STATUS_PASS for s in judged)} of {len(judged)} claims reproduced"


def write_summary(out: str | Path, results: Sequence[dict[str, Any]], title: str = "gradguard lab results", wall_seconds: float | None = None) -> tuple[Path, Path]:
    """Write ``summary.md`` and ``summary.json`` into ``out``; returns their paths."""
    from gradguard.report import lab as lab_report
    from gradguard.report import markdown

    out = Path(out)
    md_path, json_path = out / "summary.md", out / "summary.json"
    summary = {
        "title": title,
        "headline": headline(results),
        "created": time.time(),
        "wall_seconds": wall_seconds,
        "environment": environment(),
        "experiments": [
            {**row, "measured_numbers": r["verdict"].get("measured", {}), "result": str(Path(r["experiment"]) / r["preset"] / "result.json")}
            for row, r in zip(rows(results), results)
        ],
    }
    _io.write_json(json_path, summary)
    lab = lab_report.read_results_dir(out)
    text = markdown.render([lab], title) if lab is not None else f"# {title}\n\nNo lab results in {out}.\n"
    first, _, rest = text.partition("\n")
    _io.write_atomic(md_path, f"{first}\n\n{summary['headline']}.\n{rest}")
    return md_path, json_path


def write_html_report(out: str | Path, title: str = "gradguard lab results") -> Path | None:
    """The hook to the HTML report: ``<out>/report.html`` from ``gradguard.report``, or None when
    the report package or its plotting dependency is not available (the Markdown stays)."""
    from gradguard._errors import MissingDependencyError

    try:
        from gradguard.report import write_report
    except ImportError:
        return None
    try:
        return write_report(Path(out), Path(out) / "report.html", format="html", title=title)
    except MissingDependencyError:
        return None
    except Exception as exc:  # the report is an extra: its failure must not hide the results above
        print(f"gradguard: report.html not written ({type(exc).__name__}: {exc}); summary.md and summary.json are complete.", file=sys.stderr)
        return None


def print_table(results: Sequence[dict[str, Any]], title: str = "Claims") -> None:
    """The claims table on the terminal: rich when installed, plain text otherwise."""
    table = rows(results)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        for r in table:
            print(f"{r['experiment']:<16} {r['status']:<30} {r['headline']}")
            print(f"{'':<16} anchor: {r['short_anchor']}")
        return
    t = Table(title=title, show_lines=True, expand=True)
    t.add_column("experiment", no_wrap=True)
    t.add_column("verdict", max_width=16)
    t.add_column("measured", ratio=3)
    t.add_column("anchor", ratio=2)
    for r in table:
        style = STATUS_STYLE.get(r["status"], "")
        t.add_row(r["experiment"], f"[{style}]{r['status']}[/]" if style else r["status"], r["headline"], r["short_anchor"])
    Console().print(t)
