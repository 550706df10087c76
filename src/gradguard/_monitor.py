"""The monitor: probe schedule, spike forensics, non-finite localisation and the run store.

Guard measures and clips; the monitor decides what else to record and where it goes. Its
per-step work happens on the device; everything that needs the host waits for ``flush``, which
Guard calls every ``log_every`` steps.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from gradguard._grads import GradBatch
from gradguard._grouping import Grouping
from gradguard._history import Chunk
from gradguard._locate import NonfiniteLocator
from gradguard._probes._activations import ActivationProbe
from gradguard._probes._deltas import DeltaProbe
from gradguard._probes._params import ParamProbe
from gradguard._events import ForensicsEvent, NonfiniteInputEvent, NonfiniteLocationEvent, SkipEvent, SpikeEvent
from gradguard._probes._inputs import InputCheck
from gradguard._recorder import Recorder
from gradguard._spikes import SpikeDetector
from gradguard.rnn import TimestepProbe
from gradguard.rnn._cells import is_recurrent

class Monitor:
    """Probes on a schedule: step 1, every probe's own period, and the step after an anomaly."""

    def __init__(
        self,
        model: nn.Module,
        grouping: Grouping,
        *,
        probes: tuple[str, ...],
        periods: dict[str, int],
        recorder: Recorder,
        spike_z: float | None,
        forensics_steps: int,
        locate_after_skip: bool,
    ):
        self.grouping = grouping
        self.module_names = module_names = grouping.labels
        self.periods = {name: periods[name] for name in probes}
        self.activations = ActivationProbe(model) if "activations" in probes else None
        self.deltas = DeltaProbe(model) if "deltas" in probes else None
        self.params = ParamProbe() if "norms" in probes else None
        self.timesteps = _timestep_probes(model) if "timesteps" in probes else {}
        self.spikes = SpikeDetector(module_names, capacity=forensics_steps, z_thresh=spike_z) if spike_z else None
        self.locator = NonfiniteLocator(model) if locate_after_skip else None
        # Always on: a reference per forward pass on finite steps, a read only on non-finite ones.
        self.inputs: InputCheck | None = InputCheck(model)
        self._inputs_meta: dict[str, Any] = {}
        self.recorder = recorder
        recorder.listeners.append(self.flush)
        self.forward_order: list[str] = []
        # One entry per (step, metric, device): module names and a 1-D tensor of their values.
        self._pending: list[tuple[int, str, tuple[str, ...], Tensor]] = []
        self._pending_vectors: list[tuple[int, str, str, Tensor]] = []
        self._armed_step: int | None = None
        self._armed: set[str] = set()
        self._arm(1, set(self.periods))

    # ------------------------------------------------------------------ schedule and hooks
    def scheduled(self, step: int) -> set[str]:
        """Probes due at ``step``: all at step 1 (the network at initialisation), each on multiples
        of its period (which, at the defaults, coincide with Guard's flushes every 10 steps)."""
        return {name for name, period in self.periods.items() if step == 1 or step % period == 0}

    def _hooked(self, names: set[str]) -> list:
        probes = []
        if "activations" in names and self.activations is not None:
            probes.append(self.activations)
        if "deltas" in names and self.deltas is not None:
            probes.append(self.deltas)
        if "timesteps" in names:
            probes.extend(self.timesteps.values())
        return probes

    def _arm(self, step: int, names: set[str]) -> None:
        for probe in self._hooked(names - self._armed if self._armed_step == step else names):
            probe.arm()
        self._armed = (self._armed | names) if self._armed_step == step else set(names)
        self._armed_step = step

    def _disarm(self) -> None:
        for probe in self._hooked(self._armed):
            probe.disarm()
        self._armed = set()

    def probing(self, step: int, name: str | None = None) -> bool:
        """Whether ``step`` is a probe step (for ``name``, or for any probe)."""
        return self._armed_step == step and (name in self._armed if name else bool(self._armed))

    def before_optimizer(self, batch: GradBatch, step: int, stepping: bool) -> None:
        if self.params is not None and stepping and self.probing(step, "norms"):
            self.params.before_step(batch)

    def end_step(self, step: int, batch: GradBatch, index: Tensor, present: list[bool], stepped: bool, skipped: bool | None) -> None:
        """Collect this step's probes, note a skip, and arm the next probe step's hooks."""
        if self.probing(step):
            out: dict[str, dict[str, Tensor] | tuple[tuple[str, ...], Tensor]] = {}
            if self.probing(step, "activations"):
                out.update(self.activations.collect())
            if self.probing(step, "deltas"):
                out.update(self.deltas.collect())
                self.forward_order = list(self.deltas.forward_order) or self.forward_order
            if self.probing(step, "norms"):
                if stepped:
                    out.update(self.params.collect(batch, index, self.module_names, present))
                else:
                    self.params.discard()
            for metric, values in out.items():
                self._pending.extend((step, metric, names, vector) for names, vector in _as_vectors(values))
            if self.probing(step, "timesteps"):
                for module, probe in self.timesteps.items():
                    if probe.ready:  # the module ran with a graph this step and its output got a gradient
                        with torch.enable_grad():  # the replay differentiates; Guard's step runs under no_grad
                            self._pending_vectors.append((step, module, "timestep_grad_norm", probe.collect()))
            self._disarm()
        if self.locator is not None and self.locator.armed:
            self._record_location(step)
        if self.inputs is not None:
            # "ignore" steps through a NaN and says skipped=False: whether it was finite is known at the flush.
            known = None if self.recorder.meta.get("nonfinite") == "ignore" else skipped
            self._note_input(self.inputs.end_step(step, known))
        if skipped and self.locator is not None:
            self.locator.arm()  # the next step's forward and backward will say where it starts
        due = set(self.periods) if skipped else self.scheduled(step + 1)
        if due:
            self._arm(step + 1, due)
        else:
            self._armed_step = None

    def note_skip(self, step: int, parameters: list[str]) -> None:
        self.recorder.add_event(SkipEvent(step, parameters=list(parameters)))

    def _note_input(self, event: dict[str, Any] | None) -> None:
        if event is not None:
            self.recorder.add_event(NonfiniteInputEvent(event["step"], what=event["what"], inputs=list(event["inputs"])))

    def _record_location(self, step: int) -> None:
        finding = self.locator.result()
        if finding is None:
            return
        self.recorder.add_event(NonfiniteLocationEvent(step, where=list(finding.where), message=finding.message, remedy=finding.remedy, extra=dict(finding.evidence)))

    # ------------------------------------------------------------------ host side
    def flush(self, chunk: Chunk) -> None:
        """Records to the host (one transfer), then the store, then spike forensics."""
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
        if self.inputs is not None:
            bad = ~np.isfinite(chunk.scalars["norm_before"])
            for event in self.inputs.flush(chunk.steps.tolist(), bad.tolist()):
                self._note_input(event)
            summary = self.inputs.summary()
            if summary != self._inputs_meta:  # batch size, micro-batches, autocast, dtypes: for the rules
                self._inputs_meta = summary
                self.recorder.set_meta(inputs=summary)
        if self.spikes is not None:
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
        # The step after an anomaly is probed too (with every probe); it is the next one after this flush.
        self._arm(int(chunk.steps[-1]) + 1, set(self.periods))

    def close(self) -> None:
        self._disarm()
        if self.locator is not None:
            self.locator.disarm()
        if self.inputs is not None:
            self.inputs.close()
        for probe in self.timesteps.values():
            probe.close()


def _timestep_probes(model: nn.Module) -> dict[str, TimestepProbe]:
    """One per-time-step probe per recurrent module (SimpleRNN, nn.RNN, nn.LSTM, nn.GRU)."""
    return {name: TimestepProbe(module) for name, module in model.named_modules() if is_recurrent(module)}


def _as_vectors(values: dict[str, Tensor] | tuple[tuple[str, ...], Tensor]) -> list[tuple[tuple[str, ...], Tensor]]:
    """A probe's {module: 0-dim tensor} as (names, 1-D tensor) per device: one stack per metric
    on a probe step, instead of hundreds of scalars to move at the flush. Probes that already
    hold a vector (the parameter probe) hand over (names, vector)."""
    if isinstance(values, tuple):
        return [values]
    by_device: dict[torch.device, list[tuple[str, Tensor]]] = {}
    for name, value in values.items():
        by_device.setdefault(value.device, []).append((name, value.detach().reshape(())))
    return [(tuple(n for n, _ in items), torch.stack([v for _, v in items])) for items in by_device.values()]


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
