"""Table 3: adaptive clippers, per-call cost at step 100 against step 100,000.

AutoClip's reference keeps every past norm and takes a percentile over all of them each step,
so its step gets slower as training goes on; gg.AutoClip keeps a bounded exact buffer (the first
10,000 norms) and a fixed-size log histogram, gg.ZClip two moving averages, so theirs must not.
On the CPU both read the norm once as a Python number and multiply the gradients only on a step
that clips, like the ``zclip`` package; on a GPU they stay on the device. Reaching step 100,000 by training would take
hours, and what grows is the history, not the gradients: each clipper's history is filled with
synthetic norms (log-normal around the model's gradient norm) through its own state, and then a
full clipper call (norm pass, threshold, clipping) is timed at each point. Before every timed
block the state is put back at the point, so the point does not drift while it is timed.

Contenders that need a package (``zclip``, ``autoclip``, timm's AGC) are reported as missing,
with the reason, when it does not import.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch

import gradguard as gg
from benchmarks import peers
from benchmarks._config import Config
from benchmarks._models import GRAD_MODELS, count, fill_grads, human
from benchmarks._report import Table, ms, ratio
from benchmarks._timing import Task, interleave, summarize

BASELINE = "clip_grad_norm_ (fixed threshold)"
FLAT = 1.10  # "flat": the call at the far point costs at most 10% more than at step 100


def synthetic_norms(n: int, center: float, seed: int = 0) -> np.ndarray:
    return center * np.exp(0.3 * np.random.default_rng(seed).standard_normal(n))


def gg_autoclip_at(model, norms: np.ndarray) -> Task:
    """gg.AutoClip after ``len(norms)`` steps: its histogram holds all of them, its exact buffer
    the first ``exact_samples`` (sorted), so the point is the state a real run would have."""
    clipper = gg.AutoClip(10.0)
    state = clipper.state_dict()
    hist = state["histogram"]
    index = np.floor((np.log10(norms) - hist["log_low"]) * hist["bins_per_decade"]).astype(np.int64)
    counts = np.bincount(np.clip(index, 0, len(hist["counts"]) - 1), minlength=len(hist["counts"]))
    hist["counts"] = torch.from_numpy(counts.astype(np.float64))
    state["exact"] = torch.from_numpy(np.sort(norms[: clipper.exact_samples]).astype(np.float64))
    params = list(model.parameters())
    clipper.load_state_dict(state)
    clipper(params)  # moves the state to the gradients' device
    saved = copy.deepcopy(clipper.state_dict())
    return Task(lambda: clipper(params), setup=lambda: clipper.load_state_dict(saved))


def gg_zclip_at(model, norms: np.ndarray) -> Task:
    clipper = gg.ZClip(max_grad_norm=None)  # purely adaptive, like the package's row below
    state = clipper.state_dict()
    state["count"] = torch.tensor(clipper.warmup_steps)  # warm-up done
    state["mean"] = torch.tensor(float(norms.mean()))
    state["var"] = torch.tensor(float(norms.var()))
    params = list(model.parameters())
    clipper.load_state_dict(state)
    clipper(params)
    saved = copy.deepcopy(clipper.state_dict())
    return Task(lambda: clipper(params), setup=lambda: clipper.load_state_dict(saved))


def reference_autoclip_at(model, norms: np.ndarray) -> Task:
    clipper = peers.AutoClipReference(model, 10.0)
    history = norms.tolist()

    def setup():
        clipper.history = list(history)

    return Task(clipper, setup=setup)


def package_autoclip_at(model, norms: np.ndarray, window: int | None) -> Task | None:
    QuantileClip, _ = peers.optional("autoclip")
    if QuantileClip is None:
        return None
    params = list(model.parameters())
    length = window if window is not None else 10**9  # None: keep every norm, as the paper does
    clipper = QuantileClip(params, quantile=0.1, history_length=length, global_threshold=True)
    device = params[0].device
    kept = torch.tensor(norms if window is None else norms[-window:], dtype=torch.float32, device=device)

    def setup():
        clipper.state["global_history"] = kept.clone()

    return Task(clipper.step, setup=setup)


def package_zclip_at(model, norms: np.ndarray) -> Task | None:
    ZClip, _ = peers.optional("zclip")
    if ZClip is None:
        return None
    clipper = ZClip(max_grad_norm=None)
    mean, var = float(norms.mean()), float(norms.var())

    def setup():
        clipper.initialized, clipper.buffer, clipper.mean, clipper.var = True, [], mean, var

    return Task(lambda: clipper.step(model), setup=setup)


# name -> (builder(model, norms) -> Task or None, package needed or None)
HISTORY_CLIPPERS: dict[str, tuple[Callable, str | None]] = {
    "gg.AutoClip (exact buffer, then log histogram)": (gg_autoclip_at, None),
    "gg.ZClip (EMA)": (gg_zclip_at, None),
    "AutoClip reference (np.percentile over all norms)": (reference_autoclip_at, None),
    "autoclip QuantileClip, global, whole history": (lambda m, n: package_autoclip_at(m, n, None), "autoclip"),
    "autoclip QuantileClip, global, default window 1000": (lambda m, n: package_autoclip_at(m, n, 1000), "autoclip"),
    "zclip ZClip": (package_zclip_at, "zclip"),
}


def stateless(model) -> dict[str, Task | None]:
    """AGC keeps no history: one point, to compare the implementations' per-call cost."""
    params = list(model.parameters())
    agc = gg.AGC(0.01)
    out: dict[str, Task | None] = {"gg.AGC (unit-wise, stateless)": Task(lambda: agc(model.named_parameters()))}
    timm_agc, _ = peers.optional("timm_agc")
    out["timm adaptive_clip_grad (stateless)"] = Task(lambda: timm_agc(params, clip_factor=0.01)) if timm_agc else None
    return out


