"""Evidence several rules read: non-finite steps, the learning rate, a fast blow-up, the loss trajectory.

Each helper returns plain numbers from ``RunData`` (or None when the run does not hold what it
needs); the rules decide what the numbers mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gradguard._rules import _thresholds as T
from gradguard._rundata import RunData

ADAM_FAMILY = ("Adam", "AdamW", "NAdam", "RAdam", "Adamax", "Adafactor", "Lion", "AdamWScheduleFree", "FusedAdam")


def raw_nonfinite_steps(data: RunData) -> np.ndarray:
    """Steps whose gradient norm was NaN/Inf, skipped or not (``nonfinite="ignore"`` steps anyway)."""
    norms = data.scalars.get("norm_before", np.zeros(len(data)))
    skipped = data.scalars.get("skipped", np.zeros(len(norms))).astype(bool)
    return skipped | ~np.isfinite(norms)


def nonfinite_steps(data: RunData) -> np.ndarray:
    """The non-finite steps that signal a problem: ``raw_nonfinite_steps`` less a GradScaler's
    normal calibration (``scaler_backoff``)."""
    return raw_nonfinite_steps(data) & ~scaler_backoff(data)


def scaler_in_use(data: RunData) -> bool:
    return bool((data.meta.get("inputs") or {}).get("scaler") or data.meta.get("scaler"))


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start index, length) of each run of consecutive True values."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [(int(a), int(b - a)) for a, b in zip(starts, ends)]


def scaler_backoff(data: RunData) -> np.ndarray:
    """The non-finite steps a GradScaler makes by design, as a mask (all False when there are none).

    Loss scaling (Micikevicius et al. 2018, "Mixed Precision Training", section 3.2) skips the
    update of a step whose scaled gradients overflow float16. ``torch.amp.GradScaler`` makes the
    scale dynamic: it starts from a guess (``init_scale``, 2**16 by default), halves it on each
    overflow (``backoff_factor``) and doubles it after ``growth_interval`` clean steps. A scale
    set too high overflows for its first few steps, then fits; later each growth may overflow
    once more. That is calibration, not a fault.

    A non-finite step counts as calibration only when nothing on it points at a real fault: its
    loss is finite (the scale multiplies the backward pass only, so it never makes the loss
    non-finite), its batch held no NaN/Inf and no module made NaN/Inf in its forward pass. Those
    steps must then look like a scale finding its level: an opening run of skips at most
    ``SCALER_CALIBRATION_SKIPS`` long and followed by a clean step, and later skips short (at
    most ``SCALER_BACKOFF_RUN`` in a row) and rare (at most ``NONFINITE_ERROR_FRACTION`` of the
    steps). Otherwise no step is exempt (a collapsing scaler, a fault in the backward pass), and
    the faulty steps are never exempt (NaN from the model or the data).
    """
    bad = raw_nonfinite_steps(data)
    none = np.zeros(len(bad), dtype=bool)
    if not bad.any() or not scaler_in_use(data):
        return none
    loss = data.scalars.get("loss", np.full(len(bad), np.nan))
    faulty = ~np.isfinite(loss) if np.isfinite(loss).any() else none.copy()  # no loss recorded: nothing to read
    for e in data.events:
        if e.get("kind") == "nonfinite_input" or (e.get("kind") == "nonfinite_location" and e.get("direction") == "forward"):
            faulty |= data.steps == e.get("step")
    calibrating = bad & ~faulty
    if not calibrating.any():
        return none
    runs = _runs(calibrating)
    first_start, first_length = runs[0]
    opening = first_start == 0
    if opening and (first_length > T.SCALER_CALIBRATION_SKIPS or first_length == len(bad) or bad[first_length]):
        return none
    later = runs[1:] if opening else runs
    if any(length > T.SCALER_BACKOFF_RUN for _, length in later):
        return none
    if sum(length for _, length in later) > T.NONFINITE_ERROR_FRACTION * len(bad):
        return none
    return calibrating


def nonfinite_locations(data: RunData) -> list[dict]:
    """The non-finite locator's events, but those on a step of ``scaler_backoff`` (a scaled
    gradient overflowing while the scale calibrates is no fault to locate)."""
    backoff = set(data.steps[scaler_backoff(data)].tolist())
    return [e for e in data.events if e.get("kind") == "nonfinite_location" and e.get("step") not in backoff]


def lr_series(data: RunData) -> np.ndarray | None:
    """The learning rate of the first param group at each step, or None when it was not recorded."""
    lr = data.scalars.get("lr")
    if lr is None or not len(lr) or not np.isfinite(lr).any():
        return None
    return np.asarray(lr, dtype=float)


def optimizer_name(data: RunData) -> str | None:
    name = data.meta.get("optimizer")
    if isinstance(name, dict):
        name = name.get("name")
    return name if isinstance(name, str) else None


def adam_family(data: RunData) -> bool:
    name = optimizer_name(data) or ""
    return any(name == a or name.startswith(a) for a in ADAM_FAMILY)


@dataclass(frozen=True)
class Blowup:
    """The norm growing by ``T.BLOWUP_GROWTH`` or more per step, found at ``step``."""

    start: int  # the last step before the growth
    step: int  # where it is diagnosed: the second 10x step, or the first non-finite one after one
    growth: float  # geometric mean of the per-step growth factors
    first_growth: float  # the factor of the first 10x step: the least distorted by the divergence
    norms: list[float]
    nonfinite_step: int | None


def fast_blowup(data: RunData) -> Blowup | None:
    """A norm that grows at least 10x per step over two steps, or a 10x step right before the first
    non-finite one (issue: diagnosed on the spot, not after 40 finite steps)."""
    keep = ~scaler_backoff(data)  # a skipped calibration step is no growth: read the steps around it
    steps, norms = data.steps[keep], data.scalars.get("norm_before", np.zeros(len(data)))[keep]
    if len(norms) < 2:
        return None
    bad = raw_nonfinite_steps(data)[keep]
    run: list[float] = []  # growth factors of the current run of 10x steps
    for i in range(1, len(norms)):
        prev, cur = norms[i - 1], norms[i]
        if bad[i - 1]:
            return None  # the first non-finite step came without a blow-up before it
        if bad[i]:
            if run:
                return _blowup(steps, norms, i - len(run) - 1, i, run, int(steps[i]))
            return None
        factor = cur / prev if prev > 0 else math.inf
        if factor >= T.BLOWUP_GROWTH:
            run.append(float(factor))
            if len(run) >= T.BLOWUP_STEPS:
                first_bad = int(steps[np.argmax(bad)]) if bad.any() else None
                return _blowup(steps, norms, i - len(run), i, run, first_bad)
        else:
            run = []
    return None


def _blowup(steps: np.ndarray, norms: np.ndarray, start: int, at: int, run: list[float], first_bad: int | None) -> Blowup:
    growth = float(np.exp(np.mean(np.log(run))))
    return Blowup(int(steps[start]), int(steps[at]), growth, float(run[0]), [float(v) for v in norms[start : at + 1]], first_bad)


def first_update_ratio(data: RunData) -> tuple[int, float] | None:
    """(step, median over modules) of the update-to-weight ratio at the first probe step that has one."""
    for step, values in data.records.get("update_ratio", []):
        finite = [v for v in values.values() if math.isfinite(v)]
        if finite:
            return step, float(np.median(finite))
    return None


def max_update_ratio(data: RunData, upto: int | None = None) -> tuple[int, float] | None:
    """(step, median over modules) of the probe step with the largest median update ratio."""
    best = None
    for step, values in data.records.get("update_ratio", []):
        if upto is not None and step > upto:
            break
        finite = [v for v in values.values() if math.isfinite(v)]
        if finite:
            med = float(np.median(finite))
            if best is None or med > best[1]:
                best = (step, med)
    return best


def smoothed_loss(data: RunData, window: int = 10) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, moving median of the finite losses over ``window`` steps), or None when too few."""
    loss = data.scalars.get("loss", np.zeros(0))
    ok = np.isfinite(loss) & ~nonfinite_steps(data)
    if ok.sum() < 2 * window:
        return None
    values, steps = loss[ok], data.steps[ok]
    smooth = np.array([np.median(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))])
    return steps, smooth


