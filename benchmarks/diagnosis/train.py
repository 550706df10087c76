"""One run of a zoo scenario: a plain training loop under a Guard, as a user would write it.

``train(cfg)`` builds the model and data the config names, trains ``cfg["steps"]`` optimizer
steps and returns the run data the rules read, the losses and where the run first went
non-finite. ``apply_fix(cfg, fix)`` turns a ``Finding.fix`` into a config change.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import gradguard as gg
from benchmarks.diagnosis import models
from gradguard._errors import NonFiniteGradientError
from gradguard._rundata import RunData

BASE: dict[str, Any] = {
    "model": "mlp",  # mlp, set, cnn, rnn, transformer
    "width": 64,
    "depth": 2,
    "activation": "relu",
    "norm": None,  # None, "batch", "layer"
    "residual": False,
    "cell": "tanh",  # rnn: tanh, relu, lstm, gru
    "ln": "pre",  # transformer: pre- or post-LN
    "seq_len": 20,
    "init": "default",  # default, he, xavier, orthogonal (recurrent)
    "init_scale": 1.0,  # multiplies the weights after init
    "bias_init": None,
    "recurrent_radius": None,  # spectral radius of the recurrent matrix
    "fault": None,  # log, sqrt, div: an op that makes NaN in one module
    "eps": None,  # the epsilon that guards that op
    "upcast": (),  # modules run in float32 under autocast
    "input_scale": 1.0,
    "optimizer": "adam",
    "lr": 1e-3,
    "momentum": 0.0,
    "warmup_steps": 0,
    "lr_ramp": None,  # (steps, peak): linear ramp of the lr to peak (a mis-set schedule)
    "lr_spike": None,  # (step, factor): one step at factor x lr
    "lr_cap": None,  # the largest lr any step may use
    "steps": 200,
    "batch": 64,
    "precision": "fp32",  # fp32, fp16 (autocast), bf16 (autocast), fp16_pure (model.half())
    "scaler": False,
    "scaler_init_scale": 2.0**16,  # GradScaler's default; larger ones overflow for their first steps
    "loss_reduction": "mean",
    "accum": 1,  # micro-batches per optimizer step
    "loss_scale": 1.0,
    "nonfinite": "skip",
    "clip": None,
    "bad_batch": None,  # (step, value): one batch with value (nan or inf) in its inputs
    "seed": 0,
    "probes": "business",
}


def config(**overrides: Any) -> dict[str, Any]:
    unknown = set(overrides) - set(BASE)
    if unknown:
        raise KeyError(f"unknown config keys {sorted(unknown)}")
    return {**BASE, **overrides}


def apply_fix(cfg: dict[str, Any], fix: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The config with ``fix`` applied, and the fix keys it could not apply."""
    out, unused = dict(cfg), []
    for key, value in fix.items():
        if key == "lr":
            out["lr_cap"] = float(value)
            out["lr"] = min(out["lr"], float(value))
        elif key == "warmup_steps":
            out["warmup_steps"] = int(value)
        elif key == "clip":
            out["clip"] = value
        elif key == "init":
            out.update(init=value, init_scale=1.0, bias_init=None, recurrent_radius=None if value == "orthogonal" else out["recurrent_radius"])
        elif key in ("activation", "norm", "residual", "cell", "precision", "eps", "nonfinite", "loss_reduction"):
            out[key] = value
        elif key == "upcast":
            out["upcast"] = tuple(out["upcast"]) + tuple(value)
        elif key == "loss_scale":
            out["loss_scale"] = out["loss_scale"] * float(value)
        else:
            unused.append(key)
    return out, unused


@dataclass
class Run:
    cfg: dict[str, Any]
    data: RunData
    losses: np.ndarray
    skipped: np.ndarray
    first_nonfinite: int | None
    stopped_at: int | None  # the step that raised, when the run could not go on
    findings: list = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        """Median loss of the last tenth of the planned steps; inf when the run did not get there."""
        steps = self.cfg["steps"]
        if self.stopped_at is not None or len(self.losses) < steps:
            return math.inf
        k = max(5, steps // 10)
        tail, skipped = self.losses[-k:], self.skipped[-k:]
        kept = tail[~skipped]  # a skipped step did not change the model
        if len(kept) < k // 2 or not np.isfinite(kept).all():
            return math.inf
        return float(np.median(kept))


def _lr_at(cfg: dict[str, Any], step: int) -> float:
    lr = cfg["lr"]
    if cfg["lr_ramp"] is not None:
        ramp, peak = cfg["lr_ramp"]
        lr = cfg["lr"] + (peak - cfg["lr"]) * min(1.0, step / ramp)
    if cfg["warmup_steps"]:
        lr *= min(1.0, step / cfg["warmup_steps"])
    if cfg["lr_spike"] is not None and step == cfg["lr_spike"][0]:
        lr *= cfg["lr_spike"][1]
    if cfg["lr_cap"] is not None:
        lr = min(lr, cfg["lr_cap"])
    return lr


def _optimizer(cfg: dict[str, Any], model: torch.nn.Module) -> torch.optim.Optimizer:
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"])
    if cfg["optimizer"] == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg["lr"])
    return torch.optim.Adam(model.parameters(), lr=cfg["lr"])


def _loss(cfg: dict[str, Any], out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = out.float()
    if out.ndim == 3:  # tokens: (batch, length, vocab)
        out, y = out.flatten(0, 1), y.flatten()
    return F.cross_entropy(out, y, reduction=cfg["loss_reduction"]) * cfg["loss_scale"]


def train(cfg: dict[str, Any]) -> Run:
    task = models.Task(cfg)
    model = models.build(cfg, task)
    precision = cfg["precision"]
    if precision == "fp16_pure":
        model = model.half()
    opt = _optimizer(cfg, model)
    scaler = torch.amp.GradScaler("cpu", init_scale=cfg["scaler_init_scale"]) if cfg["scaler"] else None
    guard = gg.Guard(model, clip=cfg["clip"], nonfinite=cfg["nonfinite"], scaler=scaler, probes=cfg["probes"], spike_z=6.0)
    torch.manual_seed(cfg["seed"])
    stopped = None
    for step in range(1, cfg["steps"] + 1):
        for group in opt.param_groups:
            group["lr"] = _lr_at(cfg, step)
        opt.zero_grad(set_to_none=True)
        for _ in range(cfg["accum"]):
            x, y = task.batch(cfg["batch"])
            if cfg["bad_batch"] is not None and step == cfg["bad_batch"][0]:
                x = x.clone()
                x[0].view(-1)[:3] = cfg["bad_batch"][1]
            if precision == "fp16_pure" and x.is_floating_point():
                x = x.half()
            if precision in ("fp16", "bf16"):
                ctx = torch.autocast("cpu", dtype=torch.float16 if precision == "fp16" else torch.bfloat16)
            else:
                ctx = contextlib.nullcontext()
            with ctx:
                loss = _loss(cfg, model(x), y)
            (scaler.scale(loss) if scaler is not None else loss).backward()
        try:
            guard.step(opt, loss=loss.detach())
        except NonFiniteGradientError:
            stopped = step
            break
    data = guard.run_data()
    guard.close()
    losses = data.scalars["loss"]
    norms = data.scalars["norm_before"]
    bad = np.flatnonzero(~np.isfinite(norms) | ~np.isfinite(losses))
    first = int(data.steps[bad[0]]) if len(bad) else stopped
    return Run(cfg, data, losses, data.scalars["skipped"].astype(bool), first, stopped)
