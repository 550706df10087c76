"""What the framework callbacks share: argument checks, metric names, the per-module filter."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from gradguard._errors import check_choice, check_int
from gradguard._guard import resolve_clipper
from gradguard._policy import POLICIES
from gradguard.integrations.tensorboard import ModuleFilter, _name_filter

# Metric names and their arithmetic live in one place, shared by every logger.
from gradguard._metrics import ACTIVE_FRAC, COEF, MODULE, POST_CLIP, PRE_CLIP, SKIPPED, THRESHOLD, WINDOW  # noqa: E402,F401


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
        from gradguard._metrics import module_tags

        return module_tags(module_names, self.keep_module)


def finite_or_none(value: float) -> float | None:
    """Loggers draw NaN and Inf badly; a skipped step's norms are left out instead."""
    return value if math.isfinite(value) else None
