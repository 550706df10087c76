"""Diagnosis rules: small pure functions ``rule(data: RunData) -> Finding | None``, in a registry.

A rule reads numbers, compares them with named thresholds (``_thresholds``, each with its reason)
and returns a Finding that carries the numbers, the thresholds and a concrete remedy. Rules never
touch the model or the data they are given.
"""

from __future__ import annotations

from collections.abc import Callable

from gradguard._finding import Finding, by_severity
from gradguard._rules import _activations, _clipping, _gradients, _recurrent, _scale
from gradguard._rundata import RunData

Rule = Callable[[RunData], "Finding | None"]

RULES: dict[str, Rule] = {
    "vanishing_depth": _gradients.vanishing_depth,
    "vanishing_plateau": _gradients.vanishing_plateau,
    "exploding": _gradients.exploding,
    "spikes": _gradients.spikes,
    "loss_oscillation": _gradients.loss_oscillation,
    "nonfinite": _gradients.nonfinite,
    "saturation": _activations.saturation,
    "dead_units": _activations.dead_units,
    "clipping_activity": _clipping.clipping_activity,
    "clip_threshold": _clipping.clip_threshold,
    "recurrent_timesteps": _recurrent.recurrent_timesteps,
    "recurrent_spectrum": _recurrent.recurrent_spectrum,
    "init_scale": _scale.init_scale,
    "update_ratio": _scale.update_ratio,
}


def diagnose(data: RunData, rules: dict[str, Rule] | None = None) -> list[Finding]:
    """Run every rule; findings most urgent first."""
    found = []
    for rule in (rules or RULES).values():
        finding = rule(data)
        if finding is not None:
            found.append(finding)
    return by_severity(found)


__all__ = ["RULES", "diagnose"]
