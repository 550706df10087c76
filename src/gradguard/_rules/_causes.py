"""Causes outside the gradient flow itself: the data, the precision, the loss, the loss scaler.

They read what the input check records (``_probes/_inputs.py``): ``nonfinite_input`` events on
steps whose norms were already non-finite, and in ``meta["inputs"]`` the batch size, the forward
passes per optimizer step, whether autocast ran and in which dtype, and the parameters' dtype.
"""

from __future__ import annotations

import numpy as np

from gradguard._finding import Finding
from gradguard._rules import _thresholds as T
from gradguard._rules._evidence import (
    fast_blowup,
    init_blames,
    max_update_ratio,
    nonfinite_locations,
    nonfinite_steps,
    raw_nonfinite_steps,
    scaler_in_use,
    smoothed_loss,
)
from gradguard._rules._syntax import guard_text, precision_text
from gradguard._rundata import RunData


def _inputs(data: RunData) -> dict:
    return data.meta.get("inputs") or {}


def _steps_after(data: RunData, step: int) -> np.ndarray:
    bad = nonfinite_steps(data)
    return bad[data.steps > step]


def nonfinite_input(data: RunData) -> Finding | None:
    """NaN/Inf in the model's floating-point inputs on the step whose gradients went non-finite."""
    events = [e for e in data.events if e.get("kind") == "nonfinite_input"]
    if not events:
        return None
    first = events[0]
    step = first.get("step")
    after = _steps_after(data, step) if step is not None else np.zeros(0, dtype=bool)
    one_off = len(after) > 0 and not after[0]
    policy = data.meta.get("nonfinite", "skip")
    steps = [e.get("step") for e in events]
    message = f"Non-finite input in the batch at step {step}" + (f" (and at {len(events) - 1} later step(s))" if len(events) > 1 else "")
    message += f": {first.get('what', 'the inputs')} held NaN or Inf before the model ran."
    if one_off:
        message += " One-off: the next step was clean, likely the batch."
    elif len(after) and after.all():
        message += " Every step after it is non-finite too: the bad values reached the weights" + (" (nonfinite='ignore' let the step through)." if policy == "ignore" else ".")
    fix = {"nonfinite": "skip"} if policy != "skip" else {}
    remedy = "Find the sample: check the batch of that step (torch.isfinite(x).all() in the data pipeline), filter or repair it"
    remedy += f"; meanwhile let Guard drop such steps: {guard_text(data, nonfinite='skip')}." if fix else "; Guard already skipped the step, so the weights are unharmed."
    return Finding(
        "NONFINITE_INPUT", "error" if (len(after) and after.all()) or fix else "warning", message, list(first.get("inputs", [])),
        {"steps": steps, "first_step": step, "loss_finite": first.get("loss_finite"), "next_step_clean": bool(one_off), "policy": policy},
        remedy, step, None, fix,
    )


def _fp16(data: RunData) -> str | None:
    """'autocast' or 'weights' when float16 is in play, else None."""
    info = _inputs(data)
    if info.get("autocast_dtype") == "float16":
        return "autocast"
    if "float16" in (info.get("param_dtypes") or []):
        return "weights"
    return None


def _location(data: RunData) -> dict | None:
    located = nonfinite_locations(data)
    return located[0] if located else None


def fp16_overflow(data: RunData) -> Finding | None:
    """A value past float16's 65504: in one module's forward, in the gradients, or in the update."""
    mode = _fp16(data)
    bad = nonfinite_steps(data)
    if mode is None or not bad.any() or _scaler_collapsed(data) is not None:
        return None
    first = int(data.steps[np.argmax(bad)])
    loc = _location(data)
    upcast = []
    if loc is not None and loc.get("direction") == "forward" and loc.get("produced"):
        module = loc["where"][0] if loc.get("where") else "?"
        upcast = [module]
        message = (f"In float16, {module!r} produced {loc.get('value', 'Inf')} in its forward pass from finite inputs (step {first} on): "
                   f"a sum or product past float16's largest value, {T.FP16_MAX:g} (additions of feature maps, attention logits).")
        where = [module]
    elif mode == "weights" and fast_blowup(data) is None and bad.argmax() > 0:
        message = (f"The weights are float16 and the first non-finite step ({first}) follows a finite one with no growth: the "
                   "update overflowed (in float16 Adam's eps 1e-8 is 0 and its second moment under- or overflows).")
        where = []
    elif loc is not None and loc.get("direction") == "backward":
        module = loc["where"][0] if loc.get("where") else "?"
        message = f"In float16, the gradient became {loc.get('value', 'Inf')} in the backward pass of {module!r} from step {first}: past {T.FP16_MAX:g}, with no GradScaler to rescale it."
        where = [module]
    else:
        return None
    fix = {"precision": "bf16"}
    remedy = f"Compute in bfloat16, whose range is float32's: {precision_text(data)}"
    if upcast:
        remedy += f"; or keep float16 and run {upcast[0]!r} in float32 (x.float() inside, or torch.autocast(device_type, enabled=False) around it)"
    remedy += "."
    return Finding("FP16_OVERFLOW", "error", message, where, {"float16": mode, "first_step": first, "location": loc and {k: loc.get(k) for k in ("where", "direction", "produced", "value")}},
                   remedy, first, None, fix)


