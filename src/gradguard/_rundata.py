"""``RunData``: everything one run measured, as plain numpy arrays and Python values.

This is the one record of a run. It is built from a live Guard (``Recorder.run_data``), from a run
store (``RunData.from_store``), or from any other framework's adapter, which hands the
``Recorder`` host-side chunks of numpy columns (``Recorder.add_chunk``). The diagnosis rules, the
report and every logger read it; none of them sees a tensor or a module.

The per-step columns are declared once, in ``STEP_COLUMNS``: the Guard stacks them on the device
in that order, ``History`` and ``Chunk`` hold them by name, and the run store creates, writes and
reads its ``steps`` table from the same list. Adding a column is one line there (plus whatever
fills it: Guard's ``_step_row``, or an adapter's chunk); a store written before it reads as NaN.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradguard._events import as_event


@dataclass(frozen=True)
class Column:
    """One per-step column: ``kind`` is "float" (NaN = not measured) or "bool" (stored 0/1)."""

    name: str
    kind: str
    meaning: str


STEP_COLUMNS: tuple[Column, ...] = (
    Column("norm_before", "float", "total gradient norm before clipping (NaN/Inf on a non-finite step)"),
    Column("norm_after", "float", "total gradient norm after clipping"),
    Column("threshold", "float", "the clipper's bound at this step (inf without a clipper)"),
    Column("coef", "float", "clip coefficient norm_after / norm_before, as the clipper computed it (1 when it did not act)"),
    Column("clipped", "bool", "whether clipping changed any gradient"),
    Column("skipped", "bool", "whether the non-finite policy skipped the optimizer step"),
    Column("loss", "float", "the loss given to guard.step(loss=...), NaN when none was given"),
    Column("lr", "float", "largest learning rate over the optimizer's param groups, NaN without an optimizer"),
)
COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in STEP_COLUMNS)
BOOL_COLUMNS = frozenset(c.name for c in STEP_COLUMNS if c.kind == "bool")

# probe metric -> [(step, {module: value})], oldest first
Records = dict[str, list[tuple[int, dict[str, float]]]]
# vector metric -> [(step, module, values)]
Vectors = dict[str, list[tuple[int, str, np.ndarray]]]


def empty_columns(n: int = 0) -> dict[str, np.ndarray]:
    """Every declared column, ``n`` steps of "not measured" (NaN; False for bool columns)."""
    return {c.name: (np.zeros(n, dtype=bool) if c.kind == "bool" else np.full(n, np.nan)) for c in STEP_COLUMNS}


def normalize_columns(columns: Mapping[str, Any], n: int) -> dict[str, np.ndarray]:
    """Declared columns as numpy arrays of length ``n``: missing ones filled as not measured,
    bool columns as bool, float columns as float64. Extra (undeclared) names are kept as given."""
    out = empty_columns(n)
    for name, values in columns.items():
        array = np.asarray(values)
        if array.shape != (n,):
            raise ValueError(f"step column {name!r} has shape {array.shape}; expected ({n},), one value per step.")
        if name in BOOL_COLUMNS:
            out[name] = array.astype(bool) if array.dtype == bool else (np.nan_to_num(array.astype(np.float64)) > 0)
        elif name in out:
            out[name] = array.astype(np.float64)
        else:
            out[name] = array
    return out


@dataclass
class ModuleMetric:
    """One per-module metric over training: ``values`` is steps x modules, NaN where not measured."""

    steps: np.ndarray
    modules: list[str]
    values: np.ndarray

    def measured(self) -> np.ndarray:
        """Indices of the modules this metric measured at least once."""
        if not self.values.size:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(np.isfinite(self.values).any(axis=0))

    def latest(self) -> tuple[int, np.ndarray] | None:
        """(step, values over modules) at the latest step that measured any module, or None."""
        finite = np.isfinite(self.values).any(axis=1) if self.values.size else np.zeros(0, bool)
        rows = np.flatnonzero(finite)
        if not len(rows):
            return None
        row = rows[-1]
        return int(self.steps[row]), self.values[row]


@dataclass
class Timesteps:
    """||dL/dh_t|| of one recurrent module: ``values`` is training steps x time steps (NaN-padded)."""

    module: str
    steps: np.ndarray
    values: np.ndarray


@dataclass
class RunData:
    """Plain arrays and dicts: what the rules, the report and the loggers read.

    ``steps`` are the step numbers; ``scalars[name]`` the declared step columns (``STEP_COLUMNS``)
    aligned with them, plus ``wall_time`` when read from a store; ``grad_norms`` is steps x
    ``module_names``. ``records``/``vectors`` hold the probes' per-module values and vectors;
    ``events`` the typed events (skips, spikes, forensics, non-finite locations).

    ``meta`` may hold: ``name``, ``norm_type``; ``clipper`` ({"name", "max_norm"?}); ``forward_order``
    (module names in forward order, input side first); ``layer_types`` ({name: class name});
    ``activation_types``; ``recurrent`` ({module: spectral numbers}); ``layers`` (inspect's table).

    ``findings`` is None until someone ran the rules (``gradguard._diagnose.findings_of``).
    """

    steps: np.ndarray
    scalars: dict[str, np.ndarray]
    module_names: list[str]
    grad_norms: np.ndarray
    records: Records = field(default_factory=dict)
    vectors: Vectors = field(default_factory=dict)
    events: list = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    findings: list | None = None
    source: str = ""

    def __post_init__(self) -> None:
        self.steps = np.asarray(self.steps, dtype=np.int64)
        self.scalars = normalize_columns(self.scalars, len(self.steps))
        self.grad_norms = np.asarray(self.grad_norms, dtype=np.float64).reshape(len(self.steps), len(self.module_names))
        self.events = [as_event(e) for e in self.events]

    def __len__(self) -> int:
        return len(self.steps)

    # ------------------------------------------------------------------ what the rules read
    def latest(self, metric: str) -> tuple[int, dict[str, float]] | None:
        entries = self.records.get(metric)
        return entries[-1] if entries else None

    def series(self, metric: str, module: str) -> np.ndarray:
        return np.array([values.get(module, np.nan) for _, values in self.records.get(metric, [])], dtype=float)

    def finite_norms(self) -> np.ndarray:
        """Pre-clip total norms of steps that were not skipped and are finite."""
        norms = self.scalars["norm_before"]
        return norms[~self.scalars["skipped"] & np.isfinite(norms)]

    # ------------------------------------------------------------------ what the report reads
    @property
    def name(self) -> str:
        from pathlib import Path

        label = self.meta.get("name")
        if label:
            return str(label)
        return Path(self.source).stem if self.source and self.source != ":memory:" else "run"

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    def columns(self) -> dict[str, np.ndarray]:
        """``{"step": steps, **scalars}``: the steps table as one dict."""
        return {"step": self.steps, **self.scalars}

    def column(self, name: str) -> np.ndarray:
        """A step column by name, with a close-match suggestion for unknown names."""
        if name == "step":
            return self.steps
        if name not in self.scalars:
            from gradguard._errors import unknown_name

            raise unknown_name("step column", name, tuple(self.scalars))
        return self.scalars[name]

    @property
    def metrics(self) -> dict[str, ModuleMetric]:
        """Per-module metrics as steps x modules matrices: ``grad_norm`` and each probe metric."""
        out = {}
        if len(self.steps) and self.module_names:
            out["grad_norm"] = ModuleMetric(self.steps, list(self.module_names), self.grad_norms)
        for metric, entries in self.records.items():
            out[metric] = _matrix(entries)
        return out

    @property
    def timesteps(self) -> list[Timesteps]:
        return _timesteps(self.vectors.get("timestep_grad_norm", []))

    # ------------------------------------------------------------------ building
    @classmethod
    def from_store(cls, store) -> RunData:
        """Read everything a ``RunStore`` holds (it stays open); its findings are left to the rules."""
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
        for metric in store.vector_metrics():
            vectors[metric] = store.vectors(metric)
        if not len(steps) and len(grad):  # per-module norms without a steps table (written by hand)
            at, _, grad_only = store.module_metric("grad_norm")
            records["grad_norm"] = [(int(s), {m: float(v) for m, v in zip(names, row) if np.isfinite(v)}) for s, row in zip(at.tolist(), grad_only)]
            names, grad = [], np.zeros((0, 0))
        elif len(grad) != len(steps):  # align per-module norms with the steps table
            at, _, grad_only = store.module_metric("grad_norm")
            lookup = {s: row for s, row in zip(at.tolist(), grad_only)}
            grad = np.array([lookup.get(s, np.full(len(names), np.nan)) for s in steps.tolist()]).reshape(len(steps), len(names))
        return cls(steps, columns, names, grad, records, vectors, store.events(), store.meta, source=str(store.path))


def _matrix(entries: list[tuple[int, dict[str, float]]]) -> ModuleMetric:
    modules: dict[str, int] = {}
    for _, values in entries:
        for m in values:
            modules.setdefault(m, len(modules))
    matrix = np.full((len(entries), len(modules)), np.nan)
    for i, (_, values) in enumerate(entries):
        for m, v in values.items():
            matrix[i, modules[m]] = v
    return ModuleMetric(np.array([s for s, _ in entries], dtype=np.int64), list(modules), matrix)


def _timesteps(rows: list[tuple[int, str, np.ndarray]]) -> list[Timesteps]:
    by_module: dict[str, list[tuple[int, np.ndarray]]] = {}
    for step, module, vector in rows:
        by_module.setdefault(module, []).append((step, vector))
    out = []
    for module, items in by_module.items():
        items.sort(key=lambda item: item[0])
        width = max(len(v) for _, v in items)
        values = np.full((len(items), width), np.nan)
        for i, (_, vector) in enumerate(items):
            values[i, : len(vector)] = vector
        out.append(Timesteps(module, np.array([s for s, _ in items], dtype=np.int64), values))
    return out
