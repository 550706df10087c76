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

import math

import torch
from torch import Tensor, nn

from gradguard._grads import stat_dtype
from gradguard._probes._base import stack_values
from gradguard._probes._hooks import ForwardHookProbe

# Saturated: derivative below this fraction of its maximum (tanh' max 1, sigmoid' max 1/4).
SATURATION_DERIVATIVE_FRACTION = 0.1

BOUNDED = (nn.Sigmoid, nn.Tanh, nn.Softsign, nn.Hardtanh, nn.Hardsigmoid)
RELU_FAMILY = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish)


def saturation_band(module: nn.Module) -> tuple[bool, float, float, bool]:
    """Where a bounded activation saturates, as ``|v - center| > half_width`` (``>=`` when inclusive).

    Returns (on_output, center, half_width, inclusive): ``v`` is the output y when on_output, else
    the input x. Each is the derivative condition f' / max f' < SATURATION_DERIVATIVE_FRACTION
    solved for v, so the probe makes one comparison instead of computing f':

    * tanh: 1 - y^2 < r  <=>  |y| > sqrt(1 - r)
    * sigmoid: 4 y (1 - y) < r  <=>  |y - 1/2| > sqrt(1 - r) / 2
    * softsign: 1 / (1 + |x|)^2 < r  <=>  |x| > 1 / sqrt(r) - 1
    * hardtanh (and its subclasses but ReLU6): slope 0 for x outside (min_val, max_val), boundaries
      included: y is clamped to [min_val, max_val], so y at a bound
    * hardsigmoid: slope 0 for x outside (-3, 3), boundaries included: y at 0 or 1

    The hard ones are read off the output, which stays right when they run in place.
    """
    r = SATURATION_DERIVATIVE_FRACTION
    if isinstance(module, nn.Tanh):
        return True, 0.0, math.sqrt(1.0 - r), False
    if isinstance(module, nn.Sigmoid):
        return True, 0.5, math.sqrt(1.0 - r) / 2.0, False
    if isinstance(module, nn.Softsign):
        return False, 0.0, 1.0 / math.sqrt(r) - 1.0, False
    if isinstance(module, nn.Hardtanh):  # ReLU6 subclasses Hardtanh; the hook sends it to the ReLU family first
        low, high = float(module.min_val), float(module.max_val)
        return True, (low + high) / 2.0, (high - low) / 2.0, True
    return True, 0.5, 0.5, True  # Hardsigmoid


def fraction_beyond(v: Tensor, center: float, half_width: float, inclusive: bool) -> Tensor:
    """Share of elements with |v - center| > half_width (>= when inclusive); NaN if v holds NaN.

    Written as the mean of sign(clamp(...)): on a CPU a comparison that materialises a bool
    tensor costs about as much as three arithmetic passes.
    """
    a = (v - center).abs_() if center else v.abs()
    if inclusive:  # 1 - share strictly inside
        return 1.0 - (half_width - a).clamp_(min=0.0).sign_().mean()
    return (a - half_width).clamp_(min=0.0).sign_().mean()


def unit_dim(y: Tensor) -> int:
    """Channels for conv feature maps (N, C, ...); the last dim (features) otherwise."""
    return 1 if y.ndim >= 4 else y.ndim - 1


def unit_extreme(x: Tensor, largest: bool = True) -> Tensor:
    """Per unit (see ``unit_dim``), the largest (or smallest) value over examples and positions.

    The batch dim is reduced first: an element-wise max over contiguous slices. Reducing (N, H, W)
    of a (N, C, H, W) map in one call is up to 7x slower on a CPU when H x W is small.
    """
    reduce = torch.amax if largest else torch.amin
    if x.ndim <= 1:
        return x  # one example: each element is a unit
    unit = unit_dim(x)
    peak = reduce(x, dim=0)  # unit moves to unit - 1: channels to 0, features stay last
    if peak.ndim == 1:
        return peak
    return reduce(peak.flatten(1), dim=1) if unit == 1 else reduce(peak.flatten(0, -2), dim=0)


