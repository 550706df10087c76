"""Read a lab results directory (JSON only) into ``LabData``: one claim per experiment and preset.

What the lab runner writes is defined once, in ``gradguard.lab.records`` (``Result``,
``JobRecord``, ``FigureSpec``), and read here through its reader. Any directory above or at the
level of ``<experiment>/<preset>/result.json`` works. An experiment whose jobs are (partly)
finished but not yet judged shows as "no verdict" with the finished jobs. Run stores are listed
by path, not read: pass one to ``gradguard report`` to see it.

Curves: each figure draws one line per variant, its seeds aggregated point by point (geometric
mean when all its finite values are positive, else arithmetic; the seeds' min and max as a band).
Seeds of unequal length are cut to the shortest, and the figure's notes say so. A result with no
spec gets the fallback: every list of numbers with the same length in every job, against its
index, log y when all values are positive and span more than 100x.

This module does not import ``report.data``: ``report.data`` imports the lab types from here.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import numpy as np

from gradguard._io import NONFINITE
from gradguard.lab.records import FigureSpec, JobRecord, Result, read_results, read_unjudged

MAX_JOB_COLUMNS = 10  # scalar metrics shown per job; the rest stays in the JSON
MAX_FALLBACK_FIGURES = 8  # figures drawn for a result that declares none


@dataclass
class Curve:
    """One line of a lab figure: a variant's curve, its seeds aggregated point by point.

    ``y`` is the geometric mean over the seeds finite there when every finite value of the
    variant is positive, else their arithmetic mean; ``low``/``high`` are the seeds' min and max
    (None for one seed). ``reference`` marks a bound or baseline drawn dashed; ``group`` is the
    variant's index, so that a variant and its reference share a colour.
    """

    label: str
    x: np.ndarray
    y: np.ndarray
    low: np.ndarray | None = None
    high: np.ndarray | None = None
    reference: bool = False
    group: int = 0
    seeds: int = 1


@dataclass
class LabFigure:
    """A figure of a lab claim: its curves and how to draw them (the experiment's declared spec,
    or the fallback for results that declare none). ``notes`` say what was truncated or left out."""

    title: str
    metric: str
    curves: list[Curve]
    x_label: str = ""
    y_label: str = ""
    log_y: bool = False
    reference_label: str = ""
    hlines: list[tuple[float, str]] = field(default_factory=list)
    caption: str = ""
    notes: list[str] = field(default_factory=list)
    declared: bool = True  # False: drawn by the fallback (the result declares no figure)


@dataclass
class Claim:
    """One lab experiment (at one preset): its claim and anchor, the verdict, the measured numbers.

    ``status`` is the lab's word: "pass", "fail", "not reproduced at quick scale", "set-up ran
    (smoke)", "error", or "no verdict" (jobs finished, not judged yet). ``columns``/``rows``: the
    verdict's measured numbers; ``job_columns``/``job_rows``: every job's scalar metrics;
    ``figures``: its curves.
    """

    experiment: str
    claim: str
    anchor: str
    status: str
    passed: bool | None
    criterion: str = ""
    summary: str = ""
    preset: str = ""
    seeds: int = 0
    seconds: float = math.nan
    columns: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    job_columns: list[str] = field(default_factory=list)
    job_rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    source: str = ""
    figures: list[LabFigure] = field(default_factory=list)


@dataclass
class LabData:
    """A lab results directory: one ``Claim`` per experiment found there."""

    name: str
    source: str
    claims: list[Claim]
    meta: dict[str, Any] = field(default_factory=dict)


def read_results_dir(path: Path) -> LabData | None:
    """The lab results under ``path``, or None when it holds none."""
    claims: list[tuple[float, Claim]] = []
    found = list(read_results(path))
    for folder, result in found:
        created = result.created if math.isfinite(result.created) else 0.0
        claims.append((created, claim_from_result(result, folder, path)))
    for folder, jobs in read_unjudged(path, {folder for folder, _ in found}).items():
        claims.append((math.inf, claim_in_progress(jobs, folder, path)))
    if not claims:
        return None
    claims.sort(key=lambda item: item[0])  # the order the runner judged them: the registry's order
    first = next((r for _, r in found if r.environment), None)
    meta = {}
    if first:
        env = first.environment
        meta = {"environment": ", ".join(f"{k} {v}" for k, v in env.items() if v is not None and k in ("gradguard", "torch", "python", "cuda")), "device": first.device}
    return LabData(name=path.resolve().name, source=str(path), claims=[c for _, c in claims], meta={k: v for k, v in meta.items() if v})


def claim_from_result(result: Result, folder: Path, root: Path) -> Claim:
    verdict = result.verdict
    columns, rows = measured_table(verdict.measured)
    job_columns, job_rows = jobs_table(result.jobs)
    notes = []
    for key, text in result.errors.items():
        last = [line for line in str(text).strip().splitlines() if line.strip()][-1:] or [""]
        notes.append(f"job {key} failed: {last[0]}")
    figures, figure_notes = lab_figures(result.jobs, result.figures)
    notes += figure_notes
    stores = sorted(str(p.relative_to(root)) for p in (folder / "stores").rglob("*.db")) if (folder / "stores").is_dir() else []
    if stores:
        notes.append(f"{len(stores)} run store(s) under {folder.relative_to(root) / 'stores'}; `gradguard report <store>` shows one.")
    return Claim(
        experiment=result.experiment,
        claim=result.claim,
        anchor=result.anchor,
        status=verdict.status,
        passed=None if verdict.error or verdict.setup_only else verdict.passed,
        criterion=verdict.criterion,
        summary=verdict.summary,
        preset=result.preset,
        seeds=len(result.seeds),
        seconds=result.seconds,
        columns=columns,
        rows=rows,
        job_columns=job_columns,
        job_rows=job_rows,
        notes=notes,
        source=str(folder / "result.json"),
        figures=figures,
    )


def claim_in_progress(records: list[JobRecord], folder: Path, root: Path) -> Claim:
    job_columns, job_rows = jobs_table(records)
    figures, notes = lab_figures(records, [])  # no result.json yet, so no spec: the fallback
    first = records[0]
    return Claim(
        experiment=first.experiment,
        claim="",
        anchor="",
        status="no verdict",
        passed=None,
        summary=f"{len(records)} job(s) finished; the experiment has not been judged yet (its run was interrupted or is still going).",
        preset=first.preset,
        job_columns=job_columns,
        job_rows=job_rows,
        notes=notes,
        source=str(folder / "jobs"),
        figures=figures,
    )


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def measured_table(measured: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The verdict's measured numbers as a table.

    ``{quantity: {variant: value}}`` (every entry a dict) becomes variants x quantities; anything
    else one row per entry, nested values written out as text.
    """
    if not isinstance(measured, dict) or not measured:
        return [], []
    if all(isinstance(v, dict) for v in measured.values()):
        variants: list[str] = []
        for inner in measured.values():
            variants.extend(k for k in inner if k not in variants)
        rows = [[variant, *(_cell(measured[q].get(variant)) for q in measured)] for variant in variants]
        return ["", *measured], rows
    return ["quantity", "value"], [[key, _cell(value)] for key, value in measured.items()]


