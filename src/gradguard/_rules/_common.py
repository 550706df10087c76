"""Helpers shared by the rules: depth profiles and the clipping-threshold recommendation."""

from __future__ import annotations

import math

import numpy as np

from gradguard._rules import _thresholds as T
from gradguard._rundata import RunData


def depth_profile(data: RunData, metric: str) -> tuple[int, list[str], np.ndarray] | None:
    """(step, layer names input-side first, values) of the latest record of ``metric``."""
    latest = data.latest(metric)
    if latest is None:
        return None
    step, values = latest
    order = [n for n in data.meta.get("forward_order", []) if n in values] or list(values)
    finite = [n for n in order if np.isfinite(values[n])]
    if len(finite) < T.MIN_LAYERS_FOR_DEPTH:
        return None
    return step, finite, np.array([values[n] for n in finite])


def sig(x: float, digits: int = 2) -> float:
    """Round to ``digits`` significant digits (thresholds people can type)."""
    if not math.isfinite(x) or x == 0:
        return x
    return round(x, -int(math.floor(math.log10(abs(x)))) + digits - 1)


def recommend_threshold(data: RunData) -> tuple[float, dict] | None:
    """The 90th percentile of observed pre-clip norms, with where it falls in Pascanu's range."""
    norms = data.finite_norms()
    if len(norms) < T.MIN_STEPS_RECOMMEND:
        return None
    # Pascanu's "average norm", without the top 1%: one spike can multiply a plain mean tenfold.
    mean = float(norms[norms <= np.percentile(norms, 99)].mean())
    p50, p90, p99 = (float(np.percentile(norms, q)) for q in (50, T.RECOMMEND_PERCENTILE, 99))
    value = sig(p90)
    evidence = {
        "steps": len(norms),
        "mean_norm_without_top_1pct": mean,
        "p50": p50,
        "p90": p90,
        "p99": p99,
        "recommended_max_norm": value,
        "times_mean": value / mean if mean > 0 else math.nan,
        "pascanu_range": [T.PASCANU_LOW * mean, T.PASCANU_HIGH * mean],
    }
    return value, evidence


def clip_remedy(data: RunData, extra: str = "") -> str:
    from gradguard._rules._syntax import clip_text

    rec = recommend_threshold(data)
    if rec is None:
        return f"Clip the global gradient norm, e.g. {clip_text(data, 1.0)}." + extra
    value, ev = rec
    return (
        f"{clip_text(data, value)}: the 90th percentile of the observed norms, "
        f"{ev['times_mean']:.2g}x their mean (Pascanu et al. 2013 found 0.5x to 10x the mean workable)." + extra
    )


def clip_fix(data: RunData) -> dict:
    """``{"clip": the recommended threshold}``, or empty when too few steps were seen."""
    rec = recommend_threshold(data)
    return {"clip": rec[0]} if rec is not None else {}


def module_types(data: RunData) -> set[str]:
    return set(data.meta.get("activation_types", {}).values()) | set(data.meta.get("layer_types", {}).values())


def lower_first(text: str) -> str:
    """'Clip the ...' -> 'clip the ...', to continue a sentence (code such as 'gg.' stays as is)."""
    return text[:1].lower() + text[1:] if text[:1].isupper() else text
