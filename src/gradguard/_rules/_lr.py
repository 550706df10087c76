"""The learning rate as a root cause: a fast blow-up, updates far too large, a schedule that went
past the largest stable rate, or one spike of it.

Evidence, in the order the rule weighs it: the total gradient norm step by step (a blow-up is
diagnosed on the spot: 10x per step over two steps), the optimizer's learning rate per step (the
``lr`` column), the update-to-weight ratios of the parameter probe, and the loss trajectory. The
remedy names a learning rate: the largest one at which the run was stable when the run shows it,
otherwise one that brings the update ratio down to the healthy level, or, for a plain SGD blow-up,
the rate divided by the per-step growth (the growth of an unstable step is about lr x curvature,
so lr / growth sits at the edge of stability's safe side). Adam-family optimizers also get a
warm-up (Liu et al. 2020).
"""

from __future__ import annotations

import math

import numpy as np

from gradguard._finding import Finding
from gradguard._rules import _thresholds as T
from gradguard._rules._common import sig
from gradguard._rules._evidence import (
    adam_family,
    fast_blowup,
    first_update_ratio,
    init_blames,
    lr_series,
    nonfinite_steps,
    optimizer_name,
    smoothed_loss,
)
from gradguard._rules._syntax import lr_text
from gradguard._rundata import RunData


def _lr_at(lr: np.ndarray | None, data: RunData, step: int) -> float | None:
    if lr is None:
        return None
    idx = np.flatnonzero(data.steps == step)
    value = lr[idx[0]] if len(idx) else math.nan
    return float(value) if math.isfinite(value) and value > 0 else None


