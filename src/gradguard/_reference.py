"""Naive, readable reference implementations: one tensor at a time, in float64, on the host.

The fused fast paths are tested against these, and the benchmarks time them as the per-tensor
``.item()`` baseline. They are deliberately slow and obvious; never use them on a hot path.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor


def tensor_norm(t: Tensor, norm_type: float) -> float:
    x = t.detach().double().abs().flatten()
    if x.numel() == 0:
        return 0.0
    if math.isinf(norm_type):
        return x.max().item()
    return x.pow(norm_type).sum().pow(1.0 / norm_type).item()


def norms_of(named: Sequence[tuple[str, Tensor]], norm_type: float = 2.0) -> tuple[dict[str, float], float]:
    """Per-tensor and total gradient norms, one ``.item()`` per tensor."""
    per = {name: tensor_norm(p.grad, norm_type) for name, p in named if p.grad is not None}
    values = np.array(list(per.values()), dtype=np.float64)
    if values.size == 0:
        return per, 0.0
    if math.isinf(norm_type):
        return per, float(values.max())
    return per, float((values**norm_type).sum() ** (1.0 / norm_type))


def group_of(names: Sequence[str], key: Callable[[str], str], per: dict[str, float], norm_type: float) -> dict[str, float]:
    groups: dict[str, list[float]] = {}
    for n in names:
        groups.setdefault(key(n), []).append(per[n])
    out = {}
    for label, vals in groups.items():
        v = np.array(vals)
        out[label] = float(v.max()) if math.isinf(norm_type) else float((v**norm_type).sum() ** (1.0 / norm_type))
    return out


def unitwise(t: Tensor) -> Tensor:
    """Row norms, one row at a time."""
    t = t.detach().double()
    if t.ndim <= 1:
        return t.norm()
    rows = [t[i].norm() for i in range(t.shape[0])]
    return torch.stack(rows).reshape((-1,) + (1,) * (t.ndim - 1))


def agc(named: Sequence[tuple[str, Tensor]], clipping: float, eps: float, exclude: Sequence[str]) -> dict[str, Tensor]:
    """Clipped gradients by the NFNets formula, without touching the parameters' .grad."""
    out = {}
    for name, p in named:
        g = p.grad.detach().double()
        if any(fnmatch.fnmatchcase(name, pat) for pat in exclude):
            out[name] = g
            continue
        w_norm = unitwise(p).clamp(min=eps)
        g_norm = unitwise(p.grad)
        max_norm = w_norm * clipping
        trigger = g_norm > max_norm
        clipped = g * (max_norm / g_norm.clamp(min=1e-6))
        out[name] = torch.where(trigger, clipped, g)
    return out


class ZClipReference:
    """ZClip as described in the paper, in plain Python floats, over a sequence of total norms."""

    def __init__(self, alpha=0.97, z_thresh=2.5, warmup_steps=25, max_grad_norm=None, eps=1e-6, mode="zscore", clip_option="adaptive_scaling", clip_factor=1.0):
        self.alpha, self.z, self.warmup, self.cap, self.eps = alpha, z_thresh, warmup_steps, max_grad_norm, eps
        self.mode, self.option, self.factor = mode, clip_option, clip_factor
        self.buffer: list[float] = []
        self.mean = self.var = None

    def step(self, g: float) -> float:
        """Returns the norm after clipping."""
        if not math.isfinite(g):
            return g
        if self.mean is None:
            self.buffer.append(g)
            if len(self.buffer) == self.warmup:
                self.mean = sum(self.buffer) / len(self.buffer)
                self.var = sum((x - self.mean) ** 2 for x in self.buffer) / len(self.buffer)
            return min(g, self.cap) if self.cap is not None else g
        std = self.var**0.5
        clip_val = None
        if self.mode == "percentile":
            level = self.mean + self.z * std
            if g > level:
                clip_val = level
        else:
            z = (g - self.mean) / (std + self.eps)
            if z > self.z:
                clip_val = (self.mean + self.z * std / (z / self.z)) * self.factor if self.option == "adaptive_scaling" else self.mean * self.factor
        bound = clip_val if clip_val is not None else math.inf
        if self.cap is not None:
            bound = min(bound, self.cap)
        after = g * min(1.0, bound / (g + 1e-6))
        x = clip_val if clip_val is not None else g
        self.mean = self.alpha * self.mean + (1 - self.alpha) * x
        self.var = self.alpha * self.var + (1 - self.alpha) * (x - self.mean) ** 2
        return after


# Largest derivative of each bounded activation (the probe's saturation is relative to it).
_MAX_DERIVATIVE = {"Tanh": 1.0, "Sigmoid": 0.25, "Softsign": 1.0, "Hardtanh": 1.0, "Hardsigmoid": 1.0 / 6.0}


def activation_stats(module: torch.nn.Module, x: Tensor, saturation_fraction: float = 0.1) -> dict[str, float]:
    """The activation probe's numbers, the slow way: derivatives from autograd, units one by one.

    ``module`` is applied to a float64 copy of ``x`` that is not modified in place.
    """
    from torch import nn

    x = x.detach().double().clone().requires_grad_(True)
    fresh = copy.deepcopy(module)
    if hasattr(fresh, "inplace"):
        fresh.inplace = False
    y = fresh(x)
    out = {"preact_mean": x.mean().item(), "preact_std": math.sqrt(((x - x.mean()) ** 2).mean().item())}
    if isinstance(module, (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish)):
        unit = 1 if x.ndim >= 4 else x.ndim - 1
        units = x.detach().movedim(unit, 0).reshape(x.shape[unit], -1) if x.ndim > 1 else x.detach().reshape(-1, 1)
        dead = 0
        for values in units:
            off = bool((values <= 0).all())
            if isinstance(module, nn.ReLU6):
                off = off or bool((values >= 6).all())
            dead += off
        out["dead_fraction"] = dead / len(units)
    else:
        (derivative,) = torch.autograd.grad(y.sum(), x)
        relative = derivative / _MAX_DERIVATIVE[type(module).__name__]
        out["saturation"] = (relative < saturation_fraction).double().mean().item()
    return out