def run(cfg: Config) -> list[Table]:
    points = cfg.pick(smoke=(100, 1000), cpu=(100, 100_000), cuda=(100, 100_000))
    model_name = cfg.pick(smoke="GPT tiny", cpu="GPT 1M", cuda="GPT 1M")
    rounds = cfg.pick(smoke=2, cpu=21, cuda=31)
    min_block = cfg.pick(smoke=0.0, cpu=0.02, cuda=0.005)
    torch.manual_seed(0)
    with cfg.device:
        model = GRAD_MODELS[model_name]()
    fill_grads(model)
    n_params, n_tensors = count(model)
    center = float(gg.grad_norms(model).total)
    norms = synthetic_norms(max(points), center)
    params = list(model.parameters())
    # The baseline's threshold is above every norm here, so it scales gradients by exactly 1 and
    # leaves them as the adaptive clippers found them.
    tasks: dict[str, Task] = {BASELINE: Task(lambda: torch.nn.utils.clip_grad_norm_(params, 1e6))}
    missing: dict[str, str] = {}
    rows_of: dict[str, tuple[str, str | None]] = {}
    for name, (build, package) in HISTORY_CLIPPERS.items():
        if package is not None and peers.optional(package)[0] is None:
            missing[name] = peers.optional(package)[1]
            continue
        for step in points:
            key = f"{name} @ {step}"
            tasks[key] = build(model, norms[:step])
            rows_of[key] = (name, str(step))
    for name, task in stateless(model).items():
        if task is None:
            missing[name] = peers.optional("timm_agc")[1]
            continue
        tasks[name] = task
        rows_of[name] = (name, None)
    samples = interleave(tasks, rounds=rounds, warmup=2, min_block=min_block, sync=cfg.sync, clock=cfg.clock)
    by_key = {s.name: s for s in summarize(samples, BASELINE)}
    near, far = points
    table = Table(
        "clippers",
        f"Adaptive clippers: per-call cost at step {near:,} and step {far:,} ({cfg.device.type}, {model_name}, {human(n_params)} params)",
        ["clipper", f"ms @ {near:,}", f"ms @ {far:,}", f"growth {far:,} / {near:,}", "flat (<= 1.10x)", "ratio to clip_grad_norm_ @ far"],
    )
    base = by_key[BASELINE]
    table.rows.append({"clipper": BASELINE, f"ms @ {near:,}": ms(base.median), f"ms @ {far:,}": ms(base.median), f"growth {far:,} / {near:,}": "", "flat (<= 1.10x)": "", "ratio to clip_grad_norm_ @ far": "1.00x"})
    for name in list(HISTORY_CLIPPERS) + list(stateless_names()):
        if name in missing:
            continue
        if f"{name} @ {near}" in by_key:
            a, b = by_key[f"{name} @ {near}"], by_key[f"{name} @ {far}"]
            growth = b.median / a.median
            table.rows.append({
                "clipper": name,
                f"ms @ {near:,}": f"{ms(a.median)} ({ms(a.q1)}-{ms(a.q3)})",
                f"ms @ {far:,}": f"{ms(b.median)} ({ms(b.q1)}-{ms(b.q3)})",
                f"growth {far:,} / {near:,}": ratio(growth),
                "flat (<= 1.10x)": "yes" if growth <= FLAT else "no",
                "ratio to clip_grad_norm_ @ far": ratio(b.ratio),
            })
        elif name in by_key:
            s = by_key[name]
            table.rows.append({"clipper": name, f"ms @ {near:,}": f"{ms(s.median)} ({ms(s.q1)}-{ms(s.q3)})", f"ms @ {far:,}": "(no history)", "ratio to clip_grad_norm_ @ far": ratio(s.ratio)})
    table.data = {"model": model_name, "params": n_params, "tensors": n_tensors, "points": list(points), "contenders": [s.as_dict() for s in by_key.values()], "not_measured": missing}
    table.notes.append(f"{rounds} interleaved rounds after 2 warm-up rounds, every clipper at both points in the same rounds; medians with interquartile ranges in brackets.")
    for name, why in missing.items():
        table.notes.append(f"Not measured: {name} ({why}).")
    return [table]


def stateless_names() -> tuple[str, ...]:
    return ("gg.AGC (unit-wise, stateless)", "timm adaptive_clip_grad (stateless)")