def _warmup(data: RunData) -> int | None:
    if not adam_family(data):
        return None
    return int(min(T.WARMUP_MAX, max(T.WARMUP_MIN, len(data) // 10)))


def _finding(data: RunData, severity: str, message: str, evidence: dict, new_lr: float | None, step: int, why: str) -> Finding:
    warmup = _warmup(data)
    fix: dict = {}
    if new_lr is not None:
        new_lr = sig(new_lr, 1)
        fix["lr"] = new_lr
        remedy = f"Lower the learning rate to {new_lr:g} ({why}): {lr_text(data, new_lr, warmup, optimizer_name(data))}."
    else:
        remedy = "Lower the learning rate 10x (record it with the step so a concrete value can be named)."
    if warmup:
        fix["warmup_steps"] = warmup
        if new_lr is None:
            remedy += f" Add a linear warm-up over {warmup} steps: Adam's early steps are large while its variance estimate is young."
    evidence = {**evidence, "optimizer": optimizer_name(data), "suggested_lr": new_lr, "warmup_steps": warmup}
    return Finding("LR_TOO_HIGH", severity, message, [], evidence, remedy, step, None, fix)


def lr_too_high(data: RunData) -> Finding | None:
    """The learning rate is too high for this model and optimizer (see the module docstring)."""
    if len(data) < 2:
        return None
    lr = lr_series(data)
    blow = fast_blowup(data)
    ratio = first_update_ratio(data)
    init = init_blames(data)  # exploding pre-activations at step 1: the init rule names it
    if blow is not None and not init:
        rate = _lr_at(lr, data, blow.start)
        new = None
        if rate is not None:
            # SGD: an unstable step multiplies the norm by about lr x curvature, so lr / growth of the
            # first 10x step sits near the stable side of the edge. Adam normalises its steps; there
            # the first update ratio says how far off the rate is.
            candidates = [] if adam_family(data) else [rate / blow.first_growth]
            if ratio is not None and ratio[1] > T.UPDATE_RATIO_TARGET_FIRST:
                candidates.append(rate * T.UPDATE_RATIO_TARGET_FIRST / ratio[1])
            new = min(candidates) if candidates else rate / blow.first_growth
        trail = ", ".join(f"{v:.3g}" for v in blow.norms)
        nf = f"; the first non-finite step is {blow.nonfinite_step}" if blow.nonfinite_step else ""
        at = f" at lr {rate:g}" if rate is not None else ""
        return _finding(
            data, "error",
            f"The gradient norm blew up{at}: {trail} over steps {blow.start}-{blow.step} ({blow.growth:.3g}x per step){nf}. "
            "A step that multiplies the norm tenfold is an update far past the stable size: the learning rate is too high for this model.",
            {"norms": blow.norms, "growth_per_step": blow.growth, "blowup_start": blow.start, "diagnosed_at": blow.step,
             "first_nonfinite_step": blow.nonfinite_step, "lr": rate, "growth_threshold": T.BLOWUP_GROWTH},
            new, blow.step, "the rate divided by how much its first unstable step multiplied the norm" if not adam_family(data)
            else f"it brings the first update's ratio to about {T.UPDATE_RATIO_TARGET_FIRST:g}",
        )
    spiked = _lr_spike(data, lr)
    if spiked is not None:
        return spiked
    if lr is not None:
        ramp = _past_stable(data, lr)
        if ramp is not None:
            return ramp
    no_warmup = adam_family(data) and ratio is not None and ratio[1] > T.FIRST_STEP_RATIO_HIGH and _no_warmup(data, lr)
    if not init and ratio is not None and ratio[1] > T.UPDATE_RATIO_HIGH and (_not_learning(data) or _sustained(data) or no_warmup):
        step, value = ratio
        rate = _lr_at(lr, data, step)
        new = rate * T.UPDATE_RATIO_TARGET_FIRST / value if rate is not None else None
        return _finding(
            data, "error" if nonfinite_steps(data).any() else "warning",
            f"At step {step} the weights moved {value:.2g} of their norm in one update (median over modules; healthy "
            f"training sits near {T.UPDATE_RATIO_TARGET:g}), and the loss has not improved since: the learning rate"
            + (f" {rate:g}" if rate else "") + " is too high.",
            {"update_ratio": value, "update_ratio_step": step, "threshold": T.UPDATE_RATIO_HIGH, "lr": rate},
            new, step, f"it brings the first update's ratio to about {T.UPDATE_RATIO_TARGET_FIRST:g}"
            + (", with the warm-up Adam's first steps need" if no_warmup else ""),
        )
    return None


def _not_learning(data: RunData) -> bool:
    """No better than where it started: smoothed loss at the end >= 90% of the first loss, or non-finite."""
    bad = nonfinite_steps(data)
    if bad.any():
        return True
    smooth = smoothed_loss(data, window=5)
    loss = data.scalars.get("loss", np.zeros(0))
    finite = loss[np.isfinite(loss)]
    if smooth is None or not len(finite):
        return False
    _, s = smooth
    return bool(s[-1] >= 0.9 * finite[0])


def _no_warmup(data: RunData, lr: np.ndarray | None) -> bool:
    """The first step already ran at (half) the peak rate; unknown rates count as no warm-up."""
    if lr is None or not np.isfinite(lr).any():
        return True
    return bool(lr[0] >= 0.5 * np.nanmax(lr))


def _sustained(data: RunData) -> bool:
    """The update ratio above the bound on most probe steps, not only the first (Adam's first
    steps are large by design; a rate that stays too high keeps them large)."""
    medians = [float(np.median([v for v in values.values() if math.isfinite(v)] or [math.nan]))
               for _, values in data.records.get("update_ratio", [])]
    medians = [m for m in medians if math.isfinite(m)]
    return len(medians) >= 3 and sum(m > T.UPDATE_RATIO_HIGH for m in medians) > len(medians) / 2


def _past_stable(data: RunData, lr: np.ndarray) -> Finding | None:
    """The schedule raised the rate past the largest stable one: the loss regressed after its best."""
    smooth = smoothed_loss(data)
    if smooth is None:
        return None
    steps, s = smooth
    best = int(np.argmin(s))
    best_step = int(steps[best])
    diverged = bool(nonfinite_steps(data)[-1]) or s[-1] > T.LOSS_REGRESSION * s[best]
    if not diverged or best_step >= int(data.steps[-1]) - 10:
        return None
    stable = _lr_at(lr, data, best_step)
    finite_lr = lr[np.isfinite(lr)]
    if stable is None or not len(finite_lr) or finite_lr.max() < T.LR_RISE * stable:
        return None
    peak = float(finite_lr.max())
    return _finding(
        data, "error" if nonfinite_steps(data).any() else "warning",
        f"The learning rate rose from {stable:g} (where the loss was at its best, {s[best]:.3g} at step {best_step}) to {peak:g}, "
        f"and the loss regressed to {s[-1]:.3g}" + (" then went non-finite" if nonfinite_steps(data).any() else "") + ": the schedule passes the largest stable rate.",
        {"stable_lr": stable, "best_loss": float(s[best]), "best_step": best_step, "peak_lr": peak, "final_loss": float(s[-1]),
         "regression_threshold": T.LOSS_REGRESSION},
        T.LR_SAFETY * stable, best_step, f"{T.LR_SAFETY:g}x the largest rate at which the run was stable",
    )


def _lr_spike(data: RunData, lr: np.ndarray | None) -> Finding | None:
    """One step (or a few) at many times the usual rate, with damage right after."""
    if lr is None:
        return None
    finite = np.isfinite(lr) & (lr > 0)
    if finite.sum() < 5:
        return None
    median = float(np.median(lr[finite]))
    spikes = np.flatnonzero(finite & (lr > T.LR_SPIKE * median))
    if not len(spikes) or len(spikes) > 0.2 * finite.sum():
        return None
    i = int(spikes[0])
    step = int(data.steps[i])
    loss = data.scalars.get("loss", np.zeros(len(data)))
    before = loss[max(0, i - 10) : i]
    after = loss[i + 1 : i + 11]
    before, after = before[np.isfinite(before)], after[np.isfinite(after)]
    hurt = nonfinite_steps(data)[i:].any() or (len(before) and (not len(after) or np.median(after) > T.LOSS_REGRESSION * np.median(before)))
    dead = data.records.get("dead_fraction", [])
    dead_jump = [v for s, v in dead if s > step]
    hurt = hurt or bool(dead_jump and max(dead_jump[0].values(), default=0) > T.DEAD_FRACTION)
    if not hurt:
        return None
    return _finding(
        data, "error",
        f"The learning rate spiked to {lr[i]:g} at step {step}, {lr[i] / median:.3g}x its usual {median:g}, and training did not recover"
        + (f" (loss {np.median(before):.3g} before, {np.median(after):.3g} after)" if len(before) and len(after) else "") + ".",
        {"spike_lr": float(lr[i]), "median_lr": median, "spike_step": step, "factor": float(lr[i] / median), "threshold": T.LR_SPIKE},
        median, step, "the rate the run used outside the spike; check the schedule or restart logic that set it",
    )
