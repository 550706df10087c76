"""Rules on scale: initial weights against the Xavier/He scales, update-to-weight ratios."""

from __future__ import annotations

import numpy as np

from gradguard._finding import Finding
from gradguard._rules import _thresholds as T
from gradguard._rules._common import module_types
from gradguard._rules._evidence import fast_blowup, init_flow, nonfinite_steps
from gradguard._rundata import RunData

RELU_LIKE = {"ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish"}
BOUNDED = {"Sigmoid", "Tanh", "Softsign", "Hardtanh", "Hardsigmoid"}


# calculate_gain per activation family: the Xavier scale times this gain is the right std.
GAINS = {"Sigmoid": 1.0, "Hardsigmoid": 1.0, "Tanh": 5.0 / 3.0, "Softsign": 1.0, "Hardtanh": 1.0}
GAIN_NAME = {"Sigmoid": "sigmoid", "Tanh": "tanh"}


def _init_call(act: str) -> tuple[str, str]:
    """(fix value, the init call) for the activation that follows a layer."""
    if act in RELU_LIKE:
        return "he", "nn.init.kaiming_normal_(layer.weight, nonlinearity='relu')"
    gain = GAIN_NAME.get(act, "linear")
    return "xavier", f"nn.init.xavier_normal_(layer.weight, gain=nn.init.calculate_gain({gain!r}))"


def _off_scale(data: RunData) -> list[tuple]:
    """Layers (from gg.inspect's table) whose weight std is 2x off He (ReLU family) or Xavier x gain."""
    off = []
    for layer in data.meta.get("layers", []):
        act, std = layer.get("activation"), layer.get("weight_std")
        if std is None or act is None:
            continue
        if act in RELU_LIKE:
            target, scheme = layer.get("he_std"), "He"
        elif act in BOUNDED and layer.get("xavier_std"):
            target, scheme = layer["xavier_std"] * GAINS.get(act, 1.0), f"Xavier (gain {GAINS.get(act, 1.0):.3g})"
        else:
            continue
        if not target:
            continue
        ratio = std / target
        if ratio < 1 / T.INIT_SCALE_FACTOR or ratio > T.INIT_SCALE_FACTOR:
            off.append((layer["name"], act, scheme, std, target, ratio))
    return off


def _flow_hurt(data: RunData) -> str | None:
    """What measured at the first step says the flow is hurt: errors across depth, saturation, dead units."""
    from gradguard._rules._common import depth_profile

    profile = depth_profile(data, "error_norm")
    if profile is not None:
        _, names, errors = profile
        if errors[-1] > 0:
            ratio = errors[0] / errors[-1]
            if ratio < T.VANISHING_ERROR_RATIO or ratio > T.EXPLODING_ERROR_RATIO:
                return f"the back-propagated error changes {ratio:.3g}x from {names[-1]!r} back to {names[0]!r}"
    for metric, bound, what in (("saturation", T.SATURATED_FRACTION, "saturated"), ("dead_fraction", T.DEAD_FRACTION, "inactive")):
        latest = data.records.get(metric, [])
        if latest:
            worst = max(latest[0][1].items(), key=lambda kv: kv[1], default=None)
            if worst and worst[1] > bound:
                return f"{worst[1]:.0%} of the units of {worst[0]!r} are {what}"
    return None


def init_scale(data: RunData) -> Finding | None:
    """Weights whose scale hurts the flow, measured (He et al. 2015 for ReLU, Glorot & Bengio 2010
    for tanh and sigmoid): never on an init that the measurements show to be harmless."""
    flow = init_flow(data)
    off = _off_scale(data)
    hurt = _flow_hurt(data) if off else None
    if flow is None and not (off and hurt):
        return None
    kinds = module_types(data)
    relu = bool(RELU_LIKE & kinds) or not (BOUNDED & kinds)
    act = next((a for a in data.meta.get("activation_types", {}).values() if a in RELU_LIKE | BOUNDED), "ReLU" if relu else "Tanh")
    scheme, call = _init_call(act)
    blow = fast_blowup(data)
    if flow is not None:
        where = flow.layers[:1] + flow.layers[-1:]
        message = (f"At step {flow.step} the pre-activations {'grow' if flow.direction == 'growing' else 'shrink'} {flow.per_layer:.3g}x per layer "
                   f"({flow.total:.3g}x from {flow.layers[0]!r} to {flow.layers[-1]!r}): the weights' initial scale "
                   f"{'amplifies' if flow.direction == 'growing' else 'damps'} the signal at every layer.")
        if blow is not None and flow.direction == "growing":
            message += f" The gradient norm then blew up ({blow.growth:.3g}x per step from step {blow.start})."
        evidence = {"per_layer_factor": flow.per_layer, "total_factor": flow.total, "layers": len(flow.layers), "metric": flow.metric,
                    "per_layer_bound": T.INIT_DEPTH_FACTOR ** 0.5, "total_bound": T.INIT_TOTAL_FACTOR}
    else:
        name, act, scheme_name, std, target, ratio = max(off, key=lambda o: abs(np.log(o[5])))
        scheme, call = _init_call(act)
        where = [o[0] for o in off]
        message = (f"{len(off)} layer(s) start off the scale their activation needs and it shows: {hurt}. {name!r} (followed by {act}) has "
                   f"weight std {std:.3g}, {ratio:.2g}x the {scheme_name} scale {target:.3g}.")
        evidence = {"layers": {o[0]: {"activation": o[1], "scheme": o[2], "weight_std": o[3], "target_std": o[4], "ratio": o[5]} for o in off},
                    "factor": T.INIT_SCALE_FACTOR, "measured": hurt}
    severity = "error" if blow is not None or nonfinite_steps(data).any() else "warning"
    return Finding("INIT_SCALE", severity, message, where, evidence, f"Initialise for the activation: {call} for each layer, biases at 0.",
                   flow.step if flow else None, None, {"init": scheme})


def update_ratio(data: RunData) -> Finding | None:
    """Layers whose weights change by more than a tenth of their norm per step."""
    entries = data.records.get("update_ratio", [])[-3:]
    if not entries:
        return None
    modules = set().union(*(values.keys() for _, values in entries))
    medians = {}
    for m in modules:
        finite = [v for _, values in entries if np.isfinite(v := values.get(m, np.nan))]
        medians[m] = float(np.median(finite)) if finite else np.nan  # a diverged run's ratios can all be NaN
    high = {m: v for m, v in medians.items() if np.isfinite(v) and v > T.UPDATE_RATIO_HIGH}
    if not high:
        return None
    worst = max(high, key=high.get)
    return Finding(
        "UPDATE_RATIO",
        "warning",
        f"{len(high)} module(s) change by more than {T.UPDATE_RATIO_HIGH:g} of their weight norm per step; {worst!r} by {high[worst]:.2g}.",
        sorted(high, key=lambda m: -high[m]),
        {"update_ratio": high, "threshold": T.UPDATE_RATIO_HIGH, "healthy_level": 1e-3},
        "Lower the learning rate (or use per-group learning rates for these modules); a ratio near 1e-3 per step is the usual healthy level.",
        entries[-1][0],
    )
