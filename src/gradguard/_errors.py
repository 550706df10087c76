"""Exceptions, warnings and the argument checks every public entry point shares.

Messages follow one pattern: what was received, what was expected, how to fix it.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable
from typing import Any


class GradGuardError(RuntimeError):
    """Base class of the errors gradguard raises about a training run (not about arguments)."""


class NonFiniteGradientError(GradGuardError):
    """Gradients held NaN or Inf and the policy said to stop.

    ``parameters`` lists the parameter names whose gradients were non-finite.
    """

    def __init__(self, message: str, parameters: list[str]):
        super().__init__(message)
        self.parameters = list(parameters)


class GradGuardWarning(UserWarning):
    """Warnings about a setup that works but probably is not what was meant."""


class MissingDependencyError(ImportError):
    """An optional dependency is missing; the message holds the exact install command."""


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean ...?' for the closest matches of ``name``, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"


def unknown_name(kind: str, name: Any, choices: Iterable[str]) -> ValueError:
    """The error for a name that is not in a registry, with close-match suggestions."""
    choices = sorted(choices)
    hint = suggest(str(name), choices) if isinstance(name, str) else ""
    return ValueError(f"unknown {kind} {name!r}.{hint} Known {kind}s: {', '.join(choices)}.")


def check_positive(name: str, value: Any, *, allow_inf: bool = False, allow_zero: bool = False) -> float:
    """Validate a positive real number argument (numpy scalars included) and return it as float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} of type {type(value).__name__}.")
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}.")
    return value


def check_fraction(name: str, value: Any, *, low: float = 0.0, high: float = 1.0, closed: bool = False) -> float:
    """Validate a number in the open interval (low, high), or closed when ``closed``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r} of type {type(value).__name__}.")
    value = float(value)
    inside = (low <= value <= high) if closed else (low < value < high)
    if not inside:
        brackets = f"[{low}, {high}]" if closed else f"({low}, {high})"
        raise ValueError(f"{name} must lie in {brackets}, got {value!r}.")
    return value


def check_int(name: str, value: Any, *, minimum: int = 0) -> int:
    """Validate an integer argument >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} of type {type(value).__name__}.")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}.")
    return value


def check_norm_type(value: Any) -> float:
    """Validate ``norm_type``: a real p > 0, or inf (also given as the string 'inf')."""
    if isinstance(value, str) and value.lower() in ("inf", "infinity"):
        return math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"norm_type must be a number > 0 or 'inf', got {value!r}.")
    value = float(value)
    if math.isnan(value) or value <= 0:
        raise ValueError(f"norm_type must be a number > 0 or 'inf', got {value!r}. Use 2.0 for the Euclidean norm.")
    return value


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """Validate a string option against a fixed set, suggesting close matches."""
    choices = list(choices)
    if value not in choices:
        hint = suggest(value, choices) if isinstance(value, str) else ""
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}.{hint}")
    return value
