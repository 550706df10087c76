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

from gradguard._grads import GradBatch
from gradguard._norms import batch_norms, reduce_groups


def _local(p: Tensor) -> Tensor:
    p = p.detach()
    return p.to_local() if hasattr(p, "to_local") else p


class ParamProbe:
    """Per-module parameter norms and update ratios, on scheduled steps."""

    name = "norms"

    def __init__(self):
        self._before: list[Tensor] | None = None

    def before_step(self, batch: GradBatch) -> None:
        self._before = [_local(p).clone() for p in batch.params]

    def collect(self, batch: GradBatch, index: Tensor, names: Sequence[str], present: Sequence[bool]) -> dict[str, dict[str, Tensor]]:
        """After the optimizer step: norms grouped like the gradient norms.

        ``index`` maps each gradient to its group, ``names`` are the groups, ``present`` (host
        booleans) says which groups had a gradient this step.
        """
        if self._before is None or not len(batch):
            return {}
        after = [_local(p) for p in batch.params]
        deltas = torch._foreach_sub(self._before, after)
        self._before = None
        # The fused pass that measures gradients, pointed at the weights and at the updates.
        theta = batch_norms(batch.with_tensors(after), 2.0).vector
        delta = batch_norms(batch.with_tensors(deltas), 2.0).vector
        n_groups = len(names) + 1  # the last group collects parameters Guard did not know at start
        theta_g = reduce_groups(theta, index, n_groups, 2.0)[: len(names)]
        delta_g = reduce_groups(delta, index, n_groups, 2.0)[: len(names)]
        ratio = delta_g / theta_g.clamp(min=1e-12)
        return {
            "param_norm": {n: v for n, v, ok in zip(names, theta_g.unbind(0), present) if ok},
            "update_ratio": {n: v for n, v, ok in zip(names, ratio.unbind(0), present) if ok},
        }

    def discard(self) -> None:
        self._before = None
