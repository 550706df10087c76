"""Preflight: one forward/backward with every probe, a per-layer table, and the findings.

``gg.inspect(model, closure)`` leaves the model as it found it: parameters, gradients, buffers
(BatchNorm running statistics included) and the torch random-number state are restored.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from gradguard._finding import Finding, by_severity
from gradguard._grads import collect
from gradguard._norms import batch_norms
from gradguard._probes._activations import BOUNDED, RELU_FAMILY, ActivationProbe
from gradguard._probes._deltas import DeltaProbe
from gradguard._rundata import RunData
from gradguard.rnn import TimestepProbe
from gradguard.rnn._cells import is_recurrent


@dataclass(frozen=True)
class LayerRow:
    """One layer (a module owning parameters), in forward order."""

    name: str
    type: str
    params: int
    error_norm: float  # ||dL/d(output)||
    grad_norm: float  # ||dL/d(own parameters)||
    activation: str | None  # the activation module that follows it in the forward pass
    activation_type: str | None
    saturation: float | None  # of that activation, if bounded
    dead_fraction: float | None  # of that activation, if ReLU-family
    weight_std: float | None
    xavier_std: float | None  # sqrt(2 / (fan_in + fan_out)), Glorot & Bengio 2010
    he_std: float | None  # sqrt(2 / fan_in), He et al. 2015


@dataclass
class Diagnosis:
    """What ``gg.inspect`` found: ``layers`` (the gradient-flow table) and ``findings``."""

    layers: list[LayerRow]
    findings: list[Finding]
    loss: float
    timesteps: dict[str, list[float]] = field(default_factory=dict)

    def table(self) -> list[dict]:
        return [asdict(row) for row in self.layers]

    def __str__(self) -> str:
        header = ("layer", "type", "error norm", "grad norm", "activation", "sat/dead", "w std", "xavier", "he")
        rows = [header]
        for r in self.layers:
            act = f"{r.activation_type}" if r.activation_type else ""
            frac = r.saturation if r.saturation is not None else r.dead_fraction
            rows.append((r.name, r.type, _g(r.error_norm), _g(r.grad_norm), act, "" if frac is None else f"{frac:.0%}", _g(r.weight_std), _g(r.xavier_std), _g(r.he_std)))
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
        lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append("")
        lines.append(f"loss {self.loss:.4g}; {len(self.findings)} finding(s)" + (":" if self.findings else "."))
        lines.extend(str(f) for f in self.findings)
        return "\n".join(lines)


def _g(x: float | None) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def _init_scales(module: nn.Module) -> tuple[float | None, float | None, float | None]:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, Tensor) or weight.ndim < 2:
        return None, None, None
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
    std = float(weight.detach().float().std())
    return std, math.sqrt(2.0 / (fan_in + fan_out)), math.sqrt(2.0 / fan_in)


class _Snapshot:
    """Parameters, buffers, gradients and RNG state, to put back exactly."""

    def __init__(self, model: nn.Module):
        self.params = [(p, p.detach().clone(), p.grad) for p in model.parameters()]
        self.buffers = [(b, b.detach().clone()) for b in model.buffers()]
        self.rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None

    def restore(self) -> None:
        with torch.no_grad():
            for p, data, grad in self.params:
                p.copy_(data)
                p.grad = grad
            for b, data in self.buffers:
                b.copy_(data)
        torch.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)


def inspect(model: nn.Module, closure: Callable[[], Tensor]) -> Diagnosis:
    """Run one forward/backward with every probe and diagnose the gradient flow at this point.

    Args:
        model: the network.
        closure: runs a forward pass of ``model`` and returns a scalar loss.

    Returns:
        A ``Diagnosis``: ``.layers`` (per layer, in forward order: back-propagated error norm,
        weight-gradient norm, the saturated or inactive fraction of the activation that follows,
        weight scale against the Xavier and He scales) and ``.findings``.

    Example:
        >>> import torch, gradguard as gg
        >>> net = torch.nn.Sequential(*[m for _ in range(20) for m in (torch.nn.Linear(32, 32), torch.nn.Sigmoid())])
        >>> x = torch.randn(64, 32)
        >>> d = gg.inspect(net, lambda: net(x).pow(2).mean())
        >>> d.findings[0].code
        'VANISHING_GRADIENT'
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"inspect needs an nn.Module, got {type(model).__name__}.")
    if not callable(closure):
        raise TypeError("closure must be a function that runs the forward pass and returns a scalar loss.")
    from gradguard._names import unwrap

    model = unwrap(model)  # torch.compile/DDP wrappers off: layers under the user's own names
    snapshot = _Snapshot(model)
    activations, deltas = ActivationProbe(model), DeltaProbe(model)
    timesteps = {name: TimestepProbe(m) for name, m in model.named_modules() if is_recurrent(m)}
    order: list[str] = []
    order_hooks = [m.register_forward_hook(_order_hook(name, order)) for name, m in model.named_modules() if name and not list(m.children())]
    for p in model.parameters():
        p.grad = None
    try:
        activations.arm()
        deltas.arm()
        for probe in timesteps.values():
            probe.arm()
        loss = closure()
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise TypeError(f"closure() must return a scalar loss tensor, got {type(loss).__name__}" + (f" of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else "") + ".")
        if not loss.requires_grad:
            raise ValueError("the loss returned by closure() does not require grad: run the forward pass inside the closure, outside torch.no_grad().")
        loss.backward()
        data, layers, series = _gather(model, loss, activations, deltas, timesteps, order)
    finally:
        for handle in order_hooks:
            handle.remove()
        activations.disarm()
        deltas.disarm()
        for probe in timesteps.values():
            probe.close()
        snapshot.restore()
    from gradguard._rules import diagnose

    return Diagnosis(layers, by_severity(diagnose(data)), float(loss.detach()), series)


def _order_hook(name: str, order: list[str]):
    def hook(module, inputs, output):
        if name not in order:
            order.append(name)

    return hook


def _gather(model, loss, activations, deltas, timesteps, order):
    from gradguard._runmeta import recurrent_spectra as _recurrent_spectra

    act_stats = activations.values()
    errors = deltas.values().get("error_norm", {})
    forward_layers = list(deltas.forward_order)
    batch = collect(model)
    norms = batch_norms(batch, 2.0)
    per_module = {k: float(v) for k, v in norms.by_module().items()}
    named = dict(model.named_modules())
    records = {metric: [(0, {m: float(v) for m, v in values.items()})] for metric, values in act_stats.items()}
    records["error_norm"] = [(0, {m: float(v) for m, v in errors.items()})]
    rows = []
    for name in forward_layers:
        module = named[name]
        act_name = _next_activation(name, order, named)
        act = named.get(act_name) if act_name else None
        std, xavier, he = _init_scales(module)
        rows.append(LayerRow(
            name=name,
            type=type(module).__name__,
            params=sum(p.numel() for p in module.parameters(recurse=False)),
            error_norm=records["error_norm"][0][1].get(name, math.nan),
            grad_norm=per_module.get(name or "(root)", math.nan),
            activation=act_name,
            activation_type=type(act).__name__ if act is not None else None,
            saturation=records.get("saturation", [(0, {})])[0][1].get(act_name) if act_name else None,
            dead_fraction=records.get("dead_fraction", [(0, {})])[0][1].get(act_name) if act_name else None,
            weight_std=std,
            xavier_std=xavier,
            he_std=he,
        ))
    series = {}
    vectors = {}
    for name, probe in timesteps.items():
        if probe.ready:
            values = probe.collect().detach().double().cpu().numpy()
            series[name] = values.tolist()
            vectors.setdefault("timestep_grad_norm", []).append((0, name, values))
    module_names = list(per_module)
    meta = {
        "kind": "inspect",
        "forward_order": forward_layers,
        "layer_types": {r.name: r.type for r in rows},
        "activation_types": {n: type(named[n]).__name__ for n in order if isinstance(named[n], BOUNDED + RELU_FAMILY)},
        "layers": [{"name": r.name, "activation": r.activation_type, "weight_std": r.weight_std, "xavier_std": r.xavier_std, "he_std": r.he_std} for r in rows],
        "recurrent": _recurrent_spectra(model),
    }
    total = float(norms.total)
    data = RunData(
        steps=np.array([0]),
        scalars={"norm_before": np.array([total]), "norm_after": np.array([total]), "threshold": np.array([np.inf]),
                 "clipped": np.array([0.0]), "skipped": np.array([0.0]), "loss": np.array([float(loss.detach())])},
        module_names=module_names,
        grad_norms=np.array([[per_module[m] for m in module_names]]),
        records=records,
        vectors=vectors,
        meta=meta,
    )
    return data, rows, series


def _next_activation(layer: str, order: list[str], named: dict[str, nn.Module]) -> str | None:
    """The first activation module run after ``layer`` and before the next layer with parameters."""
    if layer not in order:
        return None
    for name in order[order.index(layer) + 1 :]:
        module = named[name]
        if isinstance(module, BOUNDED + RELU_FAMILY):
            return name
        if any(True for _ in module.parameters(recurse=False)):
            return None
    return None

