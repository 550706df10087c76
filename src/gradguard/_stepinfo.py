"""What one ``guard.step`` returns, and how Guard reads its ``clip=`` argument."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from gradguard._clipping import Clipper, make_clipper


@dataclass(frozen=True)
class StepInfo:
    """What ``guard.step`` measured and did. Tensor fields are 0-dim and stay on the device.

    ``skipped`` is a bool tensor: ``if info.skipped:`` works, and reads it from the device.
    """

    step: int
    skipped: Tensor
    norm_before: Tensor
    norm_after: Tensor
    clipped: Tensor
    threshold: Tensor
    coef: Tensor
    module_norms: Tensor  # aligned with guard.module_names; NaN where a module had no gradient

    def as_floats(self) -> dict[str, Any]:
        """Python values (one host sync)."""
        values = torch.stack([t.to(torch.float64) for t in (self.norm_before, self.norm_after, self.threshold, self.coef, self.clipped, self.skipped)])
        nb, na, th, co, cl, sk = values.tolist()
        return {"step": self.step, "norm_before": nb, "norm_after": na, "threshold": th, "coef": co, "clipped": bool(cl), "skipped": bool(sk)}


def resolve_clipper(clip: Any) -> Clipper | None:
    """``None``, a number (global-norm bound), a registry name, or a clipper object."""
    if clip is None or isinstance(clip, Clipper):
        return clip
    if isinstance(clip, bool):
        raise TypeError("clip must be None, a number, a clipper name or a clipper object, got a bool.")
    if isinstance(clip, numbers.Real):
        from gradguard._clipping import ClipNorm

        return ClipNorm(float(clip))
    if isinstance(clip, str):
        return make_clipper(clip)
    raise TypeError(
        f"clip must be None, a number (max global norm), a name such as 'autoclip', or a clipper "
        f"such as gg.ClipNorm(1.0); got {type(clip).__name__}."
    )


def max_lr(optimizer: Any) -> float:
    """The largest learning rate over the param groups, read on the host (NaN without an
    optimizer). A tensor learning rate on an accelerator reads as NaN: reading it would sync."""
    groups = getattr(optimizer, "param_groups", None)
    if not groups:
        return math.nan
    best = math.nan
    for group in groups:
        lr = group.get("lr")
        if isinstance(lr, Tensor):
            lr = lr.item() if lr.device.type == "cpu" else math.nan
        if isinstance(lr, numbers.Real) and not (best >= lr):
            best = float(lr)
    return best
