"""Rules on clipping: active on nearly every step or never, and a threshold recommendation."""

from __future__ import annotations

import numpy as np

from gradguard._finding import Finding
from gradguard._rules import _thresholds as T
from gradguard._rules._common import (
    clip_fix,
    clip_remedy,
    lower_first,
    recommend_threshold,
)
from gradguard._rules._syntax import clip_text
from gradguard._rundata import RunData

# Clippers whose bound is fixed: "always" and "never" mean something for them. AutoClip clips
# 100 - p percent of steps by design and ZClip only outliers; AGC's bound is a ratio per unit.
FIXED_BOUND = ("norm", "tensor_norm", "value")


def _clip_share(data: RunData):
    clipper = data.meta.get("clipper") or {}
    if clipper.get("name") not in FIXED_BOUND:
        return None
    skipped = data.scalars.get("skipped", np.zeros(0)).astype(bool)
    clipped = data.scalars.get("clipped", np.zeros(0)).astype(bool)[~skipped]
    if not len(clipped):
        return None
    return clipper, float(clipped.mean()), len(clipped)


def clipping_activity(data: RunData) -> Finding | None:
    share = _clip_share(data)
    if share is None:
        return None
    clipper, fraction, steps = share
    # Early: clipping on every one of the first MIN_STEPS_CLIPPING_EARLY steps says as much.
    if (steps >= T.MIN_STEPS_CLIPPING and fraction > T.CLIPPING_ALWAYS_FRACTION) or (steps >= T.MIN_STEPS_CLIPPING_EARLY and fraction == 1.0):
        return Finding(
            "CLIPPING_ALWAYS",
            "warning",
            f"{clipper.get('repr', clipper['name'])} rescaled {fraction:.0%} of {steps} steps: it acts as a cut of the "
            "learning rate rather than a guard against spikes.",
            [],
            {"clipped_fraction": fraction, "steps": steps, "threshold": T.CLIPPING_ALWAYS_FRACTION, **_norm_stats(data)},
            "Raise the threshold so only outliers are clipped, " + lower_first(clip_remedy(data))
            + " Or lower the learning rate if the large norms are the norm.",
            int(data.steps[-1]),
            fix=clip_fix(data),
        )
    if steps >= T.MIN_STEPS_CLIPPING_NEVER and fraction == 0.0:
        return Finding(
            "CLIPPING_NEVER",
            "info",
            f"{clipper.get('repr', clipper['name'])} never clipped in {steps} steps: it only guards against rare spikes.",
            [],
            {"clipped_fraction": 0.0, "steps": steps, **_norm_stats(data)},
            "Fine if it is meant as a safety net. For it to shape training, " + lower_first(clip_remedy(data)),
            int(data.steps[-1]),
        )
    return None


def _norm_stats(data: RunData) -> dict:
    norms = data.finite_norms()
    if not len(norms):
        return {}
    return {"median_norm": float(np.median(norms)), "max_norm_seen": float(norms.max())}


def clip_threshold(data: RunData) -> Finding | None:
    """A global-norm threshold from the observed norms (Pascanu et al. 2013's 0.5x-10x the mean)."""
    rec = recommend_threshold(data)
    if rec is None:
        return None
    value, evidence = rec
    clipper = data.meta.get("clipper") or {}
    current = clipper.get("max_norm")
    if current is not None:
        evidence["current_max_norm"] = current
    return Finding(
        "CLIP_THRESHOLD",
        "info",
        f"Observed gradient norms: median {evidence['p50']:.3g}, 90th percentile {evidence['p90']:.3g}, 99th {evidence['p99']:.3g} "
        f"over {evidence['steps']} steps. A global-norm threshold of {value:g} clips the top tenth; it is "
        f"{evidence['times_mean']:.2g}x the mean norm, {'inside' if T.PASCANU_LOW <= evidence['times_mean'] <= T.PASCANU_HIGH else 'outside'} "
        "the 0.5x-10x range Pascanu et al. (2013) found workable.",
        [],
        evidence,
        clip_text(data, value),
        int(data.steps[-1]),
        fix={"clip": value},
    )
