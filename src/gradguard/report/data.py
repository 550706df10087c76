"""Read what a report shows into plain arrays and dicts: one run store, or a lab results directory.

A run is the one ``gradguard._rundata.RunData`` (with its findings: the report runs the rules);
the renderers (``html``, ``markdown``) only ever see it and the lab dataclasses, never the store. Nothing
here unpickles: a run store is SQLite holding numbers, JSON and raw float64 bytes, and lab results
are JSON files. A file is checked to be a gradguard run store, read-only, before ``RunStore``
opens it, so pointing the report at some other SQLite file never adds tables to it.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gradguard._finding import Finding
from gradguard._metrics import coef as clip_coef
from gradguard._rundata import ModuleMetric, RunData, Timesteps  # noqa: F401  (the report's view of a run)
from gradguard._store import RunStore
from gradguard.report.lab import Claim, Curve, LabData, LabFigure  # noqa: F401 (the lab's report types, re-exported)

_SQLITE_MAGIC = b"SQLite format 3\x00"


def from_store(store: RunStore, name: str | None = None) -> RunData:
    """Read every table of an open ``RunStore`` (it stays open), and run the rules on it: a run
    killed before ``close()`` gets the same findings as one that closed."""
    from gradguard._diagnose import findings_of

    run = RunData.from_store(store)
    if name:
        run.meta["name"] = name
    run.findings = findings_of(run, store.findings())
    return run


def is_run_store(path: Path) -> bool:
    """True for an SQLite file holding gradguard's ``meta`` table with a schema version (read-only check)."""
    try:
        with open(path, "rb") as fh:
            if fh.read(len(_SQLITE_MAGIC)) != _SQLITE_MAGIC:
                return False
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        finally:
            db.close()
    except (OSError, sqlite3.Error):
        return False
    return row is not None


def read_store_file(path: str | os.PathLike) -> RunData:
    path = Path(path)
    if not is_run_store(path):
        raise ValueError(f"{str(path)!r} is not a gradguard run store (an SQLite file written by RunStore or Guard(store=...)).")
    with RunStore(path) as store:
        return from_store(store)


def load(sources: Any) -> list[RunData | LabData]:
    """Runs and lab results from RunStore objects and paths, in the order given.

    A path is a run store file (``*.sqlite``), or a directory: lab results (JSON; see
    ``gradguard.report.lab``), or else a folder of run store files, which each become a run.
    """
    if isinstance(sources, (str, os.PathLike, RunStore, RunData)):
        sources = [sources]
    items = list(sources)
    if not items:
        raise ValueError("no runs given; pass a run store file (*.sqlite), a lab results directory, or a RunStore.")
    out: list[RunData | LabData] = []
    for item in items:
        if isinstance(item, RunData):
            if item.findings is None:
                from gradguard._diagnose import findings_of

                item.findings = findings_of(item)
            out.append(item)
        elif isinstance(item, RunStore):
            out.append(from_store(item))
        elif isinstance(item, (str, os.PathLike)):
            out.extend(_load_path(Path(item)))
        else:
            raise TypeError(f"a report source must be a RunStore, a RunData or a path, got {type(item).__name__}.")
    return out


def _load_path(path: Path) -> list[RunData | LabData]:
    if not path.exists():
        raise FileNotFoundError(f"{str(path)!r} does not exist; expected a run store file (*.sqlite) or a lab results directory.")
    if path.is_file():
        return [read_store_file(path)]
    from gradguard.report.lab import read_results_dir

    results = read_results_dir(path)
    if results is not None:
        return [results]  # its jobs' run stores are listed in the claims, not each given a section
    found: list[RunData | LabData] = []
    for file in sorted(path.rglob("*")):
        if file.is_file() and file.suffix in (".sqlite", ".sqlite3", ".db") and is_run_store(file):
            found.append(read_store_file(file))
    if not found:
        raise ValueError(f"{str(path)!r} holds neither lab results (JSON) nor run store files (*.sqlite).")
    return found


# ---------------------------------------------------------------------- summaries both renderers use
def clipping_stats(run: RunData) -> dict[str, float] | None:
    """Share of steps clipped and skipped, and the clip coefficient norm_after / norm_before."""
    s = run.scalars
    n = run.n_steps
    if not n:
        return None
    before, after = s["norm_before"], s["norm_after"]
    taken = ~s["skipped"]
    clipped = s["clipped"] & taken
    coef = clip_coef(before, after, s["coef"])
    coef_clipped = coef[clipped & np.isfinite(coef)]
    finite_before = before[np.isfinite(before)]
    threshold = s["threshold"][np.isfinite(s["threshold"])]
    return {
        "steps": float(n),
        "skipped steps": float(s["skipped"].sum()),
        "clipped steps": float(clipped.sum()),
        "share clipped": float(clipped.sum() / max(1, taken.sum())),
        "median coefficient (clipped steps)": float(np.median(coef_clipped)) if len(coef_clipped) else math.nan,
        "smallest coefficient": float(coef_clipped.min()) if len(coef_clipped) else math.nan,
        "median norm before clipping": float(np.median(finite_before)) if len(finite_before) else math.nan,
        "largest norm before clipping": float(finite_before.max()) if len(finite_before) else math.nan,
        "median threshold": float(np.median(threshold)) if len(threshold) else math.nan,
    }


