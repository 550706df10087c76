"""Small helpers the experiments share: optimizers by name, the guarded training loop, evaluation.

``fit`` is the canonical loop (forward -> backward -> ``guard.step`` -> ``zero_grad``); an
experiment whose loop does more (a regulariser, a probe) writes its own, in the same order.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from gradguard._errors import check_choice

OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop")


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    """"sgd" (plain, as Pascanu et al.), "momentum" (SGD, 0.9), "adam", "rmsprop" (decay 0.9, as the uRNN paper)."""
    check_choice("optimizer", name, OPTIMIZERS)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    return torch.optim.RMSprop(params, lr=lr, alpha=0.9)


def fit(model: nn.Module, task, opt: torch.optim.Optimizer, guard, *, steps: int, batch: int, seed: int, device) -> None:
    """Train ``steps`` batches of ``task`` (drawn from a generator seeded with ``seed``) under ``guard``.

    The same seed gives the same batches, so variants of one experiment see the same data.
    ``guard.step`` measures, clips, skips a non-finite step and steps ``opt``. Closes ``guard``.
    """
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = task.batch(batch, gen)
        loss = task.loss(model(x.to(device)), y.to(device))
        loss.backward()
        guard.step(opt, loss=loss)  # measure -> clip -> skip if non-finite -> optimizer step
        opt.zero_grad(set_to_none=True)
    guard.close()


@torch.no_grad()
def evaluate(model: nn.Module, task, x: torch.Tensor, y: torch.Tensor, chunk: int = 1000, last_step: bool = False) -> dict[str, float]:
    """The task's loss and error on (x, y), in chunks, in eval mode (restored afterwards).

    ``last_step``: the model reads out at every step (trained on a target per step) and is
    judged on its last step's output only."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outs = [model(x[i : i + chunk].to(device)).float().cpu() for i in range(0, len(x), chunk)]
    model.train(was_training)
    out = torch.cat(outs)
    if last_step:
        out = out[:, -1]
    return {"loss": _finite_or_inf(task.loss(out, y).item()), "error": _finite_or_inf(task.error(out, y))}


def _finite_or_inf(v: float) -> float:
    return v if math.isfinite(v) else math.inf


def tail_mean(values: np.ndarray, n: int = 50) -> float:
    """Mean of the last ``n`` values (inf when any is non-finite: the run diverged)."""
    tail = np.asarray(values[-n:], dtype=np.float64)
    if not len(tail):
        return math.nan
    return float(tail.mean()) if np.isfinite(tail).all() else math.inf


def history_summary(history) -> dict[str, Any]:
    """Norm and clipping statistics of a ``guard.history``."""
    norms = history.norm_before
    finite = norms[np.isfinite(norms)]
    return {
        "steps": int(len(norms)),
        "median_norm": float(np.median(finite)) if len(finite) else math.nan,
        "mean_norm": float(finite.mean()) if len(finite) else math.nan,
        "max_norm": float(norms.max()) if len(norms) and np.isfinite(norms).all() else (math.inf if len(norms) else math.nan),
        "clipped_share": float(history.clipped.mean()) if len(norms) else 0.0,
        "skipped_steps": int(history.skipped.sum()),
    }


def curve(values: np.ndarray, points: int = 50) -> list[float]:
    """A short copy of a per-step series (means over equal windows), for plots in the result."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) <= points:
        return values.tolist()
    return [float(w.mean()) for w in np.array_split(values, points)]


def curve_steps(n: int, points: int = 50) -> list[float]:
    """The training step (1-based) at the middle of each of ``curve``'s windows: its x axis."""
    return curve(np.arange(1, n + 1), points)


def loss_curve(history) -> dict[str, list[float]]:
    """``loss_curve`` (the training loss, windowed by ``curve``) and ``loss_curve_step`` (its x)."""
    return {"loss_curve": curve(history.loss), "loss_curve_step": curve_steps(len(history.loss))}
