"""Rules on recurrent layers: ||dL/dh_t|| across time, and Pascanu et al.'s spectral condition.

The measured per-time-step norms decide; the spectrum only explains. A saturated tanh RNN whose
recurrent matrix has spectral radius above 1 can still vanish (papers.md, 10.2), so a radius
alone never produces a vanishing or exploding verdict.
"""

from __future__ import annotations

import numpy as np

from gradguard._finding import Finding
from gradguard._rules import _thresholds as T
from gradguard._rundata import RunData

RECURRENT_REMEDY_VANISH = (
    "Use nn.LSTM or nn.GRU; or keep the simple RNN with an orthogonal or identity recurrent init "
    "(IRNN, Le et al. 2015) and Pascanu's norm-preserving regulariser gg.rnn.NormPreservingPenalty "
    "together with gradient clipping."
)
RECURRENT_REMEDY_EXPLODE = (
    "Clip the global gradient norm (gg.ClipNorm; Pascanu et al. 2013), lower the learning rate, and scale the "
    "recurrent matrix to a largest singular value near 1 (orthogonal init)."
)


def _latest_vectors(data: RunData) -> dict[str, tuple[int, np.ndarray]]:
    latest: dict[str, tuple[int, np.ndarray]] = {}
    for step, module, values in data.vectors.get("timestep_grad_norm", []):
        if module not in latest or step >= latest[module][0]:
            latest[module] = (step, values)
    return latest


def recurrent_timesteps(data: RunData) -> Finding | None:
    """Batch-mean ||dL/dh_t|| at the first time step against the last (meaningful for a loss at the end)."""
    worst = None
    for module, (step, v) in _latest_vectors(data).items():
        v = np.asarray(v, dtype=float)
        if len(v) < 3 or not np.isfinite(v).all() or v[-1] <= 0:
            continue
        ratio = float(v[0] / v[-1])
        if worst is None or abs(np.log10(max(ratio, 1e-300))) > abs(np.log10(max(worst[2], 1e-300))):
            worst = (module, step, ratio, v)
    if worst is None:
        return None
    module, step, ratio, v = worst
    steps = len(v)
    factor = _per_step_factor(v)
    evidence = {"ratio_first_to_last": ratio, "time_steps": steps, "per_step_factor": factor, "norm_first": float(v[0]), "norm_last": float(v[-1])}
    spectral = data.meta.get("recurrent", {}).get(module)
    if spectral:
        evidence["spectrum"] = spectral
    if ratio < T.VANISHING_TIME_RATIO:
        reach = int(np.sum(v >= v[-1] * T.VANISHING_TIME_RATIO))
        evidence.update(threshold=T.VANISHING_TIME_RATIO, steps_within_threshold=reach)
        return Finding(
            "VANISHING_GRADIENT",
            "error",
            f"In {module!r} the gradient reaching the first of {steps} time steps is {_times(ratio)} the one at the last "
            f"({factor:.3g}x per step): only the last {reach} steps get more than 1/1000 of it, so long-range "
            "dependencies cannot be learned.",
            [module],
            evidence,
            RECURRENT_REMEDY_VANISH,
            step,
            fix={"cell": "lstm"},
        )
    if ratio > T.EXPLODING_TIME_RATIO:
        evidence["threshold"] = T.EXPLODING_TIME_RATIO
        return Finding(
            "EXPLODING_GRADIENT",
            "error",
            f"In {module!r} the gradient grows {ratio:.3g}x from the last of {steps} time steps back to the first ({factor:.3g}x per step).",
            [module],
            evidence,
            RECURRENT_REMEDY_EXPLODE,
            step,
            fix={"init": "orthogonal", "clip": 1.0},
        )
    return None


def _per_step_factor(v: np.ndarray) -> float:
    """Geometric mean decay per time step, from the logs of the norms that did not underflow.

    ``(v[0] / v[-1]) ** (1 / (T - 1))`` reads 0 when ``v[0]`` underflowed to 0 although the decay
    was, say, 0.6 per step; a least-squares slope of log v over the positive entries does not.
    """
    t = np.flatnonzero(v > 0)
    if len(t) < 2:
        return 0.0
    slope = np.polyfit(t.astype(float), np.log(v[t]), 1)[0]
    return float(np.exp(-slope))  # per step from the last toward the first


def _times(ratio: float) -> str:
    return f"{ratio:.3g}x" if ratio > 0 else "0x (it underflowed)"


def recurrent_spectrum(data: RunData) -> Finding | None:
    """Pascanu's condition on the recurrent matrix, reported when no per-time-step norms were measured."""
    spectra = data.meta.get("recurrent", {})
    if not spectra or _latest_vectors(data):
        return None
    module, info = next(iter(spectra.items()))
    sigma, gamma = info.get("sigma_max"), info.get("gamma")
    if sigma is None or not gamma:
        return None
    bound = 1.0 / gamma
    if sigma < bound:
        verdict = f"below 1/gamma = {bound:g}: Pascanu et al.'s sufficient condition for vanishing holds, long-range gradients must shrink"
    else:
        verdict = f"above 1/gamma = {bound:g}: exploding is possible (the condition is necessary, not sufficient); saturation can still make gradients vanish"
    return Finding(
        "RECURRENT_SPECTRUM",
        "info",
        f"{module!r}: largest singular value of the recurrent matrix {sigma:.3g}, {verdict}. Measure ||dL/dh_t|| "
        "(probes='full' or gg.rnn.timestep_grad_norms) to see what actually happens.",
        list(spectra),
        {"spectra": spectra},
        RECURRENT_REMEDY_VANISH if sigma < bound else RECURRENT_REMEDY_EXPLODE,
        None,
    )
