"""Summaries of lab results: the claims table for the terminal, and Markdown and JSON files.

Reads what the runner wrote (``<out>/<experiment>/<preset>/result.json``) or takes the result
dicts it returned. ``write_summary`` writes ``summary.md`` and ``summary.json`` atomically;
``write_html_report`` is the hook to the HTML report of ``gradguard.report``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gradguard.lab.runner import environment, read_json, write_json_atomic

STATUS_STYLE = {"pass": "green", "fail": "red", "not reproduced at quick scale": "yellow", "error": "red"}


def load_results(out: str | Path) -> list[dict[str, Any]]:
    """Every ``result.json`` under ``out``, in the registry's order of experiments."""
    from gradguard.lab import registry

    order = {name: i for i, name in enumerate(registry.names())}
    found = [r for r in (read_json(p) for p in Path(out).glob("*/*/result.json")) if r]
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


def to_markdown(results: Sequence[dict[str, Any]], title: str = "gradguard lab results") -> str:
    """A Markdown page: the claims table, then each experiment's criterion and measured numbers."""
    table = rows(results)
    passed = sum(r["status"] == "pass" for r in table)
    lines = [f"# {title}", "", f"{passed} of {len(table)} claims reproduced.", ""]
    lines += ["| experiment | verdict | measured | anchor |", "| --- | --- | --- | --- |"]
    for r in table:
        lines.append(f"| {r['experiment']} ({r['preset']}) | {r['status']} | {_cell(r['headline'])} | {_cell(r['short_anchor'])} |")
    for r in table:
        lines += [
            "",
            f"## {r['experiment']}",
            "",
            f"- Claim: {r['claim']}",
            f"- Anchor: {r['anchor']}",
            f"- Criterion: {r['criterion']}",
            f"- Measured: {r['measured']}",
            f"- Verdict: **{r['status']}** ({r['preset']} preset, {r['seeds']} seed(s), {r['seconds']:.0f} s of compute)",
        ]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_summary(out: str | Path, results: Sequence[dict[str, Any]], title: str = "gradguard lab results", wall_seconds: float | None = None) -> tuple[Path, Path]:
    """Write ``summary.md`` and ``summary.json`` into ``out``; returns their paths."""
    out = Path(out)
    md_path, json_path = out / "summary.md", out / "summary.json"
    summary = {
        "title": title,
        "created": time.time(),
        "wall_seconds": wall_seconds,
        "environment": environment(),
        "experiments": [
            {**row, "measured_numbers": r["verdict"].get("measured", {}), "result": str(Path(r["experiment"]) / r["preset"] / "result.json")}
            for row, r in zip(rows(results), results)
        ],
    }
    write_json_atomic(json_path, summary)
    _write_text_atomic(md_path, to_markdown(results, title))
    return md_path, json_path


def _write_text_atomic(path: Path, text: str) -> None:
    import os

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


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