def jobs_table(jobs: list[JobRecord]) -> tuple[list[str], list[list[Any]]]:
    """One row per job: variant, seed, then its scalar metrics (lists and curves left out)."""
    if not jobs:
        return [], []
    keys: list[str] = []
    for job in jobs:
        keys.extend(k for k, v in job.metrics.items() if _scalar(v) and k not in keys)
    keys = keys[:MAX_JOB_COLUMNS]
    rows = [[job.variant, job.seed, *(job.metrics.get(k) for k in keys)] for job in jobs]
    return ["variant", "seed", *keys], rows


def _cell(value: Any) -> Any:
    """Numbers and strings as they are; lists and dicts as compact text."""
    if _scalar(value):
        return value
    if isinstance(value, list):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_text(v)}" for k, v in value.items())
    return str(value)


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "\u2014"
    return str(value) if _scalar(value) else _cell(value)


# ---------------------------------------------------------------------- figures
def lab_figures(jobs: list[JobRecord], specs: list[FigureSpec]) -> tuple[list[LabFigure], list[str]]:
    """The figures of one experiment's jobs, by its declared ``specs`` (the ``figures`` of
    result.json), or by the fallback when it declares none. Returns (figures, notes for the claim)."""
    declared = bool(specs)
    if not declared:
        specs = fallback_specs(jobs)
    figures, notes = [], []
    for spec in specs:
        fig, note = build_figure(jobs, spec, declared)
        if fig is not None:
            figures.append(fig)
        if note:
            notes.append(note)
    return figures, notes


