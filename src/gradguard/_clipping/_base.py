"""What every clipper shares: ``ClipStats``, the ``Clipper`` base class and in-place scaling.

A clipper never measures on its own when it is handed the norms of the step: ``Guard`` runs the
fused norm pass once and gives the same ``GradNorms`` to monitoring, clipping and the non-finite
policy. Called directly on parameters, a clipper runs that pass itself.

Stateful clippers update their statistics with ``torch.where(norms.finite, new, old)``, so a
non-finite norm never enters them and no host sync is needed to decide it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from gradguard._grads import GradBatch, ParamsLike, collect
from gradguard._norms import GradNorms, batch_norms


@dataclass(frozen=True)
class ClipStats:
    """What one clipping call measured and did. Fields are 0-dim tensors on the gradients' device.

    Attributes:
        norm_before: total gradient norm before clipping.
        norm_after: total gradient norm after clipping.
        threshold: the bound in force at this step (a norm for norm clippers, the element bound
            for ``ClipValue``, the ratio lambda for ``AGC``).
        clipped: bool, whether any gradient changed.
        coef: for ``ClipNorm``, the factor every gradient was multiplied by,
            ``min(1, max_norm / (norm_before + 1e-6))`` as in ``clip_grad_norm_`` (NaN on a
            non-finite step); for the other clippers ``norm_after / norm_before``, 1 where
            nothing changed.
    """

    norm_before: Tensor
    norm_after: Tensor
    threshold: Tensor
    clipped: Tensor
    coef: Tensor

    def as_floats(self) -> dict[str, float]:
        """Python numbers (one host sync for all fields)."""
        values = torch.stack([t.to(torch.float64) for t in (self.norm_before, self.norm_after, self.threshold, self.clipped, self.coef)])
        nb, na, th, cl, co = values.tolist()
        return {"norm_before": nb, "norm_after": na, "threshold": th, "clipped": bool(cl), "coef": co}


def make_stats(norm_before: Tensor, norm_after: Tensor, threshold: Tensor | float, clipped: Tensor, coef: Tensor | None = None) -> ClipStats:
    """Step statistics; ``coef`` is the factor every gradient was multiplied by, where one was
    (global-norm clipping), else it is derived as ``norm_after / norm_before``."""
    # A fill, not a host-to-device copy of a Python number: no wait for the host on accelerators.
    threshold = threshold.to(norm_before.dtype) if isinstance(threshold, Tensor) else torch.full_like(norm_before, float(threshold))
    if coef is None:
        positive = norm_before > 0
        coef = torch.where(positive, norm_after / torch.where(positive, norm_before, 1.0), 1.0)
    return ClipStats(norm_before, norm_after, threshold, clipped, coef)


def unclipped_stats(norms: GradNorms) -> ClipStats:
    """Stats of a step where nothing was clipped (no clipper configured)."""
    total = norms.total
    return ClipStats(total, total, torch.full_like(total, float("inf")), torch.zeros((), dtype=torch.bool, device=total.device), torch.ones_like(total))


def scale_(batch: GradBatch, coef: Tensor) -> None:
    """Multiply every gradient by one 0-dim factor (no branch on its value: no host sync)."""
    for device, _, _, grads in batch.group_grads():
        torch._foreach_mul_(grads, coef.to(device))


def scale_each_(batch: GradBatch, coefs: Tensor) -> None:
    """Multiply gradient i by ``coefs[i]``."""
    for device, dtype, idx, grads in batch.group_grads():
        local = coefs.to(device=device, dtype=dtype if dtype.is_floating_point else coefs.dtype).unbind(0)
        torch._foreach_mul_(grads, [local[i] for i in idx])


class Clipper:
    """Base class: call on parameters (``clipper(model.parameters())``) to clip their ``.grad`` in place.

    Subclasses implement ``apply(batch, norms)``. ``norm_type`` is the norm their statistics are in;
    ``Guard`` measures in that norm so one pass serves both.
    """

    name: ClassVar[str] = ""
    norm_type: float = 2.0

    def __call__(self, parameters: ParamsLike, *, norms: GradNorms | None = None) -> ClipStats:
        with torch.no_grad():
            batch = collect(parameters)
            if norms is None:
                norms = batch_norms(batch, self.norm_type)
            return self.apply(batch, norms)

    def apply(self, batch: GradBatch, norms: GradNorms) -> ClipStats:  # pragma: no cover - abstract
        raise NotImplementedError

    # Stateless clippers have an empty state; stateful ones override both methods.
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state, but load_state_dict got keys {sorted(state)}.")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"{type(self).__name__}({args})"

    def _config(self) -> dict[str, Any]:
        return {}


def check_state_keys(owner: str, state: Mapping[str, Any], expected: set[str]) -> None:
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ValueError(
            f"{owner}.load_state_dict: state does not match. Missing keys: {sorted(missing)}; "
            f"unexpected keys: {sorted(unexpected)}. Pass a dict produced by {owner}.state_dict()."
        )
