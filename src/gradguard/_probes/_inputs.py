"""The input check: on a step whose gradients are non-finite, were the model's inputs already?

A forward pre-hook on the root module keeps a reference to the floating-point tensors each
training forward pass receives (no copy, no device work), counts the forward passes per optimizer
step (gradient accumulation), and notes the batch size and whether autocast is on and in which
dtype: host-side Python only, so a finite step pays one hook call and no synchronisation. Only
when a step's norms are already known to be non-finite does the check read the inputs
(``torch.isfinite(...).all()``, one transfer) and report a ``nonfinite_input`` event: that tells
bad data from a fault in the model, on the very step it happened.

Under ``nonfinite="ignore"`` the host learns of a non-finite step only at the next flush; the
references of the unflushed steps are kept until then (at most ``log_every`` batches stay alive a
little longer), and checked there. A fused optimizer that skips on the device tells the host
nothing: there the check cannot run.

As a probe (``_base.Probe``) it has no period, so plain steps never call it: ``on_nonfinite``
checks, and ``bind`` hands it the recorder, whose flushes it reads and whose ``meta["inputs"]`` it
keeps (batch size, forward passes per step, autocast dtype, parameter dtypes) for the rules. The
hook tells one optimizer step from the next by the recorder's count of steps (flushed plus
pending): a forward pass that sees the count moved starts a new step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from gradguard._events import NonfiniteInputEvent
from gradguard._probes._base import Probe, StepContext


def _floats(value: Any, path: str, out: list[tuple[str, Tensor]]) -> None:
    if isinstance(value, Tensor):
        if value.is_floating_point() or value.is_complex():
            out.append((path, value))
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            _floats(v, f"{path}[{i}]", out)
    elif isinstance(value, dict):
        for k, v in value.items():
            _floats(v, f"{path}[{k!r}]", out)


def _batch_size(args: tuple, kwargs: dict) -> int | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, Tensor) and value.ndim >= 1:
            return int(value.shape[0])
    return None


class InputCheck(Probe):
    """Keeps the current step's inputs by reference; checks them only on non-finite steps."""

    name = "inputs"
    period = None  # never scheduled: on_nonfinite and the flush are all it needs

    def __init__(self, model: nn.Module):
        self.model = model
        self._recorder = None
        self._emit = None
        self._meta: dict[str, Any] = {}
        self._flushed = 0  # steps the recorder has flushed: with its pending ones, the step count
        self._mark: int | None = None  # the step count when the held inputs were taken
        self._current: list[tuple[int, str, Tensor]] = []  # (forward pass, argument path, tensor)
        self._passes = 0
        self._unflushed: dict[int, list[tuple[int, str, Tensor]]] = {}
        self.batch_size: int | None = None
        self.micro_batches: int | None = None  # forward passes per optimizer step, as last seen
        self.autocast_dtype: str | None = None
        self._handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _steps_done(self) -> int | None:
        return None if self._recorder is None else self._flushed + self._recorder.pending

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not module.training or not torch.is_grad_enabled():
            return  # evaluation passes feed no gradient
        done = self._steps_done()
        if done is not None and done != self._mark:  # the first pass of a new optimizer step
            if self._mark is not None and (self._passes or self._current):
                self.end_step(self._mark, None if self._ignore() else False)
            self._mark = done
        found: list[tuple[str, Tensor]] = []
        _floats(args, "input", found)
        _floats(kwargs, "input", found)
        self._current.extend((self._passes, path, t) for path, t in found)
        self._passes += 1
        if self.batch_size is None:
            self.batch_size = _batch_size(args, kwargs)
            device = next((t.device.type for _, t in found), "cpu")
            if torch.is_autocast_enabled(device):
                self.autocast_dtype = str(torch.get_autocast_dtype(device)).replace("torch.", "")

    # ------------------------------------------------------------------ the probe protocol
    def bind(self, recorder) -> None:
        """Read each flushed chunk (non-finite steps under "ignore"), keep ``meta["inputs"]`` current."""
        self._recorder = recorder
        recorder.listeners.append(self._on_flush)

    def _ignore(self) -> bool:
        return self._recorder is not None and self._recorder.meta.get("nonfinite") == "ignore"

    def on_nonfinite(self, ctx: StepContext) -> bool:
        self._emit = ctx.emit
        event = self.end_step(self._mark if self._mark is not None else ctx.step, True)
        if event is not None:
            event["step"] = ctx.step
        self._send(event, ctx.emit)
        return False

    def _on_flush(self, chunk) -> None:
        # Under "ignore", inputs were kept by step count; chunk row i is step count _flushed + i.
        # The held inputs belong to a step in this chunk when the flush came at its end (Guard
        # flushes right after recording a step): close that step first.
        if self._mark is not None and self._mark < self._flushed + len(chunk) and (self._passes or self._current):
            self.end_step(self._mark, None if self._ignore() else False)
        bad = ~np.isfinite(np.asarray(chunk.scalars["norm_before"], dtype=float))
        counts = list(range(self._flushed, self._flushed + len(chunk)))
        events = self.flush(counts, bad.tolist())
        for event in events:
            event["step"] = int(chunk.steps[event["step"] - self._flushed])
            self._send(event, self._emit or self._recorder.add_event)
        self._flushed += len(chunk)
        summary = self.summary()
        if summary != self._meta and self._recorder is not None:
            self._meta = summary
            self._recorder.set_meta(inputs=summary)

    @staticmethod
    def _send(event: dict[str, Any] | None, emit) -> None:
        if event is not None and emit is not None:
            emit(NonfiniteInputEvent(event["step"], what=event["what"], inputs=list(event["inputs"])))

    # ------------------------------------------------------------------ the check itself
    def end_step(self, step: int, nonfinite: bool | None) -> dict[str, Any] | None:
        """Close ``step``: check its inputs if its norms are non-finite (``nonfinite`` True),
        keep them for the flush if the host does not know yet (None), drop them if finite."""
        current, passes = self._current, self._passes
        self._current, self._passes = [], 0
        if passes:
            self.micro_batches = passes
        if nonfinite is None:
            self._unflushed[step] = current
            return None
        return self._check(step, current, passes) if nonfinite else None

    def flush(self, steps: list[int], nonfinite: list[bool]) -> list[dict[str, Any]]:
        """At a flush: check the kept inputs of the steps now known to be non-finite."""
        out = []
        for step, bad in zip(steps, nonfinite):
            kept = self._unflushed.pop(int(step), None)
            if bad and kept is not None:
                event = self._check(step, kept, self.micro_batches or 1)
                if event is not None:
                    out.append(event)
        last = max(steps, default=None)
        self._unflushed = {s: v for s, v in self._unflushed.items() if last is None or s > last}
        return out

    def _check(self, step: int, inputs: list[tuple[int, str, Tensor]], passes: int) -> dict[str, Any] | None:
        if not inputs:
            return None
        with torch.no_grad():
            flags = torch.stack([torch.isfinite(t.detach()).all().to("cpu") for _, _, t in inputs]).tolist()
        bad = [(p, path, t) for (p, path, t), ok in zip(inputs, flags) if not ok]
        if not bad:
            return None
        first_pass, path, tensor = bad[0]
        what = f"{path} (shape {tuple(tensor.shape)}, {str(tensor.dtype).replace('torch.', '')})"
        if passes > 1:
            what += f" of micro-batch {first_pass + 1} of {passes}"
        return {"step": step, "kind": "nonfinite_input", "what": what, "inputs": sorted({p for _, p, _ in bad})}

    def summary(self) -> dict[str, Any]:
        """What the rules read as ``meta["inputs"]``."""
        dtypes = sorted({str(p.dtype).replace("torch.", "") for p in self.model.parameters() if p.is_floating_point()})
        return {"batch_size": self.batch_size, "micro_batches": self.micro_batches, "autocast_dtype": self.autocast_dtype, "param_dtypes": dtypes}

    def close(self) -> None:
        if self._recorder is not None and self._on_flush in self._recorder.listeners:
            self._recorder.listeners.remove(self._on_flush)
        self._handle.remove()
        self._current.clear()
        self._unflushed.clear()
