"""Saturation of bounded activations, inactive units of the ReLU family, pre-activation statistics.

A unit of a bounded activation is *saturated* where its derivative is below
``SATURATION_DERIVATIVE_FRACTION`` of the activation's largest derivative: there the
back-propagated error is scaled down by more than 10x at every layer it passes (Glorot & Bengio
2010 watch sigmoid's top layer saturate at 0 right after initialisation). For tanh that is
|y| > 0.949, for sigmoid y < 0.026 or y > 0.974.

A unit of the ReLU family is *inactive* when its input is <= 0 for every example of the batch (and
every position, for convolutions and sequences): ReLU passes no gradient through it at all, its
smooth relatives (LeakyReLU, ELU, GELU, SiLU) only a small one. ReLU6 units stuck at 6 count too.

Only ``nn.Module`` activations are seen (``nn.Tanh()``), not functional calls (``torch.tanh``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gradguard._probes._hooks import ForwardHookProbe

# Saturated: derivative below this fraction of its maximum (tanh' max 1, sigmoid' max 1/4).
SATURATION_DERIVATIVE_FRACTION = 0.1

BOUNDED = (nn.Sigmoid, nn.Tanh, nn.Softsign, nn.Hardtanh, nn.Hardsigmoid)
RELU_FAMILY = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish)


def relative_derivative(module: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """f'(x) / max f' for a bounded activation, from its input x and output y."""
    if isinstance(module, nn.Sigmoid):
        return 4.0 * y * (1.0 - y)
    if isinstance(module, nn.Tanh):
        return 1.0 - y * y
    if isinstance(module, nn.Softsign):
        return 1.0 / (1.0 + x.abs()).pow(2)
    if isinstance(module, nn.Hardtanh):  # ReLU6 subclasses Hardtanh; the hook sends it to the ReLU family first
        return ((x > module.min_val) & (x < module.max_val)).to(x.dtype)
    # Hardsigmoid: slope 1/6 on (-3, 3), 0 outside.
    return ((x > -3.0) & (x < 3.0)).to(x.dtype)


def unit_dim(y: Tensor) -> int:
    """Channels for conv feature maps (N, C, ...); the last dim (features) otherwise."""
    return 1 if y.ndim >= 4 else y.ndim - 1


def inactive_fraction(module: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Share of units whose input is <= 0 (or ReLU6 output at 6) for every example."""
    if y.ndim == 0:
        return torch.zeros((), device=y.device)
    inactive = x <= 0
    if isinstance(module, nn.ReLU6):
        inactive = inactive | (x >= 6)
    dim = unit_dim(y)
    moved = inactive.movedim(dim, 0).reshape(inactive.shape[dim], -1)
    return moved.all(dim=1).float().mean()


def is_probed(module: nn.Module) -> bool:
    return isinstance(module, BOUNDED + RELU_FAMILY)


class ActivationProbe(ForwardHookProbe):
    """Forward hooks on the model's activation modules, registered only while armed."""

    name = "activations"

    def __init__(self, model: nn.Module):
        super().__init__([(name, m) for name, m in model.named_modules() if is_probed(m)])
        self._sums: dict[str, dict[str, Tensor]] = {}
        self._calls: dict[str, int] = {}

    def _reset(self) -> None:
        self._sums.clear()
        self._calls.clear()

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            if not module.training or not inputs or not isinstance(inputs[0], Tensor) or not isinstance(output, Tensor):
                return
            with torch.no_grad():
                x, y = inputs[0].detach().float(), output.detach().float()
                stats = {"preact_mean": x.mean(), "preact_std": x.std(unbiased=False)}
                if isinstance(module, RELU_FAMILY):
                    stats["dead_fraction"] = inactive_fraction(module, x, y)
                else:
                    stats["saturation"] = (relative_derivative(module, x, y) < SATURATION_DERIVATIVE_FRACTION).float().mean()
            # A module used several times per step (one nn.ReLU shared by layers) averages its calls.
            acc = self._sums.setdefault(name, {})
            for key, value in stats.items():
                acc[key] = acc[key] + value if key in acc else value
            self._calls[name] = self._calls.get(name, 0) + 1

        return hook

    def collect(self) -> dict[str, dict[str, Tensor]]:
        """metric -> {module name: 0-dim tensor}; empty metrics are left out."""
        out: dict[str, dict[str, Tensor]] = {}
        for name, stats in self._sums.items():
            for key, total in stats.items():
                out.setdefault(key, {})[name] = total / self._calls[name]
        self._sums.clear()
        self._calls.clear()
        return out
