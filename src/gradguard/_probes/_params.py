"""Parameter norms and the update-to-weight ratio ||delta theta|| / ||theta|| per module.

The ratio says how fast each layer moves. A common rule of thumb puts healthy training near 1e-3
per step; far above means the learning rate is too high for that layer, far below that it barely
learns (a symptom vanishing gradients share with a too-small learning rate).

Measuring it needs the parameters before and after ``optimizer.step()``: on a scheduled step the
probe copies the parameters that have gradients (transiently, one copy), and subtracts after.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gradguard._grads import GradBatch, index_tensor
from gradguard._grouping import Grouping
from gradguard._norms import batch_norms
from gradguard._probes._base import Probe, StepContext


def _locals(batch: GradBatch) -> list[Tensor]:
    """The parameters as the fused kernels take them: DTensor shards unwrapped to local tensors."""
    if not batch.sharded:
        return list(batch.params)
    return [p.to_local() if hasattr(p, "to_local") else p for p in batch.params]


class ParamProbe(Probe):
    """Per-module parameter norms and update ratios, on scheduled steps (Guard's step runs under
    ``torch.no_grad``, so the copies and differences build no graph). Grouped by the Guard's
    ``Grouping``, like the gradient norms."""

    name = "norms"

    def __init__(self, grouping: Grouping):
        self.grouping = grouping
        self._before: list[Tensor] | None = None

    def before_optimizer(self, ctx: StepContext) -> None:
        if ctx.stepping:
            self.before_step(ctx.batch)

    def collect(self, ctx: StepContext) -> dict[str, tuple[tuple[str, ...], Tensor]]:
        if not ctx.stepped or ctx.index is None:
            self.discard()
            return {}
        return self.measure(ctx.batch, ctx.index, ctx.present)

    def disarm(self) -> None:
        self.discard()

    def before_step(self, batch: GradBatch) -> None:
        params = _locals(batch)
        # One fused call for all the copies; x * 1 is x exactly, NaN and -0.0 included.
        self._before = list(torch._foreach_mul(params, 1.0)) if params else []

    def measure(self, batch: GradBatch, index: Tensor, present: Sequence[bool]) -> dict[str, tuple[tuple[str, ...], Tensor]]:
        """After the optimizer step: norms grouped like the gradient norms, as (module names, vector).

        ``index`` maps each gradient to its group, ``present`` (host booleans) says which groups
        had a gradient this step.
        """
        names = self.grouping.labels
        if self._before is None or not len(batch):
            return {}
        after = _locals(batch)
        deltas = torch._foreach_sub(self._before, after)
        self._before = None
        # The fused pass that measures gradients, pointed at the weights and at the updates.
        theta = batch_norms(batch.with_tensors(after), 2.0).vector
        delta = batch_norms(batch.with_tensors(deltas), 2.0).vector
        theta_g = self.grouping.reduce(theta, index, 2.0)
        delta_g = self.grouping.reduce(delta, index, 2.0)
        ratio = delta_g / theta_g.clamp(min=1e-12)
        kept = tuple(i for i, ok in enumerate(present) if ok)
        if len(kept) < len(names):
            rows = index_tensor(kept, theta_g.device)
            theta_g, ratio = theta_g.index_select(0, rows), ratio.index_select(0, rows)
        kept_names = tuple(names[i] for i in kept)
        return {"param_norm": (kept_names, theta_g), "update_ratio": (kept_names, ratio)}

    def discard(self) -> None:
        self._before = None
