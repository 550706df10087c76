"""What the framework callbacks share: argument checks, metric names, the per-module filter."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from gradguard._errors import check_choice, check_int
from gradguard._guard import resolve_clipper
from gradguard._policy import POLICIES
from gradguard.integrations.tensorboard import ModuleFilter, _name_filter

# Metric names, the same as TensorBoardLogger's tags.
PRE_CLIP = "grad_norm/pre_clip"  # total gradient norm before clipping
POST_CLIP = "grad_norm/post_clip"  # ... and after
COEF = "clip/coef"  # post_clip / pre_clip: 1 when clipping did not act
THRESHOLD = "clip/threshold"  # the clipper's bound at this step (only with a clipper)
ACTIVE_FRAC = "clip/active_frac"  # share of clipped steps among the last `window` steps
SKIPPED = "steps/skipped"  # non-finite steps skipped so far
MODULE = "grad_norm/{}"  # per-module norm

WINDOW = 100  # steps that clip/active_frac covers


class GuardSettings:
    """The Guard a callback will build once the framework hands it the model.

    Validates what it can at once (so a typo fails when the callback is created, not minutes
    into a run); the remaining Guard keywords are checked when the Guard is built.
    """

    def __init__(self, clip: Any, nonfinite: str, max_consecutive_skips: int, module_filter: ModuleFilter, window: int, guard_kwargs: dict[str, Any]):
        for reserved in ("model", "loggers", "scaler"):
            if reserved in guard_kwargs:
                raise TypeError(f"{reserved}= is set by the callback itself; remove it from the callback's arguments.")
        self.clipper = resolve_clipper(clip)
        self.nonfinite = check_choice("nonfinite", nonfinite, POLICIES)
        self.max_consecutive_skips = check_int("max_consecutive_skips", max_consecutive_skips, minimum=0)
        self.keep_module = _name_filter(module_filter)
        self.window = check_int("window", window, minimum=1)
        self.guard_kwargs = dict(guard_kwargs)

    def build(self, model, *, log_every: int, scaler=None):
        from gradguard._guard import Guard

        kwargs = {"log_every": log_every, **self.guard_kwargs}
        return Guard(model, self.clipper, self.nonfinite, self.max_consecutive_skips, scaler, **kwargs)

    def module_tags(self, module_names: Sequence[str]) -> list[tuple[int, str]]:
        """(position in guard.module_names, metric name) of the modules whose norms are logged."""
        return [(i, MODULE.format(name)) for i, name in enumerate(module_names) if self.keep_module(name)]


def finite_or_none(value: float) -> float | None:
    """Loggers draw NaN and Inf badly; a skipped step's norms are left out instead."""
    return value if math.isfinite(value) else None
