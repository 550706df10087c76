"""Rules on gradient magnitudes over depth and over training: vanishing, exploding, spikes."""

from __future__ import annotations

import math

import numpy as np

from gradguard._finding import Finding
from gradguard._rules import _thresholds as T
from gradguard._rules._common import (
    clip_fix,
    clip_remedy,
    depth_profile,
    lower_first,
    module_types,
    sig,
)
from gradguard._rules._evidence import lr_series, nonfinite_locations, nonfinite_steps
from gradguard._rundata import RunData


def _vanishing_remedy(data: RunData) -> str:
    kinds = module_types(data)
    parts = []
    if {"Sigmoid", "Tanh", "Softsign", "Hardtanh"} & kinds:
        parts.append("replace sigmoid/tanh by ReLU with He init (nn.init.kaiming_normal_(w, nonlinearity='relu')), or keep tanh with Xavier init (nn.init.xavier_normal_)")
    else:
        parts.append("initialise for the activation: He (kaiming_normal_) for ReLU, Xavier for tanh")
    parts.append("add BatchNorm/LayerNorm between layers or residual connections (x + f(x))")
    if {"RNN", "SimpleRNN"} & kinds:
        parts.append("for recurrent layers use nn.LSTM or nn.GRU")
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def _vanishing_fix(data: RunData) -> dict:
    """The config change the vanishing remedy leads with, from the layer and activation types."""
    kinds = module_types(data)
    if {"Sigmoid", "Tanh", "Softsign", "Hardtanh"} & kinds:
        return {"activation": "relu", "init": "he"}
    if any(k.startswith(("BatchNorm", "LayerNorm", "GroupNorm")) for k in kinds):
        return {"residual": True}
    # A plain ReLU stack: He init keeps the signal's scale through depth (He et al. 2015 train
    # 30-layer plain nets with it); PyTorch's default init shrinks it by ~0.8x per layer.
    return {"init": "he"}


def vanishing_depth(data: RunData) -> Finding | None:
    """Back-propagated error shrinking across depth (Glorot & Bengio 2010), or a weight-gradient hint."""
    profile = depth_profile(data, "error_norm")
    if profile is not None:
        step, names, errors = profile
        if errors[-1] <= 0:
            return None
        ratio = errors[0] / errors[-1]
        if not ratio < T.VANISHING_ERROR_RATIO:
            return None  # errors stay healthy: deep-net degradation is not a gradient problem (He et al. 2016)
        per_layer = ratio ** (1.0 / (len(errors) - 1))
        shrink = f"{1 / ratio:.3g}x" if ratio > 0 else "to exactly zero"
        weakest = [names[i] for i in np.argsort(errors)[:3]]
        evidence = {
            "error_norm_first": float(errors[0]),
            "error_norm_last": float(errors[-1]),
            "ratio_first_to_last": float(ratio),
            "per_layer_factor": float(per_layer),
            "layers": len(errors),
            "threshold": T.VANISHING_ERROR_RATIO,
        }
        grads = _weight_grad_profile(data, names)
        if grads is not None:
            evidence["weight_grad_ratio_first_to_last"] = float(grads[0] / grads[-1]) if grads[-1] > 0 else math.nan
        return Finding(
            "VANISHING_GRADIENT",
            "error",
            f"The back-propagated error shrinks {shrink} from {names[-1]!r} back to {names[0]!r} "
            f"({per_layer:.3g}x per layer over {len(errors)} layers): the first layers barely learn.",
            [names[0], *[w for w in weakest if w != names[0]]],
            evidence,
            _vanishing_remedy(data),
            step,
            fix=_vanishing_fix(data),
        )
    # No error norms: weight-gradient norms across modules are only a hint.
    if len(data) == 0 or len(data.module_names) < T.MIN_LAYERS_FOR_DEPTH:
        return None
    order = [n for n in data.meta.get("forward_order", []) if n in data.module_names] or data.module_names
    row = data.grad_norms[-1]
    values = np.array([row[data.module_names.index(n)] for n in order])
    ok = np.isfinite(values) & (values > 0)
    if ok.sum() < T.MIN_LAYERS_FOR_DEPTH:
        return None
    values, names = values[ok], [n for n, k in zip(order, ok) if k]
    ratio = values[0] / values[-1]
    if not ratio < T.WEIGHT_GRAD_RATIO_HINT:
        return None
    return Finding(
        "VANISHING_GRADIENT",
        "info",
        f"Weight-gradient norms fall {1 / ratio:.3g}x from {names[-1]!r} to {names[0]!r}. Weight gradients alone can mislead "
        "(Glorot & Bengio 2010); measure the back-propagated errors with probes='business' to confirm.",
        [names[0]],
        {"weight_grad_ratio_first_to_last": float(ratio), "threshold": T.WEIGHT_GRAD_RATIO_HINT},
        _vanishing_remedy(data),
        int(data.steps[-1]),
        fix=_vanishing_fix(data),
    )