def fallback_specs(jobs: list[JobRecord]) -> list[FigureSpec]:
    """Specs for a result that declares none: each top-level metric that is a list of numbers of
    one length in every job that has it (at least two points); log y decided from the values."""
    lengths: dict[str, set[int]] = {}
    other: set[str] = set()
    for job in jobs:
        for key, value in job.metrics.items():
            curve = _curve(value)
            if curve is None or curve[0] is not None:
                other.add(key)  # a scalar, text, a dict, or [x, y] pairs: not drawn without a spec
            else:
                lengths.setdefault(key, set()).add(len(curve[1]))
    keys = [k for k, n in lengths.items() if k not in other and len(n) == 1 and next(iter(n)) >= 2]
    caption = "This result declares no figure, so every list of numbers of one length across its jobs is drawn against its index."
    return [FigureSpec(k, k.replace("_", " "), x_label="index", y_label=k, log_y=None, caption=caption) for k in keys[:MAX_FALLBACK_FIGURES]]


def build_figure(jobs: list[JobRecord], spec: FigureSpec, declared: bool = True) -> tuple[LabFigure | None, str]:
    """One figure: a line per variant (and its reference); (None, why) when there is nothing to draw."""
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        if spec.variants and not any(fnmatchcase(job.variant, p) for p in spec.variants):
            continue
        by_variant.setdefault(job.variant, []).append(job.metrics)
    if not by_variant:
        return None, ""  # the run has none of the variants this figure draws (e.g. a task it skipped)
    curves: list[Curve] = []
    notes: list[str] = []
    missing = []
    for group, (variant, metrics) in enumerate(by_variant.items()):
        line = aggregate(variant, [_seed_curve(m, spec.metric, spec.x) for m in metrics], notes)
        if line is None:
            missing.append(variant)
            continue
        line.group = group
        curves.append(line)
        if spec.reference:
            ref = aggregate(f"{variant}: {spec.reference_label or spec.reference}", [_seed_curve(m, spec.reference, spec.x) for m in metrics], notes)
            if ref is not None:
                ref.reference, ref.group = True, group
                curves.append(ref)
    if not curves:
        return None, f"figure {spec.title!r} not drawn: no job has a curve in metric {spec.metric!r}."
    log_y = spec.log_y
    if log_y is None:  # the fallback: log y when every value is positive and they span over 100x
        values = np.concatenate([c.y[np.isfinite(c.y)] for c in curves])
        log_y = bool(values.size) and values.min() > 0 and values.max() / values.min() > 100
    if log_y:
        for c in curves:
            off = np.isfinite(c.y) & (c.y <= 0)
            if off.any() and not c.reference:
                i = int(np.flatnonzero(off)[0])
                notes.append(f"{c.label}: {int(off.sum())} value(s) <= 0 (the first {c.y[i]:.4g} at x = {c.x[i]:.4g}) are off the log axis; triangles on its bottom edge mark them.")
    if spec.x and all(_curve(_lookup(m, spec.x)) is None for ms in by_variant.values() for m in ms):
        notes.append(f"no job has the x values {spec.x!r}; drawn against the index 0, 1, 2, ...")
    if missing:
        notes.append(f"drawn for {len(by_variant) - len(missing)} of {len(by_variant)} variants; no curve in {spec.metric!r} for: {', '.join(missing)}.")
    fig = LabFigure(
        title=spec.title,
        metric=spec.metric,
        curves=curves,
        x_label=spec.x_label,
        y_label=spec.y_label,
        log_y=bool(log_y),
        reference_label=spec.reference_label,
        hlines=list(spec.hlines),
        caption=spec.caption,
        notes=notes,
        declared=declared,
    )
    return fig, ""