def _scaler_collapsed(data: RunData) -> tuple[float, int] | None:
    if not scaler_in_use(data):
        return None
    skipped = raw_nonfinite_steps(data)
    if len(skipped) < T.SCALER_MIN_STEPS:
        return None
    fraction = float(skipped.mean())
    return (fraction, len(skipped)) if fraction >= T.SCALER_SKIP_FRACTION else None


def scaler_collapse(data: RunData) -> Finding | None:
    """A GradScaler skipping (nearly) every step: its scale halves each time and falls toward 0."""
    found = _scaler_collapsed(data)
    if found is None:
        return None
    fraction, steps = found
    loc = _location(data)
    where = list(loc.get("where", []))[:1] if loc else []
    halvings = round(fraction * steps)
    message = (f"The GradScaler skipped {fraction:.0%} of {steps} steps: its scale has halved about {halvings} times (65536 -> {65536 * 0.5 ** halvings:.2g}) "
               "and cannot recover, because the overflow is not in the scaled gradients")
    message += f": {where[0]!r} produces {loc.get('value', 'Inf')} in its {loc.get('direction', 'forward')} pass." if where else "."
    remedy = f"A smaller loss scale cannot fix a forward overflow: compute in bfloat16 ({precision_text(data)})"
    remedy += f", or run {where[0]!r} in float32." if where else "."
    return Finding("SCALER_COLLAPSE", "error", message, where, {"skipped_fraction": fraction, "steps": steps, "threshold": T.SCALER_SKIP_FRACTION,
                   "location": loc and {k: loc.get(k) for k in ("where", "direction", "produced", "value")}}, remedy, int(data.steps[0]), None, {"precision": "bf16"})


def _unstable(data: RunData) -> bool:
    """Signs that the step is too large, whatever makes it so."""
    if nonfinite_steps(data).any() or fast_blowup(data) is not None:
        return True
    ratio = max_update_ratio(data)
    if ratio is not None and ratio[1] > T.UPDATE_RATIO_HIGH:
        return True
    dead = [max(v.values(), default=0.0) for _, v in data.records.get("dead_fraction", [])]
    if len(dead) >= 2 and dead[0] < T.DEAD_FRACTION < max(dead[1:]):
        return True  # units killed during training: steps large enough to push them all below 0
    smooth = smoothed_loss(data, window=5)
    if smooth is not None:
        _, s = smooth
        return bool(s[-1] > T.LOSS_REGRESSION * s.min())
    return False


def loss_not_averaged(data: RunData) -> Finding | None:
    """A loss summed over a large batch, or micro-batches accumulated without dividing the loss."""
    info = _inputs(data)
    batch, micro = info.get("batch_size"), info.get("micro_batches")
    loss = data.scalars.get("loss", np.zeros(0))
    if not len(loss) or init_blames(data) or not _unstable(data):
        return None  # exploding pre-activations at step 1 make a large first loss too: the init rule's
    first = float(loss[0])
    if micro and micro > 1:
        return Finding(
            "LOSS_NOT_AVERAGED", "error" if nonfinite_steps(data).any() else "warning",
            f"Each optimizer step accumulates {micro} forward/backward passes and the steps are too large: unless each micro-batch's "
            f"loss is divided by {micro}, the gradient is {micro}x the average, and so is the step.",
            [], {"micro_batches": micro, "first_loss": first}, f"Divide the loss by the accumulation steps: (loss / {micro}).backward().",
            int(data.steps[0]), None, {"loss_scale": 1.0 / micro},
        )
    if batch and batch >= T.SUMMED_BATCH_MIN and np.isfinite(first) and first >= T.SUMMED_LOSS_MIN and first / batch <= T.SUMMED_LOSS_MIN:
        return Finding(
            "LOSS_NOT_AVERAGED", "error" if nonfinite_steps(data).any() else "warning",
            f"The first loss, {first:.4g}, is {first / batch:.3g} per example of the batch of {batch}: the loss looks summed over the batch, "
            f"which makes the gradient, and the step, {batch}x the average, and ties the learning rate to the batch size.",
            [], {"first_loss": first, "batch_size": batch, "per_example": first / batch, "threshold": T.SUMMED_LOSS_MIN},
            "Average the loss over the batch: reduction='mean' (the default of torch.nn losses) instead of 'sum'.",
            int(data.steps[0]), None, {"loss_reduction": "mean"},
        )
    return None