def growth_since_start(data: RunData) -> tuple[float, float, float] | None:
    """(early median, late median, ratio) of the finite total norms: first tenth against last tenth."""
    norms = data.finite_norms()
    if len(norms) < T.MIN_STEPS_FOR_TRENDS:
        return None
    tenth = max(2, len(norms) // 10)
    early, late = float(np.median(norms[:tenth])), float(np.median(norms[-tenth:]))
    if early <= 0:
        return None
    return early, late, late / early


def depth_growth(data: RunData, metric: str, step: int | None = None) -> tuple[float, int, list[str]] | None:
    """Per-layer factor of ``metric`` (e.g. preact_std) from input side to output side at ``step``
    (default: the first record), over the layers in forward order; None with fewer than 3."""
    entries = data.records.get(metric, [])
    if not entries:
        return None
    at, values = entries[0] if step is None else next(((s, v) for s, v in entries if s == step), entries[0])
    order = [n for n in data.meta.get("forward_order", []) if n in values]
    names = order if len(order) == len(values) else list(values)  # records keep the order the hooks ran in
    names = [n for n in names if math.isfinite(values[n]) and values[n] > 0]
    if len(names) < T.MIN_LAYERS_FOR_DEPTH:
        return None
    v = np.array([values[n] for n in names])
    factor = float((v[-1] / v[0]) ** (1.0 / (len(v) - 1)))
    return factor, at, names


@dataclass(frozen=True)
class InitFlow:
    """How the signal's scale changes across depth at the first step, where init alone decides it."""

    direction: str  # "growing" or "shrinking"
    per_layer: float
    total: float
    layers: list[str]
    metric: str
    step: int


def init_flow(data: RunData) -> InitFlow | None:
    """The pre-activations' scale growing or shrinking geometrically with depth at the first probe
    step (activations probe), by more than ``INIT_TOTAL_FACTOR`` over the net and
    ``INIT_DEPTH_FACTOR``**(1/2) per layer: the weights' scale, not training, sets it there."""
    found = depth_growth(data, "preact_std")
    if found is None:
        return None
    factor, step, names = found
    total = factor ** (len(names) - 1)
    per_layer_bound = math.sqrt(T.INIT_DEPTH_FACTOR)  # 1.41x per layer: 10x over 7 layers
    if total >= T.INIT_TOTAL_FACTOR and factor >= per_layer_bound:
        return InitFlow("growing", factor, total, names, "preact_std", step)
    if total <= 1 / T.INIT_TOTAL_FACTOR and factor <= 1 / per_layer_bound:
        return InitFlow("shrinking", factor, total, names, "preact_std", step)
    return None


def init_blames(data: RunData) -> bool:
    """A blow-up whose first step already had exploding pre-activations: the init, not the rate."""
    flow = init_flow(data)
    return flow is not None and flow.direction == "growing"
