"""The recorder: where a run's measurements go once they are measured.

It holds the pending per-step rows (device tensors, copied to the host in one transfer per
flush), the ``History``, the run store, the loggers, the probes' records and vectors, the events
and the run's metadata, and builds the run's ``RunData`` from them.

Two ways in:

* Guard (PyTorch): ``pend(step, device_row, host_row)`` each step, ``flush()`` every ``log_every``.
* Any other framework's adapter (e.g. a Keras optimizer): ``add_chunk(steps, columns,
  module_norms)`` with numpy arrays already on the host; columns are named as in
  ``_rundata.STEP_COLUMNS`` and any it leaves out read as not measured::

      >>> import numpy as np
      >>> rec = Recorder(["dense", "out"])
      >>> chunk = rec.add_chunk([1, 2], {"norm_before": [3.0, 4.0], "norm_after": [1.0, 1.0], "clipped": [True, True]}, np.ones((2, 2)))
      >>> data = rec.run_data()
      >>> data.scalars["norm_before"].tolist(), bool(np.isnan(data.scalars["lr"]).all())
      ([3.0, 4.0], True)

A failing store write warns once and is dropped: the store never stops training.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradguard._errors import GradGuardWarning
from gradguard._events import Event
from gradguard._history import Chunk, History
from gradguard._rundata import Records, RunData, Vectors


class Recorder:
    """Measurements of one run, in memory (``history``, ``records``, ``vectors``, ``events``) and
    in the run store when there is one. ``listeners`` see each chunk after the history and the
    store, before the loggers (the monitor scores spikes there and adds its records)."""

    def __init__(
        self,
        module_names: Sequence[str],
        *,
        store: Any = None,
        loggers: Sequence[Callable[[Chunk], None]] = (),
        max_history: int | None = 100_000,
        meta: Mapping[str, Any] | None = None,
    ):
        self.module_names = list(module_names)
        self.history = History(self.module_names, max_history)
        self.store = store
        self.loggers = list(loggers)
        self.listeners: list[Callable[[Chunk], None]] = []
        self.meta: dict[str, Any] = dict(meta or {})
        self.records: Records = {}
        self.vectors: Vectors = {}
        self.events: list[Event] = []
        self._pending: list[tuple[int, Any, tuple[float, ...]]] = []
        self._device_names: tuple[str, ...] = ()
        self._host_names: tuple[str, ...] = ()
        self._store_failed = False
        if store is not None and self.meta:
            self._write(store.set_meta, **self.meta)

    # ------------------------------------------------------------------ device path (Guard)
    def pend(self, step: int, device: Mapping[str, Any], host: Mapping[str, float], module_norms: Any) -> int:
        """Keep one step's row on the device until the next flush: ``device`` maps column names to
        0-dim tensors (stacked in one call, with ``module_norms`` after them), ``host`` to Python
        floats. Returns the number of pending steps."""
        if not self._pending:
            self._device_names, self._host_names = tuple(device), tuple(host)
        row = torch.cat([torch.stack(list(device.values())), module_norms])
        self._pending.append((step, row, tuple(host.values())))
        return len(self._pending)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> Chunk | None:
        """Copy the pending rows to the host (one transfer) and record them as one chunk."""
        if not self._pending:
            return None
        steps = np.array([s for s, _, _ in self._pending], dtype=np.int64)
        table = torch.stack([r for _, r, _ in self._pending]).cpu().numpy()
        host = np.array([h for _, _, h in self._pending], dtype=np.float64).reshape(len(steps), len(self._host_names))
        self._pending.clear()
        k = len(self._device_names)
        columns = {name: table[:, i] for i, name in enumerate(self._device_names)}
        columns.update({name: host[:, i] for i, name in enumerate(self._host_names)})
        chunk = Chunk(steps, columns, self.module_names, table[:, k : k + len(self.module_names)])
        self.add(chunk)
        return chunk

    # ------------------------------------------------------------------ host path (any framework)
    def add_chunk(self, steps: Sequence[int], columns: Mapping[str, Any], module_norms: Any = None) -> Chunk:
        """Record consecutive steps given as numpy columns (see ``_rundata.STEP_COLUMNS``);
        ``module_norms`` is steps x ``module_names`` (None: not measured)."""
        steps = np.asarray(steps, dtype=np.int64)
        if module_norms is None:
            module_norms = np.full((len(steps), len(self.module_names)), np.nan)
        module_norms = np.asarray(module_norms, dtype=np.float64)
        if module_norms.shape != (len(steps), len(self.module_names)):
            raise ValueError(f"module_norms has shape {module_norms.shape}; expected ({len(steps)}, {len(self.module_names)}): steps x module_names.")
        chunk = Chunk(steps, dict(columns), self.module_names, module_norms)
        self.add(chunk)
        return chunk

    def add(self, chunk: Chunk) -> None:
        self.history.append(chunk)
        if self.store is not None:
            self._write(self.store.write_chunk, chunk)
        for listen in self.listeners:
            listen(chunk)
        for log in self.loggers:
            log(chunk)

    def add_records(self, step: int, metric: str, values: Mapping[str, float]) -> None:
        """One probe metric at one step: {module: value}."""
        entry = dict(values)
        self.records.setdefault(metric, []).append((step, entry))
        if self.store is not None:
            self._write(self.store.write_module_stats, step, metric, entry)

    def add_vector(self, step: int, module: str, metric: str, values: Any) -> None:
        array = np.asarray(values, dtype=np.float64)
        self.vectors.setdefault(metric, []).append((step, module, array))
        if self.store is not None:
            self._write(self.store.write_vector, step, module, metric, array)

    def add_event(self, event: Event) -> None:
        self.events.append(event)
        if self.store is not None:
            self._write(self.store.add_event, event.step, event.kind, event.payload())

    def set_meta(self, **values: Any) -> None:
        self.meta.update(values)
        if self.store is not None:
            self._write(self.store.set_meta, **values)

    # ------------------------------------------------------------------ reading
    def run_data(self, **meta: Any) -> RunData:
        """Everything recorded so far (what is still pending on the device is not: flush first)."""
        h = self.history
        return RunData(
            h.step, {name: h.column(name) for name in h.columns}, list(self.module_names), h.module_norms,
            {k: list(v) for k, v in self.records.items()}, {k: list(v) for k, v in self.vectors.items()},
            list(self.events), {**self.meta, **meta}, source=str(getattr(self.store, "path", "")),
        )

    def to_store(self, store: Any) -> Any:
        """Write everything held in memory into ``store`` (a ``RunStore``); returns it."""
        store.set_meta(**self.meta)
        for chunk in self.history.chunks():
            store.write_chunk(chunk)
        for metric, entries in self.records.items():
            for step, values in entries:
                store.write_module_stats(step, metric, values)
        for metric, entries in self.vectors.items():
            for step, module, values in entries:
                store.write_vector(step, module, metric, values)
        for event in self.events:
            store.add_event(event.step, event.kind, event.payload())
        return store

    def _write(self, fn: Callable, *args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # a full disk or a locked file must not stop training
            if not self._store_failed:
                warnings.warn(f"the run store could not be written ({type(exc).__name__}: {exc}); training goes on, and what "
                              "is measured stays in memory (guard.history, guard.report()).", GradGuardWarning, stacklevel=3)
                self._store_failed = True

    def close(self) -> None:
        if self.store is not None:
            self._write(self.store.close)
            self.store = None


def open_store(store: Any) -> Any:
    """The run store Guard writes: rank 0 opens it (a path or a RunStore); other ranks none."""
    import gradguard._distributed as _distributed
    from gradguard._store import RunStore

    if store is None or not _distributed.is_main_process():
        return None
    if not isinstance(store, RunStore):
        if not isinstance(store, (str, Path)):
            raise TypeError(f"store must be a path or a RunStore, got {type(store).__name__}.")
        store = RunStore(store)
    return store
