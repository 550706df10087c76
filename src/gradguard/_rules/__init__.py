"""Diagnosis rules: small pure functions ``rule(data: RunData) -> Finding | None``, in a registry.

A rule reads numbers, compares them with named thresholds (``_thresholds``, each with its reason)
and returns a Finding that carries the numbers, the thresholds, a concrete remedy and its machine
form (``Finding.fix``). Rules never touch the model or the data they are given.

``diagnose`` runs them all, then links symptoms to the cause that explains them
(``Finding.caused_by``; ``CAUSES_OF`` below says which cause can explain which symptom), gives each
linked symptom its root cause's remedy and fix (``point_at_causes``) and puts causes first
(``causal_order``). Every consumer (``guard.findings()``, ``gg.inspect``, the report,
the CLI) shows that order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from gradguard._finding import SEVERITIES, Finding, causal_order
from gradguard._rules import (
    _activations,
    _causes,
    _clipping,
    _gradients,
    _lr,
    _recurrent,
    _scale,
)
from gradguard._rules._common import lower_first
from gradguard._rundata import RunData

Rule = Callable[[RunData], "Finding | None"]

RULES: dict[str, Rule] = {
    "nonfinite_input": _causes.nonfinite_input,
    "scaler_collapse": _causes.scaler_collapse,
    "fp16_overflow": _causes.fp16_overflow,
    "loss_not_averaged": _causes.loss_not_averaged,
    "lr_too_high": _lr.lr_too_high,
    "init_scale": _scale.init_scale,
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
    "update_ratio": _scale.update_ratio,
}

# symptom code -> the causes that can explain it, most fundamental first. The first one present
# (at warning or above) becomes the symptom's ``caused_by``.
_STEP_TOO_LARGE = ("LOSS_NOT_AVERAGED", "LR_TOO_HIGH")
_NUMERIC = ("NONFINITE_INPUT", "SCALER_COLLAPSE", "FP16_OVERFLOW")
CAUSES_OF: dict[str, tuple[str, ...]] = {
    "NONFINITE": _NUMERIC + _STEP_TOO_LARGE + ("INIT_SCALE", "EXPLODING_GRADIENT"),
    "EXPLODING_GRADIENT": _STEP_TOO_LARGE + ("INIT_SCALE",),
    "VANISHING_GRADIENT": ("LR_TOO_HIGH", "INIT_SCALE", "DEAD_UNITS", "SATURATION"),
    "SATURATION": ("INIT_SCALE",),
    "DEAD_UNITS": _STEP_TOO_LARGE + ("INIT_SCALE",),
    "LR_TOO_HIGH": ("LOSS_NOT_AVERAGED",),
    "FP16_OVERFLOW": ("NONFINITE_INPUT",),
    "UPDATE_RATIO": _STEP_TOO_LARGE,
    "GRADIENT_SPIKE": _NUMERIC + _STEP_TOO_LARGE + ("INIT_SCALE", "EXPLODING_GRADIENT"),
    "LOSS_OSCILLATION": _STEP_TOO_LARGE + ("EXPLODING_GRADIENT",),
    "CLIPPING_ALWAYS": _STEP_TOO_LARGE + ("INIT_SCALE", "EXPLODING_GRADIENT"),
    "CLIP_THRESHOLD": _STEP_TOO_LARGE + ("EXPLODING_GRADIENT",),
}


def _explains(cause: Finding, symptom: Finding) -> bool:
    """Conditions on a link beyond the codes: dead units explain vanishing errors only when (nearly)
    every unit of a layer is dead; half-dead layers are as often a symptom of a signal that
    already vanished (a bias-dominated pre-activation is negative for half the units)."""
    if cause.code == "DEAD_UNITS" and symptom.code == "VANISHING_GRADIENT":
        return max(cause.evidence.get("dead_fraction", {}).values(), default=0.0) >= DEAD_EXPLAINS
    return True


# The dead fraction above which dead units explain vanishing errors (see ``_explains``).
DEAD_EXPLAINS = 0.9


def link_causes(findings: list[Finding]) -> list[Finding]:
    """Set ``caused_by`` on each symptom a present cause explains, and lift each cause to the
    severity of the worst symptom it explains (the cause of an error is an error)."""
    urgent = {f.code for f in findings if SEVERITIES.index(f.severity) >= 1}
    linked = []
    for f in findings:
        if f.caused_by is None:
            cause = next((c.code for code in CAUSES_OF.get(f.code, ()) for c in findings
                          if c.code == code and c.code in urgent and c.code != f.code and _explains(c, f)), None)
            if cause is not None:
                f = replace(f, caused_by=cause)
        linked.append(f)
    # A cause explaining a chain (LOSS_NOT_AVERAGED -> LR_TOO_HIGH -> NONFINITE) takes the worst severity below it.
    worst: dict[str, int] = {}
    for f in linked:
        cause = f.caused_by
        seen = set()
        while cause is not None and cause not in seen:
            seen.add(cause)
            worst[cause] = max(worst.get(cause, 0), SEVERITIES.index(f.severity))
            cause = next((g.caused_by for g in linked if g.code == cause), None)
    lifted = [replace(f, severity=SEVERITIES[worst[f.code]]) if worst.get(f.code, -1) > SEVERITIES.index(f.severity) else f for f in linked]
    return point_at_causes(lifted)


def point_at_causes(findings: list[Finding]) -> list[Finding]:
    """Give each symptom with a present cause the remedy and fix of its root cause.

    A symptom's own remedy treats what it saw (a clip threshold computed from norms that are
    exploding because the learning rate is too high, say); once its cause is known, the remedy
    that helps is the cause's. Chains are followed to the root (NONFINITE -> LR_TOO_HIGH ->
    LOSS_NOT_AVERAGED: the loss reduction). A root with no remedy leaves the symptom's own.
    """
    by_code: dict[str, Finding] = {}
    for f in findings:
        by_code.setdefault(f.code, f)
    out = []
    for f in findings:
        root, seen = f, {f.code}
        while root.caused_by in by_code and root.caused_by not in seen:
            root = by_code[root.caused_by]
            seen.add(root.code)
        if root is not f and (root.remedy or root.fix):
            f = replace(f, remedy=f"This follows from {root.code}; fix that first: {lower_first(root.remedy)}" if root.remedy else f.remedy,
                        fix=dict(root.fix))
        out.append(f)
    return out


def diagnose(data: RunData, rules: dict[str, Rule] | None = None) -> list[Finding]:
    """Run every rule; root causes first, each followed by the symptoms it explains."""
    found = []
    for rule in (rules or RULES).values():
        finding = rule(data)
        if finding is not None:
            found.append(finding)
    return causal_order(link_causes(found))


__all__ = ["CAUSES_OF", "RULES", "diagnose", "link_causes", "point_at_causes"]
