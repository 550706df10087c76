"""How other tools measure and clip, written out plainly so they can be timed beside gradguard.

These are our own short re-implementations of each tool's measuring pattern, not copies of
its code:

* ``per_tensor_item_norms``: one norm per gradient read to the host one at a time, the pattern
  of Lightning's ``grad_norm`` (a device scalar per parameter, turned into a host tensor) and of
  the AutoClip reference code (``p.grad.norm().item() ** 2`` summed in Python).
* ``histograms_64``: a 64-bin histogram per gradient the way W&B's ``watch`` builds one: a copy
  of the gradient, two finiteness reads, min and max read to the host, ``torch.histc``, and the
  bins copied to the host.
* ``AutoClipReference``: AutoClip as in the paper's sample code: the total norm from a per-tensor
  loop, appended to a Python list of every norm so far, ``np.percentile`` over that list, then
  ``clip_grad_norm_`` to it.

The PyPI packages ``zclip`` and ``autoclip`` and timm's AGC are imported when installed
(``pip install -e ".[bench]"``); ``optional`` says why one is missing.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn


def per_tensor_item_norms(model: nn.Module, norm_type: float = 2.0) -> tuple[dict[str, float], float]:
    norms = {name: p.grad.norm(norm_type).item() for name, p in model.named_parameters() if p.grad is not None}
    total = math.fsum(v**norm_type for v in norms.values()) ** (1.0 / norm_type)
    return norms, total


def histograms_64(model: nn.Module, bins: int = 64) -> dict[str, Any]:
    out = {}
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        g = p.grad.detach().clone()
        if g.is_cuda and g.dtype in (torch.float16, torch.bfloat16):
            g = g.float()
        if (~torch.isfinite(g)).all().item():  # nothing finite: no histogram
            continue
        if not torch.isfinite(g).all():
            g = g[torch.isfinite(g)]  # non-finite values are dropped, as the tool does
        lo, hi = g.min().item(), g.max().item()
        out[name] = (torch.histc(g, bins=bins, min=lo, max=hi).cpu(), lo, hi)
    return out


class AutoClipReference:
    """Clip to the ``percentile``-th percentile of every total norm seen so far (Seetharaman et al. 2020)."""

    def __init__(self, model: nn.Module, percentile: float = 10.0):
        self.params = [p for p in model.parameters()]
        self.percentile = percentile
        self.history: list[float] = []

    def __call__(self) -> float:
        total = math.sqrt(sum(p.grad.norm(2).item() ** 2 for p in self.params if p.grad is not None))
        self.history.append(total)
        threshold = float(np.percentile(self.history, self.percentile))
        torch.nn.utils.clip_grad_norm_(self.params, threshold)
        return total


def optional(name: str) -> tuple[Any, str | None]:
    """(the peer's callable or class, None) when it imports, else (None, why not)."""
    try:
        if name == "zclip":
            from zclip import ZClip

            return ZClip, None
        if name == "autoclip":
            from autoclip.torch import QuantileClip

            return QuantileClip, None
        if name == "timm_agc":
            from timm.utils.agc import adaptive_clip_grad

            return adaptive_clip_grad, None
    except Exception as exc:  # ImportError, or a broken dependency failing at import time
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
    raise ValueError(f"unknown peer {name!r}")
