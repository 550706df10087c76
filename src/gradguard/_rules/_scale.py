"""Rules on scale: initial weights against the Xavier/He scales, update-to-weight ratios."""

from __future__ import annotations

import numpy as np

from gradguard._finding import Finding
from gradguard._rules import _thresholds as T
from gradguard._rundata import RunData

RELU_LIKE = {"ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish"}
BOUNDED = {"Sigmoid", "Tanh", "Softsign", "Hardtanh", "Hardsigmoid"}


def init_scale(data: RunData) -> Finding | None:
    """Weights far from the scale their activation needs (He et al. 2015 for ReLU, Glorot & Bengio 2010 for tanh)."""
    off = []
    for layer in data.meta.get("layers", []):
        act, std = layer.get("activation"), layer.get("weight_std")
        if std is None or act is None:
            continue
        if act in RELU_LIKE:
            target, scheme = layer.get("he_std"), "He"
        elif act in BOUNDED:
            target, scheme = layer.get("xavier_std"), "Xavier"
        else:
            continue
        if not target:
            continue
        ratio = std / target
        if ratio < 1 / T.INIT_SCALE_FACTOR or ratio > T.INIT_SCALE_FACTOR:
            off.append((layer["name"], act, scheme, std, target, ratio))
    if not off:
        return None
    name, act, scheme, std, target, ratio = max(off, key=lambda o: abs(np.log(o[5])))
    init = "nn.init.kaiming_normal_(layer.weight, nonlinearity='relu')" if scheme == "He" else "nn.init.xavier_normal_(layer.weight, gain=nn.init.calculate_gain('tanh'))"
    return Finding(
        "INIT_SCALE",
        "warning" if len(off) > 2 else "info",
        f"{len(off)} layer(s) start off the scale their activation needs: {name!r} (followed by {act}) has weight std "
        f"{std:.3g}, {ratio:.2g}x the {scheme} scale {target:.3g}.",
        [o[0] for o in off],
        {"layers": {o[0]: {"activation": o[1], "scheme": o[2], "weight_std": o[3], "target_std": o[4], "ratio": o[5]} for o in off},
         "factor": T.INIT_SCALE_FACTOR},
        f"Initialise for the activation: {init}.",
        None,
    )


def update_ratio(data: RunData) -> Finding | None:
    """Layers whose weights change by more than a tenth of their norm per step."""
    entries = data.records.get("update_ratio", [])[-3:]
    if not entries:
        return None
    modules = set().union(*(values.keys() for _, values in entries))
    medians = {m: float(np.nanmedian([values.get(m, np.nan) for _, values in entries])) for m in modules}
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