def _weight_grad_profile(data: RunData, names: list[str]) -> np.ndarray | None:
    if not len(data) or not all(n in data.module_names for n in (names[0], names[-1])):
        return None
    row = data.grad_norms[-1]
    return np.array([row[data.module_names.index(names[0])], row[data.module_names.index(names[-1])]])


def vanishing_plateau(data: RunData) -> Finding | None:
    """Loss not improving while the input-side layer has all but stopped moving."""
    loss = data.scalars.get("loss", np.zeros(0))
    finite = loss[np.isfinite(loss)]
    if len(finite) < T.MIN_STEPS_FOR_TRENDS:
        return None
    quarter = len(finite) // 4
    start, end = float(np.median(finite[-2 * quarter : -quarter])), float(np.median(finite[-quarter:]))
    if start <= 0 or (start - end) / start > T.PLATEAU_RELATIVE_IMPROVEMENT:
        return None
    order = [n for n in data.meta.get("forward_order", []) if n in data.module_names] or data.module_names
    if not order:
        return None
    first = order[0]
    ratios = data.series("update_ratio", first)
    ratios = ratios[np.isfinite(ratios)]
    if len(ratios) < 2:
        return None
    recent = float(np.median(ratios[-max(2, len(ratios) // 2) :]))
    if not recent < T.TINY_UPDATE_RATIO:
        return None
    return Finding(
        "VANISHING_GRADIENT",
        "warning",
        f"The loss has stalled (median {start:.4g} -> {end:.4g} over the last {2 * quarter} steps) while {first!r} moves "
        f"{recent:.2g} of its norm per step: too little gradient reaches the first layer.",
        [first],
        {"loss_start": start, "loss_end": end, "update_ratio_first_layer": recent, "threshold": T.TINY_UPDATE_RATIO,
         "plateau_threshold": T.PLATEAU_RELATIVE_IMPROVEMENT},
        _vanishing_remedy(data),
        int(data.steps[-1]),
        fix=_vanishing_fix(data),
    )


def exploding(data: RunData) -> Finding | None:
    """Errors growing toward the input, or the total norm growing by orders of magnitude."""
    profile = depth_profile(data, "error_norm")
    if profile is not None:
        step, names, errors = profile
        ratio = errors[0] / errors[-1] if errors[-1] > 0 else math.inf
        if ratio > T.EXPLODING_ERROR_RATIO:
            return Finding(
                "EXPLODING_GRADIENT",
                "error",
                f"The back-propagated error grows {ratio:.3g}x from {names[-1]!r} back to {names[0]!r}.",
                [names[0]],
                {"ratio_first_to_last": float(ratio), "layers": len(errors), "threshold": T.EXPLODING_ERROR_RATIO},
                "Lower the weight scale (Xavier/He init for the activation), add normalisation layers, and "
                + lower_first(clip_remedy(data)),
                step,
                fix={"init": "xavier" if {"Sigmoid", "Tanh"} & module_types(data) else "he"},
            )
    norms = data.finite_norms()
    if len(norms) < T.MIN_STEPS_FOR_TRENDS:
        return None
    tenth = max(2, len(norms) // 10)
    early, late = float(np.median(norms[:tenth])), float(np.median(norms[-tenth:]))
    if early <= 0 or late / early <= T.EXPLODING_GROWTH:
        return None
    return Finding(
        "EXPLODING_GRADIENT",
        "error",
        f"The gradient norm grew {late / early:.3g}x over training (median {early:.3g} in the first tenth of steps, {late:.3g} in the last).",
        _largest_modules(data),
        {"median_norm_early": early, "median_norm_late": late, "growth": late / early, "threshold": T.EXPLODING_GROWTH},
        "Lower the learning rate (2-10x) and " + lower_first(clip_remedy(data)),
        int(data.steps[-1]),
        fix=clip_fix(data),
    )


def _largest_modules(data: RunData, k: int = 3) -> list[str]:
    if not len(data) or not data.module_names:
        return []
    row = np.nan_to_num(data.grad_norms[-1], nan=-1.0)
    return [data.module_names[i] for i in np.argsort(-row)[:k]]


TRIGGERS = {"grad_norm": "gradient norm", "loss": "loss"}


def spikes(data: RunData) -> Finding | None:
    """Spike forensics events: a jump of the gradient norm or loss, with the first module to deviate."""
    # Non-finite steps also dump the forensic buffer, but they are the NONFINITE rule's to report.
    events = [e for e in data.events if e.get("kind") == "spike" and e.get("trigger") != "nonfinite"]
    if not events:
        return None
    first = events[0]
    mover = first.get("first_module")
    where = [mover] if mover else []
    return Finding(
        "GRADIENT_SPIKE",
        "warning",
        f"{len(events)} spike(s) of the {TRIGGERS.get(first.get('trigger'), 'gradient norm')}; the first at step {first.get('step')} "
        f"(z = {first.get('z', math.nan):.3g})" + (f", where {mover!r} deviated first (step {first.get('first_step')})." if mover else "."),
        where,
        {"spikes": len(events), "first_step": first.get("step"), "z": first.get("z"), "first_module": mover,
         "first_module_step": first.get("first_step"), "first_module_z": first.get("first_z"), "z_threshold": first.get("z_threshold")},
        "Spikes that precede divergence call for an adaptive clipper (gg.ZClip() clips norms that are outliers against "
        "their recent history) or a lower learning rate; if one module always moves first, check its initialisation and "
        "normalisation.",
        first.get("step"),
        fix={"clip": "zclip"},
    )


def loss_oscillation(data: RunData) -> Finding | None:
    """The loss climbed back above its best and bounces: the steps overshoot."""
    loss = data.scalars.get("loss", np.zeros(0))
    loss = loss[np.isfinite(loss)]
    window = T.OSCILLATION_WINDOW
    if len(loss) < window + T.MIN_STEPS_FOR_TRENDS:
        return None
    smooth = np.convolve(loss[:-window], np.ones(10) / 10, mode="valid")
    best = float(smooth.min()) if len(smooth) else math.nan
    recent = loss[-window:]
    median = float(np.median(recent))
    low, high = float(np.percentile(recent, 5)), float(np.percentile(recent, 95))
    if not (best > 0 and low > 0):
        return None
    regression, spread = median / best, high / low
    if regression < T.OSCILLATION_REGRESSION or spread < T.OSCILLATION_SPREAD:
        return None
    return Finding(
        "LOSS_OSCILLATION",
        "warning",
        f"The loss climbed back to {regression:.2g}x the best level it had reached ({median:.3g} vs {best:.3g}) and bounces "
        f"by {spread:.2g}x over the last {window} steps: the steps overshoot.",
        [],
        {"median_recent": median, "best_earlier": best, "regression": regression, "spread_p95_over_p5": spread,
         "regression_threshold": T.OSCILLATION_REGRESSION, "spread_threshold": T.OSCILLATION_SPREAD, "window": window},
        "Lower the learning rate 2-10x or add a warm-up and decay schedule; " + lower_first(clip_remedy(data)),
        int(data.steps[-1]) if len(data) else None,
        fix=_lower_lr(data, 3.0),
    )


def _lower_lr(data: RunData, factor: float) -> dict:
    lr = lr_series(data)
    if lr is None or not np.isfinite(lr[-1]) or lr[-1] <= 0:
        return {}
    return {"lr": sig(float(lr[-1]) / factor, 1)}


def nonfinite(data: RunData) -> Finding | None:
    """NaN/Inf gradients: how many steps, whether one-off or persistent, and where it starts."""
    bad = nonfinite_steps(data)  # a GradScaler's calibration skips are not counted (``scaler_backoff``)
    located = nonfinite_locations(data)
    if not bad.any() and not located:
        return None
    count, total = int(bad.sum()), max(1, len(bad))
    first_step = int(data.steps[np.argmax(bad)]) if bad.any() else located[0].get("step")
    i = int(np.argmax(bad)) if bad.any() else 0
    after = bad[i + 1 :]
    one_off = bad.any() and len(after) > 0 and not after[0]
    persistent = bad.any() and len(after) >= 2 and bool(after.all())
    names: list[str] = []
    for e in located:
        names += [n for n in e.get("where", []) if n not in names]
    if not names:  # the parameters, when they are a telling subset (all of them says nothing)
        params: list[str] = []
        for e in data.events:
            if e.get("kind") == "skip":
                params += [n for n in e.get("parameters", []) if n not in params]
        n_params = len(data.meta.get("module_names", data.module_names))
        names = params[:4] if params and len(params) < max(2, n_params) else []
    skipped = bool(data.scalars.get("skipped", np.zeros(0)).astype(bool).any())
    verb = "were skipped" if skipped else "went through (nonfinite='ignore')"
    fraction = count / total
    message = f"{count} of {total} steps ({fraction:.1%}) had NaN or Inf gradients and {verb}; the first at step {first_step}"
    if one_off:
        message += ", and the next step was clean: one-off, likely the batch"
    elif persistent:
        message += ", and every step after it too: a persistent fault"
    fix: dict = {}
    loc = located[0] if located else None
    if loc is not None:
        message += f". First source located: {loc.get('message', '')}"
        if loc.get("produced") and loc.get("where") and loc["where"][0] != "(loss)":
            fix = {"eps": 1e-6}
    else:
        message += "."
    remedy = loc.get("remedy") if loc else (
        "Find the first module that makes the value: gg.locate_nonfinite(model, closure). Frequent culprits: a learning rate too "
        "high, log/sqrt/division of non-positive values, fp16 overflow (use bf16 or GradScaler)."
    )
    if one_off and not fix:
        remedy = ("A single bad step with clean steps after it points at that step's batch: check it for NaN/Inf or extreme values. "
                  + ("Guard skipped the step, so the weights are unharmed." if skipped else "Let Guard skip such steps: nonfinite='skip'."))
        fix = {} if skipped else {"nonfinite": "skip"}
    return Finding(
        "NONFINITE",
        "error" if fraction > T.NONFINITE_ERROR_FRACTION or located or persistent or not skipped else "warning",
        message,
        names,
        {"nonfinite_steps": count, "skipped_steps": int(data.scalars.get("skipped", np.zeros(0)).astype(bool).sum()), "steps": total, "fraction": fraction, "first_step": first_step, "one_off": bool(one_off),
         "persistent": bool(persistent), "threshold_fraction": T.NONFINITE_ERROR_FRACTION,
         "location": loc and {k: loc.get(k) for k in ("where", "direction", "produced", "value")}},
        remedy,
        first_step,
        fix=fix,
    )
