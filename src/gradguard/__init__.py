"""gradguard: show, diagnose and fix vanishing and exploding gradients in PyTorch.

    import gradguard as gg
    guard = gg.Guard(model, clip=1.0)      # or "autoclip", "zclip", gg.AGC(), ...
    loss.backward()
    info = guard.step(optimizer)           # unscale -> measure -> clip -> skip NaN/Inf -> step
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from gradguard._version import __version__  # noqa: F401 - eager: the CLI's --version reads it

# Public name -> the private module that defines it. Imported on first use (PEP 562), so that
# `gradguard --help` and `--version`, which live in this package, do not pay for importing torch.
_EXPORTS = {
    "AGC": "gradguard._clipping",
    "AutoClip": "gradguard._clipping",
    "ClipNorm": "gradguard._clipping",
    "ClipStats": "gradguard._clipping",
    "ClipTensorNorm": "gradguard._clipping",
    "ClipValue": "gradguard._clipping",
    "Clipper": "gradguard._clipping",
    "ZClip": "gradguard._clipping",
    "make_clipper": "gradguard._clipping",
    "GradGuardError": "gradguard._errors",
    "GradGuardWarning": "gradguard._errors",
    "MissingDependencyError": "gradguard._errors",
    "NonFiniteGradientError": "gradguard._errors",
    "Finding": "gradguard._finding",
    "Guard": "gradguard._guard",
    "StepInfo": "gradguard._guard",
    "History": "gradguard._history",
    "Diagnosis": "gradguard._inspect",
    "LayerRow": "gradguard._inspect",
    "inspect": "gradguard._inspect",
    "locate_nonfinite": "gradguard._probes._locate",
    "GradNorms": "gradguard._norms",
    "grad_norms": "gradguard._norms",
    "group_norms": "gradguard._norms",
    "unitwise_norm": "gradguard._norms",
    "RunStore": "gradguard._store",
}
_SUBMODULES = ("rnn",)

__all__ = [
    "AGC",
    "AutoClip",
    "ClipNorm",
    "ClipStats",
    "ClipTensorNorm",
    "ClipValue",
    "Clipper",
    "Diagnosis",
    "Finding",
    "GradGuardError",
    "GradGuardWarning",
    "GradNorms",
    "Guard",
    "History",
    "LayerRow",
    "MissingDependencyError",
    "NonFiniteGradientError",
    "RunStore",
    "StepInfo",
    "ZClip",
    "grad_norms",
    "group_norms",
    "inspect",
    "locate_nonfinite",
    "make_clipper",
    "rnn",
    "unitwise_norm",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"gradguard.{name}")
    else:
        raise AttributeError(f"module 'gradguard' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from gradguard import rnn
    from gradguard._clipping import (
        AGC,
        AutoClip,
        ClipNorm,
        Clipper,
        ClipStats,
        ClipTensorNorm,
        ClipValue,
        ZClip,
        make_clipper,
    )
    from gradguard._errors import (
        GradGuardError,
        GradGuardWarning,
        MissingDependencyError,
        NonFiniteGradientError,
    )
    from gradguard._finding import Finding
    from gradguard._guard import Guard, StepInfo
    from gradguard._history import History
    from gradguard._inspect import Diagnosis, LayerRow, inspect
    from gradguard._probes._locate import locate_nonfinite
    from gradguard._norms import GradNorms, grad_norms, group_norms, unitwise_norm
    from gradguard._store import RunStore
