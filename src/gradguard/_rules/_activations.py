"""Rules on activations: saturated bounded units, inactive ReLU units."""

from __future__ import annotations

from gradguard._finding import Finding
from gradguard._rules import _thresholds as T
from gradguard._rundata import RunData


def _over(data: RunData, metric: str, bound: float):
    latest = data.latest(metric)
    if latest is None:
        return None
    step, values = latest
    bad = {m: v for m, v in values.items() if v > bound}
    if not bad:
        return None
    ordered = sorted(bad, key=lambda m: -bad[m])
    return step, ordered, bad


def saturation(data: RunData) -> Finding | None:
    """Bounded activations with most units where the derivative is < 10% of its maximum."""
    found = _over(data, "saturation", T.SATURATED_FRACTION)
    if found is None:
        return None
    step, modules, values = found
    kinds = data.meta.get("activation_types", {})
    worst = modules[0]
    return Finding(
        "SATURATION",
        "warning",
        f"{len(modules)} activation layer(s) are saturated: in {worst!r} ({kinds.get(worst, 'activation')}) "
        f"{values[worst]:.0%} of units sit where the derivative is below a tenth of its maximum.",
        modules,
        {"saturation": {m: values[m] for m in modules}, "threshold": T.SATURATED_FRACTION, "step": step},
        "Saturated units pass back almost no error (Glorot & Bengio 2010): scale the pre-activations down (Xavier "
        "init for tanh/sigmoid, normalised inputs), add BatchNorm/LayerNorm before the activation, or use ReLU with He init.",
        step,
    )


def dead_units(data: RunData) -> Finding | None:
    """ReLU-family layers where most units were inactive on the whole batch."""
    found = _over(data, "dead_fraction", T.DEAD_FRACTION)
    if found is None:
        return None
    step, modules, values = found
    worst = modules[0]
    return Finding(
        "DEAD_UNITS",
        "warning",
        f"{len(modules)} ReLU-family layer(s) have mostly inactive units: {values[worst]:.0%} of the units of "
        f"{worst!r} were <= 0 on every example of the batch (no gradient flows through them).",
        modules,
        {"dead_fraction": {m: values[m] for m in modules}, "threshold": T.DEAD_FRACTION, "step": step},
        "Use He init (nn.init.kaiming_normal_(w, nonlinearity='relu')) with zero or small positive biases, lower the "
        "learning rate (large steps kill units), or switch to LeakyReLU/GELU, which keep a gradient below zero.",
        step,
    )
