"""The host side of a Keras run: device rows in, history, run store, events and findings out.

The optimizer keeps one row per step on the device (see ``_optimizer``); every ``log_every``
steps the rows since the last read cross to the host in one transfer and land here as numpy.
From then on a Keras run is like any other: the same ``Chunk``, ``History`` and ``RunStore`` as
``gg.Guard``, so ``gradguard report`` and the diagnosis rules read it unchanged.
"""

from __future__ import annotations

import math
import warnings
from concurrent.futures import ThreadPoolExecutor
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
        # The store lives on one writer thread: in a TF graph the rows arrive on a runtime thread
        # (py_function), and an SQLite connection belongs to the thread that opened it.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gradguard-store")
        self._failed = False
        self.store_path = _store_path(store)
        self.store = self._writer.submit(_open, self.store_path, self.meta).result() if self.store_path is not None else None

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
        """Queue a write on the store's thread. A failing store never stops training: it warns
        once (at the next write) and the run continues in memory."""
        if self.store is None:
            return
        if self._failed:
            warnings.warn(f"gradguard.keras: the run store {self.store_path} failed; the run continues in memory only.", GradGuardWarning, stacklevel=4)
            self.store = None
            return
        self._writer.submit(self._guarded, fn)

    def _guarded(self, fn) -> None:
        try:
            fn(self.store)
        except Exception:  # noqa: BLE001 - any store failure
            self._failed = True

    def sync(self) -> None:
        """Wait until every queued write is in the store."""
        if self.store is not None:
            self._writer.submit(lambda: None).result()

    def on_store(self, fn):
        """Run ``fn(store)`` on the store's thread and return its result (None without a store)."""
        if self.store is None:
            return None
        return self._writer.submit(fn, self.store).result()

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
            self.on_store(lambda store: store.close())
            self.store = None
        self._writer.shutdown(wait=True)


def _store_path(store: str | Path | RunStore | None) -> Path | None:
    if store is None:
        return None
    if isinstance(store, RunStore):
        # Reopened on the writer thread: the caller's connection cannot be used from it.
        if str(store.path) == ":memory:":
            raise ValueError("GuardOptimizer needs a run store on disk (a path such as 'run.sqlite'), not ':memory:'.")
        return store.path
    if not isinstance(store, (str, Path)):
        raise TypeError(f"store must be a path (e.g. 'run.sqlite') or a gradguard RunStore, got {type(store).__name__}.")
    return Path(store)


def _open(path: Path, meta: dict[str, Any]) -> RunStore:
    return RunStore(path, meta=meta)


