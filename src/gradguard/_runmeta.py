"""What a run records about itself (the store's ``meta`` table and ``RunData.meta``): its name,
the clipper, the model's layer and activation types, the versions, the recurrent spectra."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gradguard._version import __version__


def run_meta(model: nn.Module, *, name: str, clipper: Any, norm_type: float, nonfinite: str, module_names: list[str]) -> dict[str, Any]:
    """The metadata known when a Guard is built."""
    clip = None
    if clipper is not None:
        clip = {"name": clipper.name, "repr": repr(clipper)}
        for key in ("max_norm", "clip_value"):
            if hasattr(clipper, key):
                clip[key] = getattr(clipper, key)
    layers, activations = {}, {}
    for mname, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            layers[mname or "(root)"] = type(module).__name__
        elif not list(module.children()) and mname:
            activations[mname] = type(module).__name__
    return {
        "name": name,
        "kind": "training",
        "norm_type": norm_type,
        "clipper": clip,
        "nonfinite": nonfinite,
        "module_names": list(module_names),
        "layer_types": layers,
        "activation_types": activations,
        "gradguard_version": __version__,
        "torch_version": torch.__version__,
    }


def recurrent_spectra(model: nn.Module) -> dict[str, Any]:
    """Pascanu et al.'s spectral numbers for each Elman recurrent module (first layer and direction)."""
    from gradguard.rnn._simple import SimpleRNN
    from gradguard.rnn._jacobian import pascanu_condition

    out = {}
    for mname, module in model.named_modules():
        if isinstance(module, (SimpleRNN, nn.RNN)):
            if not all(bool(torch.isfinite(p).all()) for p in module.parameters()):
                continue  # a diverged run: there is no spectrum to speak of
            out[mname or "(root)"] = pascanu_condition(module)[0].as_dict()
    return out
