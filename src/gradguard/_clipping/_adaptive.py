"""Clippers whose threshold follows the history of gradient norms: AutoClip and ZClip.

Both keep their statistics in device tensors and update them with ``torch.where(finite, ...)``:
a non-finite norm never enters them, and no step waits on the host to decide that.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from gradguard._clipping._base import ClipStats, Clipper, check_state_keys, make_stats, scale_
from gradguard._clipping._fixed import TORCH_CLIP_EPS
from gradguard._clipping._quantile import LogHistogramQuantile
from gradguard._errors import check_choice, check_fraction, check_int, check_positive
from gradguard._grads import GradBatch
from gradguard._norms import GradNorms


def _clip_to(batch: GradBatch, total: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Global-norm clipping to a device-side target; returns (norm after, clipped)."""
    coef = torch.clamp(target / (total + TORCH_CLIP_EPS), max=1.0).to(total.dtype)
    scale_(batch, coef)
    return total * coef, coef < 1.0


class AutoClip(Clipper):
    """Clip the total gradient norm to the ``percentile``-th percentile of all norms seen so far.

    The history includes the current step, as in the paper. It is summarised by a log-spaced
    histogram, so memory and per-step cost stay constant however long training runs; the
    threshold is within a factor ``10 ** (1 / bins_per_decade)`` (1.2% by default) of the exact
    percentile's bracketing order statistics (see ``_quantile``).

    Args:
        percentile: p in [0, 100]. The paper recommends 10 (clip to the 10th percentile).
        norm_type: norm used for the history and for clipping.
        decay: optional forgetting factor in (0, 1) per step; None keeps the whole history as in
            the paper.
        low, high, bins_per_decade: histogram layout (norms outside [low, high] land in edge bins).

    References:
        Seetharaman, Wichern, Pardo, Le Roux. AutoClip: Adaptive Gradient Clipping for Source
        Separation Networks. MLSP 2020 (arXiv:2007.14469).
    """

    name = "autoclip"

    def __init__(
        self,
        percentile: float = 10.0,
        *,
        norm_type: float | str = 2.0,
        decay: float | None = None,
        low: float = 1e-12,
        high: float = 1e12,
        bins_per_decade: int = 200,
    ):
        from gradguard._errors import check_norm_type

        self.percentile = check_fraction("percentile", percentile, low=0.0, high=100.0, closed=True)
        self.norm_type = check_norm_type(norm_type)
        self.decay = None if decay is None else check_fraction("decay", decay)
        check_int("bins_per_decade", bins_per_decade, minimum=1)
        self._history = LogHistogramQuantile(check_positive("low", low), check_positive("high", high), bins_per_decade, self.decay)

    def apply(self, batch: GradBatch, norms: GradNorms) -> ClipStats:
        total = norms.total
        self._history.update(total, norms.finite)
        threshold = self._history.quantile(self.percentile / 100.0, total.device).to(total.dtype)
        after, clipped = _clip_to(batch, total, threshold)
        return make_stats(total, after, threshold, clipped)

    def quantile_now(self) -> Tensor:
        """The current threshold without adding a sample (inf before the first finite step)."""
        device = self._history.counts.device if self._history.counts is not None else torch.device("cpu")
        return self._history.quantile(self.percentile / 100.0, device)

    def state_dict(self) -> dict[str, Any]:
        return {"histogram": self._history.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_state_keys("AutoClip", state, {"histogram"})
        self._history.load_state_dict(state["histogram"])

    def _config(self):
        return {"percentile": self.percentile, "norm_type": self.norm_type, "decay": self.decay}


class ZClip(Clipper):
    """Clip norms that are outliers against an exponential moving mean and variance of past norms.

    After ``warmup_steps`` finite steps, mean and variance start as those of the warm-up norms.
    Then each step, with z = (g - mean) / (std + eps):

    * ``mode="zscore"`` (default): when z > ``z_thresh`` the norm is clipped to
      ``mean + z_thresh * std / (z / z_thresh)`` (``clip_option="adaptive_scaling"``: larger
      outliers are clipped harder) or to ``mean`` (``clip_option="mean"``), times ``clip_factor``.
    * ``mode="percentile"``: the norm is always clipped to ``mean + z_thresh * std``.

    The EMAs are then updated with the clipped norm (or the raw norm when not clipped):
    mean <- a mean + (1 - a) x;  var <- a var + (1 - a) (x - mean)^2. ``max_grad_norm`` adds a
    fixed cap, also during warm-up. None (our default) keeps ZClip purely adaptive; the
    reference code's signature defaults it to 1.0 while its README table says None.

    The ``threshold`` reported is the clip target on a clipped step, otherwise the level at which
    clipping would start (``mean + z_thresh * std``, capped by ``max_grad_norm``).

    References:
        Kumar, Owen, Chowdhury, Gura. ZClip: Adaptive Spike Mitigation for LLM Pre-Training. 2025
        (arXiv:2504.02507).
    """

    name = "zclip"

    def __init__(
        self,
        alpha: float = 0.97,
        z_thresh: float = 2.5,
        warmup_steps: int = 25,
        *,
        max_grad_norm: float | None = None,
        eps: float = 1e-6,
        mode: str = "zscore",
        clip_option: str = "adaptive_scaling",
        clip_factor: float = 1.0,
        skip_update_on_spike: bool = False,
    ):
        self.alpha = check_fraction("alpha", alpha)
        self.z_thresh = check_positive("z_thresh", z_thresh)
        self.warmup_steps = check_int("warmup_steps", warmup_steps, minimum=1)
        self.max_grad_norm = None if max_grad_norm is None else check_positive("max_grad_norm", max_grad_norm)
        self.eps = check_positive("eps", eps)
        self.mode = check_choice("mode", mode, ("zscore", "percentile"))
        self.clip_option = check_choice("clip_option", clip_option, ("adaptive_scaling", "mean"))
        self.clip_factor = check_positive("clip_factor", clip_factor)
        self.skip_update_on_spike = bool(skip_update_on_spike)
        self._state: dict[str, Tensor] | None = None

    def _tensors(self, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        if self._state is None:
            self._state = {
                "count": torch.zeros((), dtype=torch.long, device=device),
                "buffer": torch.zeros(self.warmup_steps, dtype=dtype, device=device),
                "mean": torch.zeros((), dtype=dtype, device=device),
                "var": torch.zeros((), dtype=dtype, device=device),
            }
        elif self._state["mean"].device != device:
            self._state = {k: v.to(device) for k, v in self._state.items()}
        return self._state

    def apply(self, batch: GradBatch, norms: GradNorms) -> ClipStats:
        g, finite = norms.total, norms.finite
        s = self._tensors(g.device, g.dtype)
        warm = s["count"] < self.warmup_steps
        cap = math.inf if self.max_grad_norm is None else self.max_grad_norm
        std = s["var"].clamp(min=0).sqrt()
        trigger = s["mean"] + self.z_thresh * std
        if self.mode == "percentile":
            spike = g > trigger
            target = trigger
        else:
            z = (g - s["mean"]) / (std + self.eps)
            spike = z > self.z_thresh
            if self.clip_option == "adaptive_scaling":
                target = (s["mean"] + self.z_thresh * std / (z / self.z_thresh)) * self.clip_factor
            else:
                target = s["mean"] * self.clip_factor
        spike = spike & ~warm
        adaptive = torch.where(spike, target, torch.full_like(g, math.inf))
        bound = adaptive.clamp(max=cap)
        after, clipped = _clip_to(batch, g, bound)
        threshold = torch.where(spike, bound, torch.where(warm, torch.full_like(g, cap), trigger.clamp(max=cap)))
        self._update(s, g, finite, warm, spike, target)
        return make_stats(g, after, threshold, clipped)

    def _update(self, s, g, finite, warm, spike, target) -> None:
        # Warm-up: store the norm; when the buffer fills, mean and variance start from it.
        store = finite & warm
        slot = s["count"].clamp(max=self.warmup_steps - 1).reshape(1)
        s["buffer"].index_copy_(0, slot, torch.where(store, g, s["buffer"].index_select(0, slot)[0]).reshape(1))
        s["count"] += store.long()
        filled = store & (s["count"] == self.warmup_steps)
        mean0, var0 = s["buffer"].mean(), s["buffer"].var(unbiased=False)
        # After warm-up: EMA update with the clipped value (the raw norm when not clipped).
        x = torch.where(spike, target, g)
        mean1 = self.alpha * s["mean"] + (1 - self.alpha) * x
        var1 = self.alpha * s["var"] + (1 - self.alpha) * (x - mean1) ** 2
        ema = finite & ~warm
        if self.skip_update_on_spike:
            ema = ema & ~spike
        s["mean"].copy_(torch.where(filled, mean0, torch.where(ema, mean1, s["mean"])))
        s["var"].copy_(torch.where(filled, var0, torch.where(ema, var1, s["var"])))

    def state_dict(self) -> dict[str, Any]:
        if self._state is None:
            return {"count": torch.zeros((), dtype=torch.long), "buffer": torch.zeros(self.warmup_steps), "mean": torch.zeros(()), "var": torch.zeros(())}
        return {k: v.detach().clone() for k, v in self._state.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_state_keys("ZClip", state, {"count", "buffer", "mean", "var"})
        buffer = torch.as_tensor(state["buffer"])
        if buffer.shape != (self.warmup_steps,):
            raise ValueError(f"ZClip state has a warm-up buffer of {tuple(buffer.shape)}, this ZClip has warmup_steps={self.warmup_steps}.")
        device = self._state["mean"].device if self._state is not None else buffer.device
        self._state = {k: torch.as_tensor(v).detach().clone().to(device) for k, v in state.items()}
        self._state["count"] = self._state["count"].long()

    def _config(self):
        return {"alpha": self.alpha, "z_thresh": self.z_thresh, "warmup_steps": self.warmup_steps, "max_grad_norm": self.max_grad_norm}
