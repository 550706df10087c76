"""What Guard measured, per optimizer step, in columns.

Guard keeps each step's statistics on the device and hands them over in chunks, every
``log_every`` steps, with one device-to-host copy per chunk. ``History`` stores the chunks as
numpy arrays and keeps at most ``max_steps`` recent steps in memory (the run store keeps all).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gradguard._rundata import BOOL_COLUMNS, COLUMN_NAMES, normalize_columns

# The per-step columns, declared once in ``_rundata.STEP_COLUMNS``.
SCALARS = COLUMN_NAMES


@dataclass
class Chunk:
    """Consecutive steps: ``scalars[name]`` is 1-D over steps (every declared column; see
    ``_rundata.STEP_COLUMNS``; missing ones read as not measured); ``modules`` is steps x modules."""

    steps: np.ndarray
    scalars: dict[str, np.ndarray]
    module_names: list[str]
    modules: np.ndarray

    def __post_init__(self) -> None:
        self.steps = np.asarray(self.steps, dtype=np.int64)
        self.scalars = normalize_columns(self.scalars, len(self.steps))
        self.modules = np.asarray(self.modules, dtype=np.float64).reshape(len(self.steps), len(self.module_names))

    def __len__(self) -> int:
        return len(self.steps)

    def records(self) -> list[dict]:
        """One flat dict per step: scalars and 'grad_norm/<module>' entries (for loggers)."""
        out = []
        for row, step in enumerate(self.steps.tolist()):
            rec = {"step": step}
            for name, col in self.scalars.items():
                rec[name] = col[row].item()
            for j, module in enumerate(self.module_names):
                rec[f"grad_norm/{module}"] = self.modules[row, j].item()
            out.append(rec)
        return out


class History:
    """Columns over steps: ``history.norm_before``, ``history.clipped``, ``history.module_norms``...

    ``module_norms`` is a (steps x modules) array aligned with ``module_names``; NaN marks a
    module with no gradient at that step. ``loss`` is NaN where ``guard.step`` got no loss.
    """

    def __init__(self, module_names: Sequence[str], max_steps: int | None = 100_000):
        self.module_names = list(module_names)
        self.max_steps = max_steps
        self._chunks: deque[Chunk] = deque()
        self._steps = 0  # steps held: kept as a count so appending costs the same at any length
        self._cache: dict[str, np.ndarray] = {}

    def append(self, chunk: Chunk) -> None:
        self._chunks.append(chunk)
        self._steps += len(chunk)
        self._cache.clear()
        if self.max_steps is not None:
            while self._chunks and self._steps - len(self._chunks[0]) >= self.max_steps:
                self._steps -= len(self._chunks.popleft())

    def __len__(self) -> int:
        return self._steps

    @property
    def columns(self) -> tuple[str, ...]:
        """The step columns (``_rundata.STEP_COLUMNS``), each readable with ``column(name)``."""
        return SCALARS

    def column(self, key: str) -> np.ndarray:
        """'step', a scalar column (see ``SCALARS``), or 'modules' (steps x modules)."""
        if key not in self._cache:
            if key == "step":
                parts = [c.steps for c in self._chunks]
            elif key == "modules":
                parts = [c.modules for c in self._chunks]
            elif key in SCALARS:
                parts = [c.scalars[key] for c in self._chunks]
            else:
                raise KeyError(f"no column {key!r}; columns: 'step', 'modules', {', '.join(map(repr, SCALARS))}.")
            if parts:
                self._cache[key] = np.concatenate(parts)
            else:
                empty = np.zeros(0, dtype=bool) if key in BOOL_COLUMNS else np.zeros(0)
                self._cache[key] = np.zeros((0, len(self.module_names))) if key == "modules" else empty
        return self._cache[key]

    @property
    def step(self) -> np.ndarray:
        return self.column("step")

    @property
    def norm_before(self) -> np.ndarray:
        return self.column("norm_before")

    @property
    def norm_after(self) -> np.ndarray:
        return self.column("norm_after")

    @property
    def threshold(self) -> np.ndarray:
        return self.column("threshold")

    @property
    def coef(self) -> np.ndarray:
        return self.column("coef")

    @property
    def clipped(self) -> np.ndarray:
        return self.column("clipped")

    @property
    def skipped(self) -> np.ndarray:
        return self.column("skipped")

    @property
    def lr(self) -> np.ndarray:
        return self.column("lr")

    @property
    def loss(self) -> np.ndarray:
        return self.column("loss")

    @property
    def module_norms(self) -> np.ndarray:
        return self.column("modules")

    def chunks(self) -> list[Chunk]:
        return list(self._chunks)

    def to_dict(self) -> dict:
        """Plain lists, JSON-ready."""
        out = {"step": self.step.tolist(), "module_names": list(self.module_names)}
        for name in SCALARS:
            out[name] = self.column(name).tolist()
        out["module_norms"] = self.module_norms.tolist()
        return out

    def __repr__(self) -> str:
        return f"History(steps={len(self)}, modules={len(self.module_names)})"
