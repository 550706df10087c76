"""Read a lab results directory (JSON only) into ``LabData``: one claim per experiment and preset.

The lab runner (``gradguard.lab.runner``) writes, under its ``--out`` directory::

    <experiment>/<preset>/result.json          experiment, claim, anchor, preset, seeds, config,
                                               environment, jobs [{variant, seed, seconds, metrics}],
                                               verdict {status, passed, criterion, summary, measured,
                                               scale_limited}, errors (when jobs failed), created
    <experiment>/<preset>/jobs/<variant>.seed<k>.json   one finished job: experiment, preset,
                                               variant, seed, seconds, metrics
    <experiment>/<preset>/stores/<job>/<name>.db        run stores a job wrote

Any directory above or at that level works. An experiment whose jobs are (partly) finished but
not yet judged shows as "no verdict" with the finished jobs. Run stores are listed by path, not
read: pass one to ``gradguard report`` to see it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from gradguard.report.data import Claim, LabData

MAX_JOB_COLUMNS = 10  # scalar metrics shown per job; the rest stays in the JSON


def _read(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None  # unreadable or torn: skipped, like the runner does
    return data if isinstance(data, dict) else None


def read_results_dir(path: Path) -> LabData | None:
    """The lab results under ``path``, or None when it holds none."""
    claims: list[tuple[float, Claim]] = []
    judged: set[Path] = set()
    for result_file in sorted(path.rglob("result.json")):
        result = _read(result_file)
        if result is None or "experiment" not in result or "verdict" not in result:
            continue
        judged.add(result_file.parent)
        claims.append((float(result.get("created") or 0.0), claim_from_result(result, result_file.parent, path)))
    unjudged: dict[Path, list[dict[str, Any]]] = {}
    for job_file in sorted(path.rglob("jobs/*.json")):
        folder = job_file.parent.parent
        if folder in judged:
            continue
        record = _read(job_file)
        if record is not None and "experiment" in record and "metrics" in record:
            unjudged.setdefault(folder, []).append(record)
    for folder, records in unjudged.items():
        claims.append((math.inf, claim_in_progress(records, folder, path)))
    if not claims:
        return None
    claims.sort(key=lambda item: item[0])  # the order the runner judged them: the registry's order
    first = next((r for r in (_read(f) for f in sorted(path.rglob("result.json"))) if r and isinstance(r.get("environment"), dict)), None)
    meta = {}
    if first:
        env = first["environment"]
        meta = {"environment": ", ".join(f"{k} {v}" for k, v in env.items() if v is not None and k in ("gradguard", "torch", "python", "cuda")), "device": first.get("device", "")}
    return LabData(name=path.resolve().name, source=str(path), claims=[c for _, c in claims], meta={k: v for k, v in meta.items() if v})


def claim_from_result(result: dict[str, Any], folder: Path, root: Path) -> Claim:
    verdict = result.get("verdict") or {}
    status = str(verdict.get("status") or ("pass" if verdict.get("passed") else "fail"))
    columns, rows = measured_table(verdict.get("measured") or {})
    job_columns, job_rows = jobs_table(result.get("jobs") or [])
    notes = []
    for key, text in (result.get("errors") or {}).items():
        last = [line for line in str(text).strip().splitlines() if line.strip()][-1:] or [""]
        notes.append(f"job {key} failed: {last[0]}")
    stores = sorted(str(p.relative_to(root)) for p in (folder / "stores").rglob("*.db")) if (folder / "stores").is_dir() else []
    if stores:
        notes.append(f"{len(stores)} run store(s) under {folder.relative_to(root) / 'stores'}; `gradguard report <store>` shows one.")
    return Claim(
        experiment=str(result.get("experiment")),
        claim=str(result.get("claim", "")),
        anchor=str(result.get("anchor", "")),
        status=status,
        passed=bool(verdict.get("passed")) if "passed" in verdict else None,
        criterion=str(verdict.get("criterion", "")),
        summary=str(verdict.get("summary", "")),
        preset=str(result.get("preset", "")),
        seeds=len(result.get("seeds") or []),
        seconds=float(result.get("seconds") or math.nan),
        columns=columns,
        rows=rows,
        job_columns=job_columns,
        job_rows=job_rows,
        notes=notes,
        source=str(folder / "result.json"),
    )


def claim_in_progress(records: list[dict[str, Any]], folder: Path, root: Path) -> Claim:
    job_columns, job_rows = jobs_table(records)
    first = records[0]
    return Claim(
        experiment=str(first.get("experiment")),
        claim="",
        anchor="",
        status="no verdict",
        passed=None,
        summary=f"{len(records)} job(s) finished; the experiment has not been judged yet (its run was interrupted or is still going).",
        preset=str(first.get("preset", "")),
        job_columns=job_columns,
        job_rows=job_rows,
        source=str(folder / "jobs"),
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


def jobs_table(jobs: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """One row per job: variant, seed, then its scalar metrics (lists and curves left out)."""
    if not jobs:
        return [], []
    keys: list[str] = []
    for job in jobs:
        metrics = job.get("metrics") or {}
        keys.extend(k for k, v in metrics.items() if _scalar(v) and k not in keys)
    keys = keys[:MAX_JOB_COLUMNS]
    rows = [[str(job.get("variant", "")), job.get("seed"), *((job.get("metrics") or {}).get(k) for k in keys)] for job in jobs]
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
