"""The clippers' constructor arguments, checked once for every framework.

``gg.ClipNorm``, ``gg.AutoClip``, ``gg.ZClip``... and their ``gradguard.keras`` twins take the
same arguments; each check here returns the values as the clipper stores them, or raises the one
error message both give. Framework-free (Python only), so any framework's clippers can use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gradguard._errors import check_choice, check_fraction, check_int, check_norm_type, check_positive

HEAD = "head"  # AGC's exclude token: the final layer, which Brock et al. (2021) leave unclipped
ZCLIP_MODES = ("zscore", "percentile")
ZCLIP_OPTIONS = ("adaptive_scaling", "mean")


def norm_args(max_norm: float, norm_type: float | str) -> tuple[float, float]:
    """ClipNorm and ClipTensorNorm: (max_norm, norm_type)."""
    return check_positive("max_norm", max_norm), check_norm_type(norm_type)


def value_args(clip_value: float) -> float:
    """ClipValue: clip_value."""
    return check_positive("clip_value", clip_value)


def agc_args(clipping: float, eps: float, exclude: str | Sequence[str] | None) -> tuple[float, float, tuple[str, ...]]:
    """AGC: (clipping, eps, exclude as a tuple of glob patterns and the token 'head')."""
    clipping = check_positive("clipping", clipping)
    eps = check_positive("eps", eps, allow_zero=True)
    if isinstance(exclude, str):
        exclude = (exclude,)
    if exclude is None or not hasattr(exclude, "__iter__") or not all(isinstance(pattern, str) for pattern in exclude):
        raise TypeError(
            f"exclude must be a sequence of glob patterns on parameter names (variable paths in Keras), or {HEAD!r} for the "
            f"final layer, got {exclude!r}. Use exclude=() to clip every parameter."
        )
    return clipping, eps, tuple(exclude)


def autoclip_args(percentile: float, norm_type: float | str, decay: float | None, exact_samples: int, low: float, high: float,
                  bins_per_decade: int) -> dict[str, Any]:
    """AutoClip: the checked values by name (``exact_samples`` is 0 with a decay: a weighted
    history has no exact sorted form)."""
    out = {
        "percentile": check_fraction("percentile", percentile, low=0.0, high=100.0, closed=True),
        "norm_type": check_norm_type(norm_type),
        "decay": None if decay is None else check_fraction("decay", decay),
    }
    out["exact_samples"] = 0 if out["decay"] is not None else check_int("exact_samples", exact_samples, minimum=0)
    out["low"], out["high"] = check_positive("low", low), check_positive("high", high)
    if not out["low"] < out["high"]:
        raise ValueError(f"AutoClip needs 0 < low < high (the histogram's range of norms), got low={low!r}, high={high!r}.")
    out["bins_per_decade"] = check_int("bins_per_decade", bins_per_decade, minimum=1)
    return out


def zclip_args(alpha: float, z_thresh: float, warmup_steps: int, max_grad_norm: float | None, eps: float, mode: str,
               clip_option: str, clip_factor: float, skip_update_on_spike: bool) -> dict[str, Any]:
    """ZClip: the checked values by name."""
    return {
        "alpha": check_fraction("alpha", alpha),
        "z_thresh": check_positive("z_thresh", z_thresh),
        "warmup_steps": check_int("warmup_steps", warmup_steps, minimum=1),
        "max_grad_norm": None if max_grad_norm is None else check_positive("max_grad_norm", max_grad_norm),
        "eps": check_positive("eps", eps),
        "mode": check_choice("mode", mode, ZCLIP_MODES),
        "clip_option": check_choice("clip_option", clip_option, ZCLIP_OPTIONS),
        "clip_factor": check_positive("clip_factor", clip_factor),
        "skip_update_on_spike": bool(skip_update_on_spike),
    }
