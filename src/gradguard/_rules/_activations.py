"""Rules on activations: saturated bounded units, inactive ReLU units."""

from __future__ import annotations

import numpy as np

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
        fix=_saturation_fix(data, modules),
    )


# Pre-activations this wide put a tanh unit in its flat tails most of the time (|x| > 1.8 has
# tanh' < 0.1): the scale of the weights feeding it is what saturates it.
WIDE_PREACT_STD = 1.5


def _saturation_fix(data: RunData, modules: list[str]) -> dict:
    latest = data.latest("preact_std")
    if latest is not None and max((latest[1].get(m, 0.0) for m in modules), default=0.0) > WIDE_PREACT_STD:
        return {"init": "xavier"}
    return {"activation": "relu", "init": "he"}


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
        fix=_dead_fix(data, modules),
    )


def _dead_fix(data: RunData, modules: list[str]) -> dict:
    """Dead from the start with pre-activations centred below zero: the biases/init; else keep a gradient below 0."""
    first = data.records.get("preact_mean", [])
    stds = data.records.get("preact_std", [])
    if first and stds:
        mean, std = first[0][1], stds[0][1]
        if any(mean.get(m, 0.0) < -std.get(m, np.inf) for m in modules):
            return {"init": "he"}
    return {"activation": "leaky_relu"}
