"""The non-finite policy: skip, raise or ignore a step whose gradients hold NaN or Inf.

Skipping means no update at all: parameters, optimizer state (moments, step counts) and clipper
statistics stay bitwise as they were. Two ways to get there:

* on the host: read the one non-finite flag, and do not call ``optimizer.step()``;
* on the device: fused optimizers (``torch.optim.Adam/AdamW/SGD(..., fused=True)``) take a
  ``found_inf`` tensor and skip inside the kernel, the mechanism ``GradScaler`` uses, so the step
  never waits for the host. The consecutive-skip limit is then checked when statistics reach the
  host, at the latest every ``min(log_every, max_consecutive_skips)`` steps.

With a ``GradScaler`` Guard's verdict is folded into the scaler's ``found_inf``, so the scaler
skips and lowers its scale on the same steps. A skip while the scale is still above 1 does not
count toward ``max_consecutive_skips``: the scaler is calibrating (a scale started at 2**32 needs
about 16 overflowing steps to fall to a usable 2**16), and a healthy run must not be stopped for
it. Once the scale is at 1 or below, an overflow is no longer a scale that is too high, and skips
count as without a scaler; so a real fault still stops the run, ``log2(scale)`` steps later.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gradguard._errors import NonFiniteGradientError
from gradguard._grads import GradBatch
from gradguard._norms import GradNorms

POLICIES = ("skip", "raise", "ignore")


class NonfinitePolicy:
    def __init__(self, mode: str, max_consecutive_skips: int, scaler, check_every: int):
        self.mode = mode
        self.max_consecutive_skips = max_consecutive_skips
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None
        self.check_every = max(1, min(check_every, max_consecutive_skips or 1))
        self.consecutive = 0  # host-decided path
        self.skips = 0
        self.last_names: list[str] = []
        self._device: dict[str, Tensor] | None = None  # device-decided path
        self._device_names: tuple[str, ...] = ()

    @property
    def total_skips(self) -> int:
        return self.skips + (int(self._device["total"]) if self._device is not None else 0)

    def raise_if_nonfinite(self, step: int, norms: GradNorms) -> None:
        """Mode "raise": raise before anything (clipping included) touches the gradients, so the
        error leaves them as they were, as torch's ``clip_grad_norm_(error_if_nonfinite=True)``."""
        if self.mode != "raise" or bool(norms.finite):  # the one host read of the step, as for "skip"
            return
        self.last_names = names = norms.nonfinite
        raise NonFiniteGradientError(message(step, names, self.max_consecutive_skips, first=True), names)

    def apply(self, step: int, optimizer, batch: GradBatch, norms: GradNorms) -> tuple[Tensor, bool | None]:
        """Carry out the policy and the optimizer step (``optimizer`` None: the caller steps).

        Returns (skipped as a device bool, skipped as a host bool or None when decided on the device).
        """
        bad = ~norms.finite
        if self.mode == "raise":  # ``raise_if_nonfinite`` already ran: the gradients are finite
            if optimizer is not None:
                self._optimizer_step(optimizer, None)
            return torch.zeros_like(bad), False
        if self.mode == "ignore":
            if optimizer is not None:
                self._optimizer_step(optimizer, bad if self.scaler is not None else None)
            return torch.zeros_like(bad), False
        if self.mode == "skip" and optimizer is not None and self._decides_on_device(optimizer, batch):
            self._optimizer_step(optimizer, bad)
            self._count_on_device(step, bad, norms)
            return bad, None
        if not bool(bad):  # the one host read of the step (free on the CPU)
            self.consecutive = 0
            if optimizer is not None:
                self._optimizer_step(optimizer, None)
            return bad, False
        names = norms.nonfinite
        self.last_names = names
        self.skips += 1
        if self.scaler is None or self.scaler.get_scale() <= 1.0:  # the scale before this step backs it off
            self.consecutive += 1
        if self.consecutive > self.max_consecutive_skips:
            raise NonFiniteGradientError(message(step, names, self.max_consecutive_skips, self.consecutive), names)
        if optimizer is None:
            # The caller steps: without gradients its optimizer leaves every parameter and its state alone.
            for param in batch.params:
                param.grad = None
            return bad, True
        for _, _, _, grads in batch.group_grads():
            torch._foreach_zero_(grads)
        if self.scaler is not None:
            self._mark_scaler_inf(optimizer, bad)
            self.scaler.update()  # lowers the scale, as after any overflow
        return bad, True

    @staticmethod
    def _decides_on_device(optimizer, batch: GradBatch) -> bool:
        return batch.device.type != "cpu" and bool(getattr(optimizer, "_step_supports_amp_scaling", False))

    def _optimizer_step(self, optimizer, bad: Tensor | None) -> None:
        if self.scaler is not None:
            if bad is not None:
                self._mark_scaler_inf(optimizer, bad)
            self.scaler.step(optimizer)
            self.scaler.update()
        elif bad is not None:
            # Fused optimizers skip on the device when found_inf is set (GradScaler's mechanism).
            optimizer.grad_scale = None
            optimizer.found_inf = bad.to(torch.float32)
            try:
                optimizer.step()
            finally:
                del optimizer.grad_scale, optimizer.found_inf
        else:
            optimizer.step()

    def _mark_scaler_inf(self, optimizer, bad: Tensor) -> None:
        """Fold Guard's verdict into the scaler's, so the scaler skips and backs off on it too."""
        per_device = self.scaler._per_optimizer_states[id(optimizer)]["found_inf_per_device"]
        for found in per_device.values():
            found.copy_(torch.maximum(found, bad.to(device=found.device, dtype=found.dtype)))

    def _count_on_device(self, step: int, bad: Tensor, norms: GradNorms) -> None:
        c = self._device
        if c is None:
            zero = torch.zeros((), dtype=torch.long, device=bad.device)
            c = self._device = {"consecutive": zero.clone(), "worst": zero.clone(), "total": zero.clone()}
            c["bad_mask"] = torch.zeros(len(norms.names), dtype=torch.bool, device=bad.device)
        counts = bad
        scale = self.scaler._scale if self.scaler is not None else None
        if scale is not None:  # stepped already: a skip has halved the scale, so "was <= 1" reads "<= backoff"
            counts = bad & (scale.reshape(()) <= self.scaler.get_backoff_factor())
        c["consecutive"] = torch.where(counts, c["consecutive"] + 1, torch.where(bad, c["consecutive"], torch.zeros_like(c["consecutive"])))
        c["worst"] = torch.maximum(c["worst"], c["consecutive"])
        c["total"] = c["total"] + bad.long()
        if c["bad_mask"].shape[0] == len(norms.names):
            c["bad_mask"] = torch.where(bad, ~torch.isfinite(norms.vector), c["bad_mask"])
        self._device_names = norms.names
        if step % self.check_every == 0:
            self.check_device_limit(step)

    def check_device_limit(self, step: int) -> None:
        c = self._device
        if c is None:
            return
        worst = int(c["worst"])
        if worst > self.max_consecutive_skips:
            names = [n for n, b in zip(self._device_names, c["bad_mask"].tolist()) if b]
            raise NonFiniteGradientError(message(step, names, self.max_consecutive_skips, worst), names)

    def reset_device_counters(self) -> None:
        self._device = None


def message(step: int, names: list[str], limit: int, consecutive: int = 0, first: bool = False) -> str:
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    if first:
        head = f"step {step}: non-finite gradients (NaN or Inf) in {len(names)} parameter(s): {shown}."
    else:
        head = f"step {step}: {consecutive} optimizer steps in a row had non-finite gradients (max_consecutive_skips={limit}). Non-finite: {shown}."
    return (
        head + " Likely causes: a learning rate too high (gradients exploded), log/sqrt/division of a "
        "non-positive value in the forward pass (gg.locate_nonfinite(model, closure) names the first "
        "module), or fp16 overflow (use bf16 or a GradScaler)."
    )