def forward_order(run: RunData, modules: Sequence[str]) -> list[int]:
    """Indices of ``modules`` input side first: by ``meta["forward_order"]`` where the run recorded
    it (modules it does not list keep their store order, after the listed ones), else store order
    (first-seen parameter order, which is usually the forward order too)."""
    order = run.meta.get("forward_order")
    if not isinstance(order, list):
        return list(range(len(modules)))
    pos = {name: i for i, name in enumerate(order)}
    return sorted(range(len(modules)), key=lambda j: (pos.get(modules[j], len(pos)), j))


def describe(value: Any, number: Callable[[float], str], limit: int = 12) -> str:
    """Evidence values as plain text: numbers through ``number``, lists as [a, b], dicts as
    k=v (nested ones in parentheses), at most ``limit`` items per level. Not escaped."""
    if isinstance(value, dict):
        items = list(value.items())
        parts = [f"{k}: ({describe(v, number, limit)})" if isinstance(v, dict) else f"{k}={describe(v, number, limit)}" for k, v in items[:limit]]
        return ", ".join(parts) + (", \u2026" if len(items) > limit else "")
    if isinstance(value, (list, tuple)):
        items = list(value)
        return "[" + ", ".join(describe(v, number, limit) for v in items[:limit]) + (", \u2026" if len(items) > limit else "") + "]"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, float, np.number)):
        return number(value)
    return "\u2014" if value is None else str(value)


def clipper_text(value: Any) -> str | None:
    """The ``clipper`` meta entry as text: a string as is; a dict by its "repr", else as name(params)."""
    if value is None or value == {}:
        return None
    if isinstance(value, dict):
        if isinstance(value.get("repr"), str):
            return value["repr"]
        params = ", ".join(f"{k}={v}" for k, v in value.items() if k != "name")
        return f"{value.get('name', 'clipper')}({params})"
    return str(value)


def default_title(items: Sequence[RunData | LabData]) -> str:
    if len(items) == 1:
        return f"gradguard report: {items[0].name}"
    runs = sum(isinstance(x, RunData) for x in items)
    labs = len(items) - runs
    parts = [f"{runs} run{'s' if runs != 1 else ''}"] if runs else []
    parts += [f"{labs} lab result set{'s' if labs != 1 else ''}"] if labs else []
    return "gradguard report: " + " and ".join(parts)


def versions_text(meta: dict[str, Any]) -> str:
    """Library versions recorded in the meta (``versions`` dict or ``<name>_version`` keys)."""
    found = dict(meta["versions"]) if isinstance(meta.get("versions"), dict) else {}
    found.update({k[: -len("_version")]: v for k, v in meta.items() if k.endswith("_version") and k != "schema_version"})
    return ", ".join(f"{k} {v}" for k, v in found.items())


def figure_table(fig: LabFigure, picks: int = 5) -> tuple[list[str], list[list[Any]]]:
    """A lab figure as a table: one row per line, its values at ``picks`` x positions spread over
    the longest line (NaN where a line has no point at that x). For Markdown and the HTML numbers."""
    if not fig.curves:
        return [], []
    longest = max(fig.curves, key=lambda c: len(c.x))
    n = len(longest.x)
    idx = sorted({round(i * (n - 1) / (picks - 1)) for i in range(picks)}) if n > 1 and picks > 1 else list(range(n))
    finite_x = np.abs(longest.x[np.isfinite(longest.x)])
    span = float(finite_x.max()) if finite_x.size else 0.0
    xs = [float(longest.x[i]) for i in idx]
    labels = [0.0 if abs(x) < 1e-9 * span else x for x in xs]  # -1.7e-16, the middle of a float grid, reads as 0
    rows = []
    for c in fig.curves:
        row: list[Any] = [c.label]
        for x in xs:
            hit = np.flatnonzero(np.isclose(c.x, x, rtol=1e-9, atol=0.0))
            row.append(float(c.y[hit[0]]) if len(hit) else math.nan)
        rows.append(row)
    return ["line", *(f"x = {x:.4g}" for x in labels)], rows


def severity_counts(findings: Sequence[Finding]) -> dict[str, int]:
    counts = {"error": 0, "warning": 0, "info": 0}
    for f in findings:
        counts[f.severity] = counts.get(f.severity, 0) + 1
    return counts


def event_details(event: dict[str, Any], limit: int = 240) -> str:
    """The payload of an event as 'key=value' text (JSON for nested values), shortened to ``limit``."""
    parts = []
    for key, value in event.items():
        if key in ("step", "kind"):
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        parts.append(f"{key}={text}")
    text = ", ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"