def aggregate(label: str, seeds: list[tuple[np.ndarray | None, np.ndarray] | None], notes: list[str]) -> Curve | None:
    """The seeds' curves of one variant as one line; None when no seed has the curve.

    Point by point over the seeds finite there: the geometric mean when every finite value is
    positive (ratios and losses spread over decades: the arithmetic mean would follow the largest
    seed), else the arithmetic mean. Seeds of unequal length are cut to the shortest.
    """
    seeds = [s for s in seeds if s is not None]
    if not seeds:
        return None
    n = min(len(y) for _, y in seeds)
    longest = max(len(y) for _, y in seeds)
    if longest != n:
        notes.append(f"{label}: the seeds' curves have {n} to {longest} points; drawn up to the shortest ({n}).")
    xs = [x for x, _ in seeds if x is not None]
    if xs:
        if min(len(x) for x in xs) < n:
            n = min(len(x) for x in xs)
            notes.append(f"{label}: fewer x values than points; drawn up to {n}.")
        x = xs[0][:n]
        if len(xs) < len(seeds) or any(not np.array_equal(other[:n], x, equal_nan=True) for other in xs[1:]):
            notes.append(f"{label}: the seeds' x values differ; the first seed's are used.")
    else:
        x = np.arange(n, dtype=np.float64)
    ys = np.stack([y[:n] for _, y in seeds])
    ys[~np.isfinite(ys)] = np.nan  # inf (a diverged run) cannot be drawn: a gap, like a missing value
    if len(seeds) == 1:
        return Curve(label, x, ys[0], seeds=1)
    finite = np.isfinite(ys)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: NaN is the right answer
        if finite.any() and (ys[finite] > 0).all():
            y = np.exp(np.nanmean(np.log(ys), axis=0))
        else:
            y = np.nanmean(ys, axis=0)
        low, high = np.nanmin(ys, axis=0), np.nanmax(ys, axis=0)
    y[~np.isfinite(y)] = np.nan  # the mean of two values near the float limit can overflow
    partial = finite.any(axis=0) & ~finite.all(axis=0)
    if partial.any():
        notes.append(f"{label}: at {int(partial.sum())} point(s) only some seeds have a finite value; the line aggregates those.")
    return Curve(label, x, y, low, high, seeds=len(seeds))


def _seed_curve(metrics: dict[str, Any], path: str, x_path: str) -> tuple[np.ndarray | None, np.ndarray] | None:
    curve = _curve(_lookup(metrics, path))
    if curve is None:
        return None
    x, y = curve
    if x_path:
        given = _curve(_lookup(metrics, x_path))
        if given is not None and given[0] is None:
            x = given[1]
    return x, y


def _lookup(metrics: dict[str, Any], path: str) -> Any:
    """``metrics[path]``, or the nested value a dotted path names ("curve.df")."""
    if path in metrics:
        return metrics[path]
    node: Any = metrics
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _curve(value: Any) -> tuple[np.ndarray | None, np.ndarray] | None:
    """A metric as (x or None, y): a list of numbers, or of [x, y] pairs; None when it is neither.
    None and "nan" in the list are missing values (NaN); "inf" and "-inf" are the runner's infinities."""
    if not isinstance(value, list):
        return None
    if value and all(isinstance(v, list) and len(v) == 2 for v in value):
        xs, ys = [_number(v[0]) for v in value], [_number(v[1]) for v in value]
        if None in xs or None in ys:
            return None
        return np.array(xs, dtype=np.float64), np.array(ys, dtype=np.float64)
    ys = [_number(v) for v in value]
    if None in ys:
        return None
    return None, np.array(ys, dtype=np.float64)


def _number(value: Any) -> float | None:
    if value is None:
        return math.nan
    if isinstance(value, bool):
        return None  # a list of flags is no curve
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value in NONFINITE:
        return NONFINITE[value]
    return None
