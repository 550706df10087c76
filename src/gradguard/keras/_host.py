"""The host side of a Keras run: device rows in, gradguard's ``Recorder`` (history, run store,
events, findings) out.

The optimizer keeps one row per step on the device (see ``_optimizer``); every ``log_every``
steps the rows since the last read cross to the host in one transfer and are handed, as numpy
columns, to the core's ``Recorder.add_chunk``: the same path, history, run store and
``RunData`` as ``gg.Guard``'s, so ``gradguard report``, the rules and the report read a Keras run
unchanged.

Threads. In a TensorFlow graph the rows arrive on a runtime thread (through ``tf.py_function``),
and an SQLite connection belongs to the thread that opened it. The recorder therefore lives on
one writer thread of its own: every call into it goes through ``call``, which runs it there and
waits for it (a few milliseconds every ``log_every`` steps).
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from gradguard._errors import GradGuardWarning, NonFiniteGradientError
from gradguard._events import SkipEvent
from gradguard._policy import message
from gradguard._recorder import Recorder
from gradguard._store import RunStore

# The per-step columns each device row holds, in order (names from _rundata.STEP_COLUMNS; the
# loss is not seen by an optimizer and reads as not measured), then one norm per layer.
DEVICE_COLUMNS = ("norm_before", "norm_after", "threshold", "coef", "clipped", "skipped", "lr")


class RunFeed:
    """Turns the device ring of step rows into the Recorder's chunks; checks the consecutive-skip limit."""

    def __init__(self, layer_names: list[str], store: str | Path | RunStore | None, meta: dict[str, Any], max_history: int | None):
        self.layer_names = list(layer_names)
        self.read_until = 0  # last step handed to the recorder
        self.run_length = 0  # skipped steps in a row at read_until
        self.lost = 0  # steps overwritten on the device before the host read them
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gradguard-store")
        path = _store_path(store)
        self.recorder: Recorder = self.call(_make_recorder, self.layer_names, path, meta, max_history)

    def call(self, fn, *args, **kwargs):
        """Run ``fn`` on the recorder's thread and return its result (here, once the store is closed)."""
        if self._writer is None:
            return fn(*args, **kwargs)
        return self._writer.submit(fn, *args, **kwargs).result()

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
        k = len(DEVICE_COLUMNS)
        columns = {name: table[:, i] for i, name in enumerate(DEVICE_COLUMNS)}
        self.read_until = step
        self.call(self.recorder.add_chunk, steps, columns, table[:, k:])
        skipped = columns["skipped"] > 0
        for s in steps[skipped].tolist():
            self.call(self.recorder.add_event, SkipEvent(step=s, parameters=list(bad_names)))
        if limit is not None:
            self._check(steps, skipped, bad_names, limit)

    def _check(self, steps: np.ndarray, skipped: np.ndarray, names: list[str], limit: int) -> None:
        run = self.run_length
        for s, bad in zip(steps.tolist(), skipped.tolist()):
            run = run + 1 if bad else 0
            if run > limit:
                self.run_length = run
                if limit == 0:
                    raise NonFiniteGradientError(message(s, names, limit, first=True), names)
                raise NonFiniteGradientError(message(s, names, limit, run), names)
        self.run_length = run

    def add_records(self, step: int, metric: str, values: dict[str, float]) -> None:
        """Per-layer probe values (activation statistics) at one step."""
        self.call(self.recorder.add_records, step, metric, {k: float(v) for k, v in values.items()})

    def set_meta(self, **values: Any) -> None:
        self.call(self.recorder.set_meta, **values)

    def run_data(self):
        return self.call(self.recorder.run_data)

    def replace_findings(self, findings) -> None:
        store = self.recorder.store
        if store is not None:
            self.call(self.recorder._write, store.replace_findings, findings)

    def close(self) -> None:
        """Close the store; what was recorded stays readable in memory."""
        if self._writer is not None:
            self.call(self.recorder.close)
            self._writer.shutdown(wait=True)
            self._writer = None


def _make_recorder(layer_names, path: Path | None, meta: dict[str, Any], max_history: int | None) -> Recorder:
    store = RunStore(path) if path is not None else None
    return Recorder(layer_names, store=store, max_history=max_history, meta=meta)


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
