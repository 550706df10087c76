"""gradguard: show, diagnose and fix vanishing and exploding gradients in PyTorch.

    import gradguard as gg
    guard = gg.Guard(model, clip=1.0)      # or "autoclip", "zclip", gg.AGC(), ...
    loss.backward()
    info = guard.step(optimizer)           # unscale -> measure -> clip -> skip NaN/Inf -> step
"""

from gradguard._clipping import AGC, AutoClip, ClipNorm, ClipStats, ClipTensorNorm, ClipValue, Clipper, ZClip, make_clipper
from gradguard._errors import GradGuardError, GradGuardWarning, MissingDependencyError, NonFiniteGradientError
from gradguard._finding import Finding
from gradguard._guard import Guard, StepInfo
from gradguard._history import History
from gradguard._inspect import Diagnosis, LayerRow, inspect
from gradguard._probes._locate import locate_nonfinite
from gradguard._norms import GradNorms, grad_norms, group_norms, unitwise_norm
from gradguard._store import RunStore
from gradguard._version import __version__ as __version__
from gradguard import rnn

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