def inactive_fraction(module: nn.Module, x: Tensor) -> Tensor:
    """Share of units whose input is <= 0 (or, for ReLU6, >= 6) for every example and position.

    A unit is inactive exactly when its largest input is <= 0: one max-reduction, no mask. The
    input of an in-place activation has been overwritten with its output by the time the hook
    runs; for the ReLU family output and input have the same sign, so the answer is the same.
    """
    if x.ndim == 0:
        return torch.zeros((), device=x.device)
    inactive = (unit_extreme(x) <= 0).float()
    if isinstance(module, nn.ReLU6):
        inactive = torch.maximum(inactive, (unit_extreme(x, largest=False) >= 6).float())
    return inactive.mean()


def mean_and_std(x: Tensor) -> tuple[Tensor, Tensor]:
    """Population mean and standard deviation in two passes (mean, then the norm of x - mean).

    torch's ``std`` (Welford, one pass) costs about three times as much on a CPU thread; the
    two-pass form keeps the accuracy that E[x^2] - E[x]^2 would lose when |mean| >> std.
    """
    mean = x.mean()
    return mean, torch.linalg.vector_norm(x - mean) / math.sqrt(max(x.numel(), 1))


def _measured(t: Tensor) -> Tensor:
    """Statistics in float32 for low-precision tensors and in float64 for float64 ones (a float64
    model is often used precisely to see values float32 would round to 0)."""
    t = t.detach()
    return t.to(stat_dtype(t.dtype))


def is_probed(module: nn.Module) -> bool:
    return isinstance(module, BOUNDED + RELU_FAMILY)


def _in_place(module: nn.Module) -> bool:
    return bool(getattr(module, "inplace", False))


def measure(module: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """One call's statistics: preact_mean, preact_std and saturation or dead_fraction."""
    stats = dict(zip(("preact_mean", "preact_std"), mean_and_std(x)))
    if isinstance(module, RELU_FAMILY):
        stats["dead_fraction"] = inactive_fraction(module, x)
    else:
        on_output, center, half, inclusive = saturation_band(module)
        stats["saturation"] = fraction_beyond(y if on_output else x, center, half, inclusive)
    return stats


class ActivationProbe(ForwardHookProbe):
    """Forward hooks on the model's activation modules, registered only while armed.

    An in-place activation (``nn.ReLU(inplace=True)``, common in vision models) overwrites its
    input, so its pre-activation statistics are taken by a forward pre-hook, before it runs.
    """

    name = "activations"

    def __init__(self, model: nn.Module):
        super().__init__([(name, m) for name, m in model.named_modules() if is_probed(m)])
        self._sums: dict[str, dict[str, Tensor]] = {}
        self._calls: dict[str, int] = {}
        self._before: dict[str, tuple[Tensor, Tensor]] = {}

    def _reset(self) -> None:
        self._sums.clear()
        self._calls.clear()
        self._before.clear()

    def arm(self) -> None:
        if self.armed:
            return
        super().arm()
        for name, module in self.modules:
            if _in_place(module):
                self._handles.append(module.register_forward_pre_hook(self._pre_hook(name)))

    def _pre_hook(self, name: str):
        def hook(module: nn.Module, inputs) -> None:
            if module.training and inputs and isinstance(inputs[0], Tensor):
                with torch.no_grad():
                    self._before[name] = mean_and_std(_measured(inputs[0]))

        return hook

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            if not module.training or not inputs or not isinstance(inputs[0], Tensor) or not isinstance(output, Tensor):
                return
            with torch.no_grad():
                x, y = _measured(inputs[0]), _measured(output)
                stats = measure(module, x, y)
                if name in self._before:  # in place: x is the output now; the pre-hook saw the input
                    stats["preact_mean"], stats["preact_std"] = self._before.pop(name)
            # A module used several times per step (one nn.ReLU shared by layers) averages its calls.
            acc = self._sums.setdefault(name, {})
            for key, value in stats.items():
                acc[key] = acc[key] + value if key in acc else value
            self._calls[name] = self._calls.get(name, 0) + 1

        return hook

    def collect(self, ctx=None) -> dict[str, tuple[tuple[str, ...], Tensor]]:
        """metric -> (module names, one value per module); empty metrics are left out."""
        return {metric: stack_values(values) for metric, values in self.values().items()}

    def values(self) -> dict[str, dict[str, Tensor]]:
        """metric -> {module name: 0-dim tensor} of the armed step; empty metrics are left out."""
        out: dict[str, dict[str, Tensor]] = {}
        for name, stats in self._sums.items():
            for key, total in stats.items():
                out.setdefault(key, {})[name] = total / self._calls[name]
        self._sums.clear()
        self._calls.clear()
        return out
