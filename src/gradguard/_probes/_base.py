"""The probe protocol: what every instrument the monitor schedules looks like.

A probe measures something beyond the gradient norms on its scheduled steps: step 1, every
``period`` steps, and the step after an anomaly (``period=None``: only when it asks to be armed,
as the non-finite locator does after a non-finite step). The monitor loops over its probes; it
knows none of them by name.

Life cycle of one probe step (all on the device; the values reach the host at the next flush):

1. ``arm()``: before the step's forward pass (register hooks; cheap when already armed);
2. ``before_optimizer(ctx)``: after clipping, before ``optimizer.step()`` (e.g. copy parameters);
3. ``collect(ctx)``: after the step, ``{metric: (module names, 1-D tensor aligned with them)}``
   (``kind = "vectors"``: ``{metric: (module names, [one 1-D tensor per module])}``, such as a
   gradient norm over time steps);
4. ``disarm()``: right after (remove hooks); ``close()`` when the Guard closes.

``on_nonfinite(ctx)`` runs on every probe (armed or not) on a step whose gradients held NaN/Inf,
when that is known on the host (the "skip" and "raise" policies with a non-fused optimizer; a
fused optimizer skips on the device, unseen). It may look at anything it keeps (the last batch's
inputs, say) and emit events through ``ctx.emit``; returning True arms it for the next step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from gradguard._events import Event
from gradguard._grads import GradBatch

Collected = dict[str, tuple[tuple[str, ...], Any]]


@dataclass
class StepContext:
    """What a probe may read at one step.

    ``index``/``present``: each gradient's group position and which groups had a gradient, as in
    ``Grouping.index``; ``stepped``: whether ``optimizer.step()`` ran; ``nonfinite``: the parameter
    names holding NaN/Inf on a non-finite step (else empty); ``emit`` records an ``Event``.
    """

    step: int
    batch: GradBatch
    module_names: Sequence[str]
    index: Tensor | None = None
    present: Sequence[bool] = ()
    stepping: bool = True
    stepped: bool = False
    nonfinite: Sequence[str] = ()
    emit: Callable[[Event], None] = field(default=lambda event: None)


class Probe:
    """Defaults for every method of the protocol; subclasses override what they use."""

    name: str = "probe"
    period: int | None = 10
    kind: str = "modules"  # or "vectors"

    def arm(self) -> None:
        pass

    def disarm(self) -> None:
        pass

    def before_optimizer(self, ctx: StepContext) -> None:
        pass

    def collect(self, ctx: StepContext) -> Collected:
        return {}

    def on_nonfinite(self, ctx: StepContext) -> bool:
        return False

    def close(self) -> None:
        self.disarm()


def stack_values(values: dict[str, Tensor]) -> tuple[tuple[str, ...], Tensor]:
    """{module: 0-dim tensor} as (names, one 1-D tensor): one stack per metric on a probe step,
    instead of hundreds of scalars to move at the flush. Values on other devices are copied to
    the first one's device (a device-to-device copy, no host synchronisation)."""
    names = tuple(values)
    first = next(iter(values.values()))
    return names, torch.stack([v.detach().reshape(()).to(first.device) for v in values.values()])
