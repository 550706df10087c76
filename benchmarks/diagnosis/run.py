"""The diagnosis benchmark: ``python -m benchmarks.diagnosis.run [--smoke] [--only NAME...] [--markdown FILE]``.

For every scenario of the zoo (``zoo.SCENARIOS``): train the broken run under a Guard, diagnose
it, and score the diagnosis:

* top-1: the first finding at warning or above has one of the scenario's cause codes;
* top-3: one of the first three findings at warning or above has one;
* latency: the first step at which the diagnosis of the run so far (the run data cut at that
  step) is top-1 right; learning-rate blow-ups must get there before their first non-finite step;
* remedy: apply the top finding's ``Finding.fix`` to the config, train again, and compare the
  final loss (median over the last tenth of the steps) with the healthy twin's (the broken config
  with the zoo's own fix): success within 2x.

Healthy controls count false warnings: any finding at warning or above. Prints a Markdown table
and the totals against the targets, writes ``diagnosis.json`` and ``diagnosis.md`` to ``--out``,
and with ``--markdown FILE`` replaces the "Diagnosis benchmark" section of that file.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from benchmarks.diagnosis.train import apply_fix, train
from benchmarks.diagnosis.zoo import BY_NAME, SCENARIOS, SMOKE, SMOKE_STEPS, Scenario

TARGETS = {"top1": 0.90, "top3": 1.0, "false_warnings": 0, "latency": 0.90, "remedy": 0.80}
REMEDY_FACTOR = 2.0
SECTION = "## Diagnosis benchmark"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results"
BEFORE = Path(__file__).resolve().parent / "results_before" / "diagnosis.json"


def diagnose(data) -> list:
    from gradguard._rules import diagnose as rules

    return rules(data)


def urgent(findings: list) -> list:
    return [f for f in findings if f.severity in ("warning", "error")]


def cut(data, step: int):
    """The run data as it stood after ``step``: what a diagnosis at that step could read."""
    keep = data.steps <= step
    records = {m: [(s, v) for s, v in entries if s <= step] for m, entries in data.records.items()}
    vectors = {m: [e for e in entries if e[0] <= step] for m, entries in data.vectors.items()}
    events = [e for e in data.events if e.get("step") is None or e.get("step") <= step]
    scalars = {k: v[keep] for k, v in data.scalars.items()}
    return replace(data, steps=data.steps[keep], scalars=scalars, grad_norms=data.grad_norms[keep], records=records, vectors=vectors, events=events)


def detection_step(data, causes: tuple[str, ...]) -> int | None:
    """The first step at which the diagnosis of the run so far names a cause first."""
    steps = data.steps.tolist()
    for i, step in enumerate(steps):
        if i >= 50 and i % 5 and i != len(steps) - 1:
            continue  # every step for the first 50, every fifth after
        top = urgent(diagnose(cut(data, step)))
        if top and top[0].code in causes:
            return int(step)
    return None


def score(s: Scenario, latency: bool = True, steps: int | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    broken = train(s.config(steps))
    findings = diagnose(broken.data)
    warn = urgent(findings)
    row: dict[str, Any] = {
        "name": s.name,
        "healthy": s.healthy,
        "causes": list(s.causes),
        "findings": [f"{f.severity}:{f.code}" + (f"<-{f.caused_by}" if getattr(f, "caused_by", None) else "") for f in findings],
        "top": warn[0].code if warn else None,
        "broken_loss": broken.final_loss,
        "first_nonfinite": broken.first_nonfinite,
    }
    if s.healthy:
        row["false_warnings"] = [f.code for f in warn]
        row["seconds"] = time.perf_counter() - t0
        return row
    row["top1"] = bool(warn) and warn[0].code in s.causes
    row["top3"] = any(f.code in s.causes for f in warn[:3])
    if latency:
        detect = detection_step(broken.data, s.causes) if row["top1"] else None
        row["detected_at"] = detect
        row["latency"] = None if detect is None else detect - s.onset
        nf = broken.first_nonfinite
        row["before_nonfinite"] = detect is not None and (nf is None or detect < nf)
    twin = train(s.twin(steps))
    row["twin_loss"] = twin.final_loss
    row["twin_warnings"] = [f.code for f in urgent(diagnose(twin.data))]
    fix = dict(getattr(warn[0], "fix", {}) or {}) if warn else {}
    row["fix"] = fix
    if fix:
        cfg, unused = apply_fix(s.config(steps), fix)
        if unused:
            row["remedy"], row["remedy_loss"] = f"not applicable ({', '.join(unused)})", math.nan
        else:
            remedied = train(cfg)
            row["remedy_loss"] = remedied.final_loss
            ok = math.isfinite(remedied.final_loss) and remedied.final_loss <= REMEDY_FACTOR * twin.final_loss
            row["remedy"] = "trains" if ok else "fails"
    else:
        row["remedy"], row["remedy_loss"] = "no fix", math.nan
    row["seconds"] = time.perf_counter() - t0
    return row


def totals(rows: list[dict]) -> dict[str, Any]:
    broken = [r for r in rows if not r["healthy"]]
    healthy = [r for r in rows if r["healthy"]]
    blowups = [r for r in broken if BY_NAME[r["name"]].lr_blowup and "before_nonfinite" in r]

    def share(items, key):
        return sum(bool(r.get(key)) for r in items) / len(items) if items else math.nan

    return {
        "scenarios": len(broken),
        "controls": len(healthy),
        "top1": share(broken, "top1"),
        "top3": share(broken, "top3"),
        "false_warnings": sum(bool(r["false_warnings"]) for r in healthy),
        "latency": share(blowups, "before_nonfinite"),
        "remedy": sum(r.get("remedy") == "trains" for r in broken) / len(broken) if broken else math.nan,
    }


def _g(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return "inf" if math.isinf(x) else "-" if math.isnan(x) else f"{x:.3g}"
    return str(x)


def markdown(rows: list[dict], tot: dict, before: dict | None = None) -> str:
    out = ["| scenario | cause | top finding | top-1 | top-3 | detected at step (first non-finite) | fix applied | loss: broken / remedy / twin | remedy |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if r["healthy"]:
            out.append(f"| {r['name']} | (healthy) | {r['top'] or 'none'} | | | | | {_g(r['broken_loss'])} | "
                       f"{'false warning: ' + ', '.join(r['false_warnings']) if r['false_warnings'] else 'quiet'} |")
            continue
        det = f"{_g(r.get('detected_at'))} ({_g(r['first_nonfinite'])})"
        fix = json.dumps(r["fix"]).replace("|", "/") if r["fix"] else "-"
        out.append(f"| {r['name']} | {', '.join(r['causes'])} | {r['top'] or 'none'} | {'yes' if r['top1'] else 'no'} | {'yes' if r['top3'] else 'no'} "
                   f"| {det} | `{fix}` | {_g(r['broken_loss'])} / {_g(r['remedy_loss'])} / {_g(r['twin_loss'])} | {r['remedy']} |")
    out += ["", "| metric | target | " + ("before | " if before else "") + "now |", "| --- | --- | " + ("--- | " if before else "") + "--- |"]
    labels = [("top1", "top-1 root-cause accuracy", ">= 90%"), ("top3", "top-3 accuracy", "100%"),
              ("false_warnings", "healthy controls with a false warning", "0"),
              ("latency", "lr blow-ups flagged before the first non-finite step", ">= 90%"),
              ("remedy", "remedy success (top finding's fix, within 2x of the twin's loss)", ">= 80%")]
    def fmt(t: dict, key: str) -> str:
        v = t.get(key, math.nan)
        return f"{v}" if key == "false_warnings" else ("-" if math.isnan(v) else f"{v:.0%}")

    for key, label, target in labels:
        out.append(f"| {label} | {target} | " + (f"{fmt(before, key)} | " if before else "") + f"{fmt(tot, key)} |")
    out.append("")
    out.append(f"{tot['scenarios']} broken scenarios, {tot['controls']} healthy controls.")
    twins = [f"{r['name']} ({', '.join(r['twin_warnings'])})" for r in rows if r.get("twin_warnings")]
    if twins:  # not a target, but a warning on a run that trains deserves a look
        out.append(f"Healthy twins with a warning (not counted above): {'; '.join(twins)}.")
    return "\n".join(out)


INTRO = """\
`make bench-diagnosis` (`python -m benchmarks.diagnosis.run --markdown BENCHMARKS.md`) trains every
scenario of the zoo (`benchmarks/diagnosis/zoo.py`): small broken runs, each with the cause codes a
right diagnosis may name first, the fix known to make it train (a config change, in the vocabulary
of `Finding.fix`) and a healthy twin (the broken config with that fix), plus healthy controls. Each
run is a plain loop under `gg.Guard(model, probes="business")` (`"full"` for the recurrent ones),
one CPU thread, 80 to 300 steps, seeded; the whole benchmark takes a few minutes.

