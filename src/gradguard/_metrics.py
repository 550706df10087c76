"""The metrics every logger writes, computed in one place.

TensorBoard, Lightning, the Hugging Face Trainer (and any logger added later: W&B, MLflow...) all
call ``metrics`` with one step's columns and get the same names and the same arithmetic:

    grad_norm/pre_clip    total gradient norm before clipping
    grad_norm/post_clip   total gradient norm after clipping
    clip/coef             post_clip / pre_clip, as the clipper computed it (1 when it did not act)
    clip/threshold        the clipper's bound at this step (only with a clipper)
    clip/active_frac      share of clipped steps among the recent ones (``active_frac``)
    steps/skipped         non-finite steps skipped so far
    loss                  when the step had a loss
    grad_norm/<module>    per-module norms

Values may be Python floats, numpy scalars or 0-dim tensors (Lightning logs device tensors, so
logging reads nothing on the host); with ``finite_only`` the non-finite norms of a skipped step
are left out (charts draw NaN and Inf badly), which needs host values.

    >>> m = metrics({"norm_before": 4.0, "norm_after": 1.0, "coef": 0.25, "threshold": 1.0}, active_frac=0.5, skipped=0)
    >>> m["clip/coef"], m["clip/active_frac"], m["steps/skipped"]
    (0.25, 0.5, 0)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

PRE_CLIP = "grad_norm/pre_clip"
POST_CLIP = "grad_norm/post_clip"
COEF = "clip/coef"
THRESHOLD = "clip/threshold"
ACTIVE_FRAC = "clip/active_frac"
SKIPPED = "steps/skipped"
LOSS = "loss"
MODULE = "grad_norm/{}"

WINDOW = 100  # recent steps that clip/active_frac covers, by default


def coef(norm_before: Any, norm_after: Any, recorded: Any = None) -> np.ndarray:
    """The clip coefficient over steps: the ``coef`` column where it was recorded (finite), else
    norm_after / norm_before (1 where norm_before is 0), for stores written before the column."""
    before = np.asarray(norm_before, dtype=np.float64)
    after = np.asarray(norm_after, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        derived = np.where(before > 0, after / before, 1.0)
    if recorded is None:
        return derived
    recorded = np.asarray(recorded, dtype=np.float64)
    return np.where(np.isfinite(recorded), recorded, derived)


def active_frac(clipped: Any, skipped: Any) -> Any:
    """Share of the given steps that clipping acted on (a skipped step counts as not clipped).
    Numpy arrays give a float; tensors give a 0-dim tensor (no host read)."""
    if hasattr(clipped, "float"):  # a tensor
        if clipped.numel() == 0:
            return clipped.float().sum()
        return (clipped.float() * (1 - skipped.float())).mean()
    clipped, skipped = np.asarray(clipped, dtype=bool), np.asarray(skipped, dtype=bool)
    return float(np.mean(clipped & ~skipped)) if clipped.size else 0.0


def metrics(
    step: Mapping[str, Any],
    *,
    active_frac: Any,
    skipped: Any,
    module_norms: Iterable[tuple[str, Any]] = (),
    with_threshold: bool = True,
    finite_only: bool = True,
) -> dict[str, Any]:
    """One step's metrics under the names above.

    Args:
        step: the step's columns (``_rundata.STEP_COLUMNS`` names): ``norm_before``,
            ``norm_after``, ``coef`` (derived from the norms when absent), ``threshold``,
            ``skipped`` and ``loss`` as available.
        active_frac: ``active_frac(...)`` over the recent steps.
        skipped: skipped steps so far.
        module_norms: (module name, norm) pairs to log (already filtered).
        with_threshold: log ``clip/threshold`` (only meaningful with a clipper).
        finite_only: leave out non-finite values and a skipped step's norms (host values only).
    """
    out: dict[str, Any] = {ACTIVE_FRAC: active_frac, SKIPPED: skipped}
    before, after = step.get("norm_before"), step.get("norm_after", step.get("norm_before"))
    c = step.get("coef")
    if finite_only:
        if _truthy(step.get("skipped", False)):
            before = None
        elif before is not None and not math.isfinite(float(before)):
            before = None
    if before is not None:
        out[PRE_CLIP] = before
        if after is not None and (not finite_only or math.isfinite(float(after))):
            out[POST_CLIP] = after
            if c is None or (finite_only and not math.isfinite(float(c))):
                c = float(coef(before, after)) if finite_only else _ratio(before, after)
            out[COEF] = c
        if with_threshold and "threshold" in step:
            out[THRESHOLD] = step["threshold"]
    loss = step.get("loss")
    if loss is not None and (not finite_only or math.isfinite(float(loss))):
        out[LOSS] = loss
    for name, value in module_norms:
        if not finite_only or math.isfinite(float(value)):
            out[MODULE.format(name)] = value
    return out


def module_tags(module_names: Iterable[str], keep: Callable[[str], bool]) -> list[tuple[int, str]]:
    """(position in module_names, metric name) of the modules ``keep`` accepts."""
    return [(i, MODULE.format(name)) for i, name in enumerate(module_names) if keep(name)]


def _truthy(value: Any) -> bool:
    return bool(value) if not hasattr(value, "item") else bool(value.item())


def _ratio(before: Any, after: Any) -> Any:
    return after / before
