"""Gradient clippers and their registry."""

from __future__ import annotations

import inspect
from typing import Any

from gradguard._clipping._adaptive import AutoClip, ZClip
from gradguard._clipping._agc import AGC
from gradguard._clipping._base import ClipStats, Clipper, unclipped_stats
from gradguard._clipping._fixed import ClipNorm, ClipTensorNorm, ClipValue
from gradguard._errors import unknown_name

CLIPPERS: dict[str, type[Clipper]] = {cls.name: cls for cls in (ClipNorm, ClipTensorNorm, ClipValue, AGC, AutoClip, ZClip)}

# Other spellings people use for the same clipper.
_ALIASES = {
    "global_norm": "norm",
    "clip_norm": "norm",
    "grad_norm": "norm",
    "per_tensor": "tensor_norm",
    "clip_tensor_norm": "tensor_norm",
    "clip_value": "value",
    "clip_by_value": "value",
    "adaptive": "agc",
    "adaptive_grad_clip": "agc",
    "auto_clip": "autoclip",
    "z_clip": "zclip",
}


def _canonical(name: str) -> str:
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    for registered, cls in CLIPPERS.items():
        if key == cls.__name__.lower():
            return registered
    return _ALIASES.get(key, key)


def make_clipper(name: str, **kwargs: Any) -> Clipper:
    """Build a clipper from its registry name: "norm", "tensor_norm", "value", "agc", "autoclip", "zclip".

    Example:
        >>> import gradguard as gg
        >>> gg.make_clipper("norm", max_norm=1.0)
        ClipNorm(max_norm=1.0, norm_type=2.0)
    """
    if not isinstance(name, str):
        raise TypeError(f"clipper name must be a string such as 'norm' or 'autoclip', got {type(name).__name__}.")
    key = _canonical(name)
    if key not in CLIPPERS:
        raise unknown_name("clipper", name, CLIPPERS)
    cls = CLIPPERS[key]
    signature = inspect.signature(cls.__init__)
    accepted = [p for p in signature.parameters if p != "self"]
    unexpected = sorted(set(kwargs) - set(accepted))
    if unexpected:
        raise ValueError(f"{cls.__name__} does not take {', '.join(map(repr, unexpected))}. It takes: {', '.join(accepted)}.")
    required = [
        p.name
        for p in signature.parameters.values()
        if p.name != "self" and p.default is inspect.Parameter.empty and p.name not in kwargs
    ]
    if required:
        example = ", ".join(f"{r}=..." for r in required)
        raise ValueError(f"clipper {name!r} ({cls.__name__}) needs {', '.join(map(repr, required))}: make_clipper({name!r}, {example}).")
    return cls(**kwargs)


__all__ = [
    "AGC",
    "CLIPPERS",
    "AutoClip",
    "ClipNorm",
    "ClipStats",
    "ClipTensorNorm",
    "ClipValue",
    "Clipper",
    "ZClip",
    "make_clipper",
    "unclipped_stats",
]