* **top-1**: the first finding at warning or above (findings in `diagnose()`'s order: causes
  first) has one of the scenario's cause codes; **top-3**: one of the first three at warning or
  above has one.
* **detected at**: the first step at which the diagnosis of the run so far (its run data cut at
  that step) is top-1 right; for learning-rate blow-ups it must come before the first non-finite
  step (or the run must have none).
* **remedy**: the top finding's `Finding.fix` applied to the config, the run trained again; it
  trains when its final loss (median of the last tenth of the steps) is finite and within 2x of
  the twin's. 2x is loose where the broken run's loss is already within 2x of its twin's (chance
  level of a 10-class task is 2.3): read the three losses, not only the verdict.
* **healthy controls**: any finding at warning or above is a false warning.

"before" is the same zoo diagnosed by the rules as they stood before they named root causes
(commit 578c287, `benchmarks/diagnosis/results_before/`): their findings had no `fix`, so no
remedy could be applied, and their top finding was a symptom (NONFINITE, EXPLODING_GRADIENT,
VANISHING_GRADIENT) more often than a cause.

The thresholds of the rules were set with this zoo in view (each says why it has its value in
`_rules/_thresholds.py`), so the figures below measure the rules on runs like the ones they were
tuned on, not on unseen failures.
"""


def replace_section(path: Path, body: str) -> None:
    """Replace (or append) the diagnosis section of ``path``; every other section stays as it is."""
    text = path.read_text() if path.exists() else ""
    section = f"{SECTION}\n\n{body.rstrip()}\n"
    if SECTION in text:
        start = text.index(SECTION)
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + (text[nxt:] if nxt >= 0 else "")
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.diagnosis.run", description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help=f"only {', '.join(SMOKE)}")
    p.add_argument("--only", nargs="+", choices=sorted(BY_NAME), metavar="NAME", help="run only these scenarios")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for diagnosis.json and diagnosis.md (default %(default)s)")
    p.add_argument("--markdown", type=Path, help="replace the 'Diagnosis benchmark' section of this file (e.g. BENCHMARKS.md)")
    p.add_argument("--before", type=Path, default=BEFORE, help="a diagnosis.json from an earlier run, whose totals are shown beside these "
                   "(default: the rules before root causes were diagnosed, %(default)s)")
    p.add_argument("--intro", type=Path, help="a Markdown file put before the table in the --markdown section")
    p.add_argument("--no-latency", action="store_true", help="skip the per-step latency replay")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    names = args.only or (SMOKE if args.smoke else [s.name for s in SCENARIOS])
    rows = []
    for name in names:
        row = score(BY_NAME[name], latency=not args.no_latency, steps=SMOKE_STEPS if args.smoke else None)
        rows.append(row)
        print(f"{name}: top={row['top']} " + ("" if row["healthy"] else f"top1={row['top1']} remedy={row['remedy']} ") + f"({row['seconds']:.1f}s)", flush=True)
    tot = totals(rows)
    before = json.loads(args.before.read_text())["totals"] if args.before and args.before.exists() and not (args.only or args.smoke) else None
    table = markdown(rows, tot, before)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "diagnosis.json").write_text(json.dumps({"rows": rows, "totals": tot, "torch": torch.__version__}, indent=1, default=str))
    (args.out / "diagnosis.md").write_text(table + "\n")
    if args.markdown:
        intro = args.intro.read_text().rstrip() + "\n\n" if args.intro else INTRO + "\n"
        replace_section(args.markdown, intro + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
