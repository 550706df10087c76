"""What every clipper shares: ``ClipStats``, the ``Clipper`` base class and in-place scaling.

A clipper never measures on its own when it is handed the norms of the step: ``Guard`` runs the
fused norm pass once and gives the same ``GradNorms`` to monitoring, clipping and the non-finite
policy. Called directly on parameters, a clipper runs that pass itself.

Stateful clippers update their statistics with ``torch.where(norms.finite, new, old)``, so a
non-finite norm never enters them and no host sync is needed to decide it.
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from gradguard._errors import GradGuardWarning
from gradguard._grads import GradBatch, ParamsLike, collect, stat_dtype
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


def is_low_precision(dtype: torch.dtype) -> bool:
    """fp16 and bf16 (and the float8 types): a clipping factor must not be rounded to them."""
    return dtype.is_floating_point and stat_dtype(dtype) != dtype


# Elements per float32 slice in mul_wide_: bounds its temporary to 64 MiB whatever the tensor.
WIDE_CHUNK = 1 << 24


def mul_wide_(grad: Tensor, coef: Tensor) -> None:
    """``grad *= coef`` computed in float32 or wider, rounded once into the gradient's dtype.

    ``coef`` is 0-dim, or one factor per row (AGC's units). Multiplying an fp16 tensor by a
    float32 factor would first round the factor to fp16 (CUDA's kernels take both operands in
    the tensor's dtype), where a factor below 6e-8 is 0 and one below 6e-5 a subnormal with a
    few bits: 3e4-scale fp16 gradients clipped that way become all zeros. The price is a float32
    copy of at most ``WIDE_CHUNK`` elements at a time; float32 and float64 gradients are
    multiplied in place.
    """
    if not is_low_precision(grad.dtype):
        grad.mul_(coef.to(grad.dtype))
        return
    wide = stat_dtype(grad.dtype)
    if grad.ndim == 0 or grad.numel() <= WIDE_CHUNK:
        grad.copy_(grad.to(wide).mul_(coef))
        return
    rows = max(1, WIDE_CHUNK // max(1, grad[0].numel()))
    for start in range(0, grad.shape[0], rows):
        part = grad[start : start + rows]
        factor = coef[start : start + rows] if coef.ndim else coef
        part.copy_(part.to(wide).mul_(factor))


def scale_(batch: GradBatch, coef: Tensor) -> None:
    """Multiply every gradient by one 0-dim factor (no branch on its value: no host sync)."""
    for device, dtype, _, grads in batch.group_grads():
        if is_low_precision(dtype):
            local = coef.to(device)
            for g in grads:
                mul_wide_(g, local)
        else:
            torch._foreach_mul_(grads, coef.to(device))


def scale_each_(batch: GradBatch, coefs: Tensor) -> None:
    """Multiply gradient i by ``coefs[i]`` (float32 or wider: see ``mul_wide_``)."""
    for device, dtype, idx, grads in batch.group_grads():
        if is_low_precision(dtype):
            local = coefs.to(device=device).unbind(0)
            for i, g in zip(idx, grads):
                mul_wide_(g, local[i])
        else:
            local = coefs.to(device=device, dtype=dtype).unbind(0)
            torch._foreach_mul_(grads, [local[i] for i in idx])


def materialize(parameters: ParamsLike, owner: str) -> ParamsLike:
    """Read a generator once, and warn when it was empty: usually an exhausted
    ``model.parameters()`` reused from an earlier call, which would clip nothing in silence.

    An explicitly empty list or module is taken at its word, as ``clip_grad_norm_`` does.
    """
    if isinstance(parameters, types.GeneratorType):
        parameters = list(parameters)
        if not parameters:
            warnings.warn(
                f"{owner} got an empty generator of parameters, so nothing was measured or clipped. "
                "A generator such as model.parameters() is used up after one pass: pass the model, or "
                "list(model.parameters()), to reuse it.",
                GradGuardWarning,
                stacklevel=3,
            )
    return parameters


class Clipper:
    """Base class: call on parameters (``clipper(model.parameters())``) to clip their ``.grad`` in place.

    Subclasses implement ``apply(batch, norms)``. ``norm_type`` is the norm their statistics are in;
    ``Guard`` measures in that norm so one pass serves both.

    For fp16 and bf16 gradients every factor is computed and applied in float32, then rounded
    once into the gradient. An empty generator of parameters (an exhausted ``model.parameters()``)
    warns, as ``torch.nn.utils.clip_grad_norm_`` does, and clips nothing.
    """

    name: ClassVar[str] = ""
    norm_type: float = 2.0

    def __call__(self, parameters: ParamsLike, *, norms: GradNorms | None = None) -> ClipStats:
        parameters = materialize(parameters, type(self).__name__)
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
        check_state_keys(type(self).__name__, state, set())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"{type(self).__name__}({args})"

    def _config(self) -> dict[str, Any]:
        return {}


def check_state_keys(owner: str, state: Mapping[str, Any], expected: set[str]) -> None:
    if not isinstance(state, Mapping):
        raise TypeError(f"{owner}.load_state_dict expects a dict from {owner}.state_dict(), got {type(state).__name__}: {state!r:.80}")
    bad_keys = [k for k in state if not isinstance(k, str)]
    if bad_keys:
        raise TypeError(f"{owner}.load_state_dict: state keys must be strings, got {bad_keys[0]!r}. Pass a dict produced by {owner}.state_dict().")
    if not expected and state:
        raise ValueError(f"{owner} has no state, but load_state_dict got keys {sorted(state)}. Pass {{}} (what {owner}.state_dict() returns), or load this state into the clipper that wrote it.")
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ValueError(
            f"{owner}.load_state_dict: state does not match. Missing keys: {sorted(missing)}; "
            f"unexpected keys: {sorted(unexpected)}. Pass a dict produced by {owner}.state_dict()."
        )
