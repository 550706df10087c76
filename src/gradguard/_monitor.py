"""The monitor: the probe schedule, and spike forensics on each flushed chunk.

Guard measures and clips; the monitor runs the probes (``_probes``) on their steps and hands what
they measured to the recorder. It loops over a list of ``Probe`` objects and knows none of them by
name. Their per-step work happens on the device; the values wait for ``flush``, which the
recorder calls with each chunk of steps (every ``log_every`` steps), and go to the host in one
transfer per device.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from gradguard._events import ForensicsEvent, SkipEvent, SpikeEvent
from gradguard._grads import GradBatch
from gradguard._grouping import Grouping
from gradguard._history import Chunk
from gradguard._probes._base import Probe, StepContext
from gradguard._probes._spikes import SpikeDetector
from gradguard._recorder import Recorder


class Monitor:
    """Probes on a schedule: step 1, every probe's own period, and the step after an anomaly."""

    def __init__(self, grouping: Grouping, probes: list[Probe], *, recorder: Recorder, spike_z: float | None, forensics_steps: int):
        self.grouping = grouping
        self.module_names = grouping.labels
        self.probes = list(probes)
        self.periodic = [p for p in self.probes if p.period is not None]
        self.spikes = SpikeDetector(self.module_names, capacity=forensics_steps, z_thresh=spike_z) if spike_z else None
        self.recorder = recorder
        recorder.listeners.append(self.flush)
        for probe in self.probes:  # probes that read flushed chunks or keep run metadata (the input check)
            if hasattr(probe, "bind"):
                probe.bind(recorder)
        self.forward_order: list[str] = []
        # One entry per (step, metric, device): module names and a 1-D tensor of their values.
        self._pending: list[tuple[int, str, tuple[str, ...], Tensor]] = []
        self._pending_vectors: list[tuple[int, str, str, Tensor]] = []
        self._armed_step: int | None = None
        self._armed: list[Probe] = []
        self._arm(1, self.periodic)

    # ------------------------------------------------------------------ schedule
    def scheduled(self, step: int) -> list[Probe]:
        """Periodic probes due at ``step``: all at step 1 (the network at initialisation), each on
        multiples of its period (which, at the defaults, coincide with Guard's flushes)."""
        return [p for p in self.periodic if step == 1 or step % p.period == 0]

    def _arm(self, step: int, probes: list[Probe]) -> None:
        if self._armed_step != step:
            self._armed = []
            self._armed_step = step
        for probe in probes:
            if probe not in self._armed:
                probe.arm()
                self._armed.append(probe)

    def probing(self, step: int, name: str | None = None) -> bool:
        """Whether ``step`` is a probe step (for the probe called ``name``, or for any)."""
        if self._armed_step != step:
            return False
        return any(p.name == name for p in self._armed) if name else bool(self._armed)

    def _context(self, step: int, batch: GradBatch, **fields) -> StepContext:
        return StepContext(step, batch, self.module_names, emit=self.recorder.add_event, **fields)

    # ------------------------------------------------------------------ the step
    def before_optimizer(self, batch: GradBatch, step: int, stepping: bool) -> None:
        if self._armed_step == step and self._armed:
            ctx = self._context(step, batch, stepping=stepping)
            for probe in self._armed:
                probe.before_optimizer(ctx)

    def end_step(self, step: int, batch: GradBatch, index: Tensor | None, present: list[bool], stepped: bool, skipped: bool | None, nonfinite: list[str] = ()) -> None:
        """Tell the probes about a non-finite step, collect this step's probes, arm the next step's."""
        probing = self._armed_step == step
        if not skipped and not probing:  # most steps: nothing to tell or collect
            due = self.scheduled(step + 1)
            if due:
                self._arm(step + 1, due)
            else:
                self._armed_step = None
            return
        ctx = self._context(step, batch, index=index, present=present, stepped=stepped, nonfinite=list(nonfinite))
        again = []
        if skipped:
            self.recorder.add_event(SkipEvent(step, parameters=list(nonfinite)))
            again = [p for p in self.probes if p.on_nonfinite(ctx)]
        if probing:
            for probe in self._armed:
                self._take(step, probe, probe.collect(ctx))
                order = getattr(probe, "forward_order", None)
                if order:
                    self.forward_order = list(order)
                probe.disarm()
            self._armed = []
        due = list(self.periodic) if skipped else self.scheduled(step + 1)
        due += [p for p in again if p not in due]
        if due:
            self._arm(step + 1, due)
        else:
            self._armed_step = None

    def _take(self, step: int, probe: Probe, out: dict) -> None:
        for metric, (names, values) in out.items():
            if probe.kind == "vectors":
                self._pending_vectors.extend((step, name, metric, v) for name, v in zip(names, values))
            else:
                self._pending.append((step, metric, tuple(names), values))

    # ------------------------------------------------------------------ host side
    def flush(self, chunk: Chunk) -> None:
        """Probe values to the host (one transfer per device), to the recorder; then spike forensics."""
        if self._pending:
            grouped: dict[tuple[int, str], dict[str, float]] = {}
            for (step, metric, names, _), values in zip(self._pending, _to_host([v for *_, v in self._pending])):
                grouped.setdefault((step, metric), {}).update(zip(names, values))
            self._pending.clear()
            for (step, metric), entry in grouped.items():
                self.recorder.add_records(step, metric, entry)
        for step, module, metric, vector in self._pending_vectors:
            self.recorder.add_vector(step, module, metric, vector.detach().to(torch.float64).cpu().numpy())
        self._pending_vectors.clear()
        if self.spikes is not None and len(chunk):
            scores = self.spikes.score(chunk.steps, chunk.scalars["norm_before"], chunk.scalars["loss"], chunk.modules)
            self._forensics(chunk, scores)

    def _forensics(self, chunk: Chunk, cols: np.ndarray) -> None:
        spiked = np.flatnonzero(cols[:, 0] > 0)
        if not len(spiked):
            return
        row = int(spiked[0])
        step = int(chunk.steps[row])
        norm = chunk.scalars["norm_before"][row]
        if not math.isfinite(norm):
            trigger, z = "nonfinite", math.inf
        elif cols[row, 1] >= cols[row, 2]:
            trigger, z = "grad_norm", float(cols[row, 1])
        else:
            trigger, z = "loss", float(cols[row, 2])
        report = self.spikes.forensics(step, trigger, z)
        window = (min(report.dump["steps"], default=step), step)
        ratios = [(s, v) for s, v in self.recorder.records.get("update_ratio", []) if window[0] <= s <= window[1]]
        self.recorder.add_event(ForensicsEvent(step, dump={**report.dump, "update_ratio": [[s, v] for s, v in ratios]}))
        self.recorder.add_event(SpikeEvent(
            step, trigger=trigger, z=z, z_threshold=self.spikes.z_thresh, spikes_in_chunk=len(spiked),
            first_module=report.first_module, first_step=report.first_step, first_z=report.first_z,
        ))
        # The step after an anomaly is probed too (with every periodic probe): the next one after this flush.
        self._arm(int(chunk.steps[-1]) + 1, self.periodic)

    def close(self) -> None:
        for probe in self.probes:
            probe.close()
        self._armed = []


def _to_host(vectors: list[Tensor]) -> list[list[float]]:
    """1-D tensors to lists of floats with one device-to-host copy per device, not one per tensor:
    on an accelerator every copy is a synchronisation."""
    by_device: dict[torch.device, list[int]] = {}
    for i, v in enumerate(vectors):
        by_device.setdefault(v.device, []).append(i)
    out: list[list[float]] = [[] for _ in vectors]
    for idx in by_device.values():
        flat = torch.cat([vectors[i] for i in idx]).to(torch.float64).cpu().tolist()
        start = 0
        for i in idx:
            out[i] = flat[start : start + len(vectors[i])]
            start += len(vectors[i])
    return out
