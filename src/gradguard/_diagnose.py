"""Diagnosis and the report of one run, above the core: they read a ``RunData``, nothing else.

``Guard.findings()`` and ``Guard.report()`` hand their ``RunData`` here (imported when called, so
the core never imports the rules or the report); ``gradguard report STORE`` reaches the same
``findings_of`` through ``report.data.load``, so a run killed before ``close()`` gets the same
findings as one that closed.
"""

from __future__ import annotations

import os
from pathlib import Path

from gradguard._finding import Finding
from gradguard._rundata import RunData


def findings_of(run: RunData, stored: list[Finding] = ()) -> list[Finding]:
    """The rules' findings on ``run`` (root causes first), then any ``stored`` finding the rules
    did not make again (e.g. one written by another tool), so nothing a store holds is hidden."""
    from gradguard._rules import diagnose

    try:
        found = diagnose(run)
    except Exception as exc:  # a store from another version or tool the rules cannot read: say so, show what it holds
        import warnings

        from gradguard._errors import GradGuardWarning

        warnings.warn(f"the diagnosis rules could not read run {run.name!r} ({type(exc).__name__}: {exc}); "
                      "the report shows the findings stored with it.", GradGuardWarning, stacklevel=2)
        return list(stored)
    made = {(f.code, tuple(f.where)) for f in found}
    return found + [f for f in stored if (f.code, tuple(f.where)) not in made]


def write_run_report(run: RunData, path: str | os.PathLike, format: str = "html", title: str | None = None) -> Path:
    """The report of one run held in memory (no store round trip)."""
    from gradguard.report import write_report

    if run.findings is None:
        run.findings = findings_of(run)
    return write_report([run], path, format=format, title=title)
