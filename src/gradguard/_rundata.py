"""``RunData``: what the diagnosis rules read, from a live Guard or from a run store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# probe metric -> [(step, {module: value})], oldest first
Records = dict[str, list[tuple[int, dict[str, float]]]]
# vector metric -> [(step, module, values)]
Vectors = dict[str, list[tuple[int, str, np.ndarray]]]


@dataclass
class RunData:
    """Plain arrays and dicts; rules never see tensors or modules.

    ``meta`` may hold: ``norm_type``; ``clipper`` ({"name", "max_norm"?}); ``forward_order``
    (module names in forward order, input side first); ``layer_types`` ({name: class name});
    ``activation_types``; ``recurrent`` ({module: spectral numbers}); ``layers`` (inspect's table).
    """

    steps: np.ndarray
    scalars: dict[str, np.ndarray]
    module_names: list[str]
    grad_norms: np.ndarray
    records: Records = field(default_factory=dict)
    vectors: Vectors = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.steps)

    def latest(self, metric: str) -> tuple[int, dict[str, float]] | None:
        entries = self.records.get(metric)
        return entries[-1] if entries else None

    def series(self, metric: str, module: str) -> np.ndarray:
        return np.array([values.get(module, np.nan) for _, values in self.records.get(metric, [])], dtype=float)

    def finite_norms(self) -> np.ndarray:
        """Pre-clip total norms of steps that were not skipped and are finite."""
        norms = self.scalars.get("norm_before", np.zeros(0))
        skipped = self.scalars.get("skipped", np.zeros(len(norms))).astype(bool)
        return norms[~skipped & np.isfinite(norms)]

    @classmethod
    def from_store(cls, store) -> RunData:
        """Read everything the rules use from a ``RunStore``."""
        columns = store.steps()
        steps = columns.pop("step")
        _, names, grad = store.module_metric("grad_norm")
        records: Records = {}
        for metric in store.metrics():
            if metric == "grad_norm":
                continue
            at, modules, matrix = store.module_metric(metric)
            records[metric] = [
                (int(s), {m: float(v) for m, v in zip(modules, row) if np.isfinite(v)}) for s, row in zip(at.tolist(), matrix)
            ]
        vectors: Vectors = {}
        for metric in ("timestep_grad_norm",):
            entries = store.vectors(metric)
            if entries:
                vectors[metric] = entries
        if len(grad) != len(steps):  # align per-module norms with the steps table
            at, _, grad_only = store.module_metric("grad_norm")
            lookup = {s: row for s, row in zip(at.tolist(), grad_only)}
            grad = np.array([lookup.get(s, np.full(len(names), np.nan)) for s in steps.tolist()]).reshape(len(steps), len(names))
        return cls(steps, columns, names, grad, records, vectors, store.events(), store.meta)
