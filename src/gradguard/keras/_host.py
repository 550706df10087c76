"""The host side of a Keras run: device rows in, history, run store, events and findings out.

The optimizer keeps one row per step on the device (see ``_optimizer``); every ``log_every``
steps the rows since the last read cross to the host in one transfer and land here as numpy.
From then on a Keras run is like any other: the same ``Chunk``, ``History`` and ``RunStore`` as
``gg.Guard``, so ``gradguard report`` and the diagnosis rules read it unchanged.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from gradguard._errors import GradGuardWarning, NonFiniteGradientError
from gradguard._history import SCALARS, Chunk, History
from gradguard._policy import message
from gradguard._rundata import RunData
from gradguard._store import RunStore


class Recorder:
    """Turns the device ring of step rows into chunks, and checks the consecutive-skip limit."""

    def __init__(self, group_names: list[str], store: str | Path | RunStore | None, meta: dict[str, Any], max_history: int | None):
        self.group_names = list(group_names)
        self.history = History(self.group_names, max_history)
        self.meta = dict(meta)
        self.records: dict[str, list[tuple[int, dict[str, float]]]] = {}
        self.events: list[dict[str, Any]] = []
        self.read_until = 0  # last step handed to the history
        self.run_length = 0  # skipped steps in a row at read_until
        self.lost = 0
        self.store = _open(store, self.meta)

    def ingest(self, step: int, ring: np.ndarray, bad_names: list[str], limit: int | None) -> None:
        """Rows for steps (read_until, step]; ``ring[(s - 1) % capacity]`` holds step s."""
        if step <= self.read_until:
            return
        capacity = ring.shape[0]
        first = self.read_until + 1
        if step - first + 1 > capacity:  # more steps than the ring holds went by without a read
            missed = step - capacity - first + 1
            self.lost += missed
            warnings.warn(
                f"gradguard.keras: statistics of {missed} step(s) before step {step - capacity + 1} were overwritten "
                f"before the host read them (the device keeps {capacity}). Under jit_compile=True pass "
                "callbacks=[optimizer.callback()] to fit, or raise buffer_steps.",
                GradGuardWarning,
                stacklevel=3,
            )
            first = step - capacity + 1
        steps = np.arange(first, step + 1, dtype=np.int64)
        table = ring[(steps - 1) % capacity].astype(np.float64)
        k = len(SCALARS)
        chunk = Chunk(steps, {name: table[:, i] for i, name in enumerate(SCALARS)}, self.group_names, table[:, k:])
        self.read_until = step
        self.history.append(chunk)
        skipped = chunk.scalars["skipped"] > 0
        for s in steps[skipped].tolist():
            self._event(s, "skip", {"parameters": bad_names})
        self._write(lambda store: store.write_chunk(chunk))
        if limit is not None:
            self._check(steps, skipped, bad_names, limit)

    def _check(self, steps: np.ndarray, skipped: np.ndarray, names: list[str], limit: int) -> None:
        run = self.run_length
        for s, bad in zip(steps.tolist(), skipped.tolist()):
            run = run + 1 if bad else 0
            if run > limit:
                self.run_length = run
                if limit == 0 and run == 1:
                    raise NonFiniteGradientError(message(s, names, limit, first=True), names)
                raise NonFiniteGradientError(message(s, names, limit, run), names)
        self.run_length = run

    def add_records(self, step: int, metric: str, values: dict[str, float]) -> None:
        """Per-layer probe values (activation statistics) for one step."""
        values = {k: float(v) for k, v in values.items()}
        self.records.setdefault(metric, []).append((step, values))
        self._write(lambda store: store.write_module_stats(step, metric, values))

    def _event(self, step: int, kind: str, payload: dict[str, Any]) -> None:
        self.events.append({"step": step, "kind": kind, **payload})
        self._write(lambda store: store.add_event(step, kind, payload))

    def _write(self, fn) -> None:
        """A failing store never stops training: warn once and keep the run in memory."""
        if self.store is None:
            return
        try:
            fn(self.store)
        except Exception as exc:  # noqa: BLE001 - any store failure
            warnings.warn(f"gradguard.keras: the run store {self.store.path} failed ({exc}); the run continues in memory only.", GradGuardWarning, stacklevel=4)
            self.store = None

    def run_data(self) -> RunData:
        h = self.history
        scalars = {name: h.column(name) for name in SCALARS}
        return RunData(h.step, scalars, list(self.group_names), h.module_norms, self.records, {}, self.events, self.meta)

    def to_store(self, path: str | Path, findings) -> RunStore:
        store = RunStore(path, meta=self.meta)
        for chunk in self.history.chunks():
            store.write_chunk(chunk)
        for metric, entries in self.records.items():
            for step, values in entries:
                store.write_module_stats(step, metric, values)
        for event in self.events:
            store.add_event(event["step"], event["kind"], {k: v for k, v in event.items() if k not in ("step", "kind")})
        store.add_findings(findings)
        return store

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None


def _open(store: str | Path | RunStore | None, meta: dict[str, Any]) -> RunStore | None:
    if store is None:
        return None
    if isinstance(store, RunStore):
        store.set_meta(**meta)
        return store
    if not isinstance(store, (str, Path)):
        raise TypeError(f"store must be a path (e.g. 'run.sqlite') or a gradguard RunStore, got {type(store).__name__}.")
    return RunStore(store, meta=meta)


