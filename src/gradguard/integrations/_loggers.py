"""What the experiment-tracking loggers share: per-step metrics from Guard's chunks, module
selection (a filter and top-k), and the findings as rows, Markdown and JSON.

The metric names and their arithmetic are ``gradguard._metrics.metrics``, the one function every
logger (TensorBoard, W&B, MLflow, Lightning, the Hugging Face Trainer) calls, so a run shows the
same numbers under the same names wherever it is looked at.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from gradguard._errors import check_int
from gradguard._metrics import active_frac, metrics
from gradguard.integrations.tensorboard import ModuleFilter, _name_filter

# The step columns a logger reads from a chunk (the rest of a chunk's columns are for the report).
ROW_COLUMNS = ("norm_before", "norm_after", "threshold", "coef", "clipped", "skipped", "loss")

# One row per finding, in this column order (W&B table, TensorBoard Markdown, MLflow artifact).
FINDING_COLUMNS = ("severity", "code", "where", "message", "remedy", "step", "caused_by")


class ChunkMetrics:
    """Guard's chunks -> ``(step, {metric: value})``, for the steps ``every`` selects.

    Args:
        module_filter: which per-module norms to log: None (all), a glob (``"encoder.*"``), a
            list of globs, a compiled regular expression (matched with ``search``) or a function.
        top_k: of the modules the filter keeps, log only the ``top_k`` largest norms at each
            logged step (None: all of them).
        every: log every ``every``-th step (by step number); the running statistics
            (``clip/active_frac``, ``steps/skipped``) still count every step.
        window: how many recent steps ``clip/active_frac`` covers.
    """

    def __init__(self, module_filter: ModuleFilter = None, top_k: int | None = None, every: int = 1, window: int = 100):
        self.keep = _name_filter(module_filter)
        self.top_k = None if top_k is None else check_int("top_k", top_k, minimum=1)
        self.every = check_int("every", every, minimum=1)
        self.window = check_int("window", window, minimum=1)
        self.with_threshold: bool | None = None  # decided at the first chunk: only with a clipper
        self.skipped = 0
        self.last_step: int | None = None
        self._recent: deque[tuple[bool, bool]] = deque(maxlen=self.window)
        self._columns: tuple[list[str], np.ndarray] | None = None

    def _kept(self, names: Sequence[str]) -> np.ndarray:
        """Positions of the modules the filter keeps (cached per list of names)."""
        if self._columns is None or self._columns[0] != list(names):
            self._columns = (list(names), np.array([i for i, n in enumerate(names) if self.keep(n)], dtype=np.int64))
        return self._columns[1]

    def __call__(self, chunk) -> Iterator[tuple[int, dict[str, Any]]]:
        sc = chunk.scalars
        if self.with_threshold is None:
            # Without a clipper the threshold column is inf: a chart of it would say nothing.
            self.with_threshold = bool(np.isfinite(sc["threshold"]).any())
        kept = self._kept(chunk.module_names)
        for i, step in enumerate(chunk.steps.tolist()):
            row = {name: sc[name][i].item() for name in ROW_COLUMNS if name in sc}
            skipped = bool(row.get("skipped", False))
            self._recent.append((bool(row.get("clipped", False)), skipped))
            self.skipped += int(skipped)
            if step % self.every:
                continue
            clipped, skipped_recent = zip(*self._recent)
            values = chunk.modules[i, kept] if len(kept) else np.zeros(0)
            pairs = self._select([(chunk.module_names[j], float(v)) for j, v in zip(kept.tolist(), values.tolist())])
            self.last_step = step
            yield step, metrics(
                row,
                active_frac=active_frac(np.array(clipped), np.array(skipped_recent)),
                skipped=self.skipped,
                module_norms=pairs,
                with_threshold=self.with_threshold,
            )

    def _select(self, pairs: list[tuple[str, float]]) -> list[tuple[str, float]]:
        if self.top_k is None:
            return pairs
        finite = [(n, v) for n, v in pairs if math.isfinite(v)]
        return heapq.nlargest(self.top_k, finite, key=lambda nv: nv[1])


# ---------------------------------------------------------------------------------- findings
def finding_row(finding) -> list[Any]:
    """A finding as one row of FINDING_COLUMNS (plain strings and ints)."""
    return [
        finding.severity,
        finding.code,
        ", ".join(finding.where),
        finding.message,
        finding.remedy,
        -1 if finding.step is None else int(finding.step),
        getattr(finding, "caused_by", None) or "",
    ]


def findings_markdown(findings: Sequence) -> str:
    """A Markdown table of the findings, most urgent first (as ``guard.findings()`` orders them)."""
    if not findings:
        return "gradguard: no findings."
    lines = ["| severity | code | where | finding | remedy |", "| --- | --- | --- | --- | --- |"]
    for f in findings:
        where = ", ".join(f"`{w}`" for w in f.where[:4]) + (", ..." if len(f.where) > 4 else "")
        cells = [f.severity, f"**{f.code}**", where, f.message, f.remedy]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def findings_summary(findings: Sequence, limit: int = 5000) -> str:
    """One line per finding (``str(finding)``'s first line), cut to ``limit`` characters."""
    text = "\n".join(str(f).splitlines()[0] for f in findings) or "no findings"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
