"""Clippers whose threshold follows the history of gradient norms: AutoClip and ZClip.

Each has two paths over one state. Gradients in CPU memory: the total norm is read once as a
Python number (free: there is no device to wait for) and the statistics are updated in plain
floats and numpy views, so a call costs the norm pass plus a few microseconds, and gradients are
multiplied only on a step that clips. Gradients on an accelerator: the statistics are device
tensors updated with ``torch.where(finite, ...)``; no step waits on the host. A non-finite norm
never enters the statistics on either path. Tests check that the paths agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from gradguard._clipping._base import ClipStats, Clipper, check_state_keys, make_stats, scale_
from gradguard._clipping._fixed import TORCH_CLIP_EPS
from gradguard._clipping._quantile import LogHistogramQuantile, SortedPrefix
from gradguard._clipping._args import autoclip_args, zclip_args
from gradguard._grads import GradBatch
from gradguard._norms import GradNorms

EXACT_SAMPLES = 10_000  # AutoClip's percentile is exact over this many first norms


def _on_host(total: Tensor) -> bool:
    return total.device.type == "cpu"


def _clip_to(batch: GradBatch, total: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Global-norm clipping to a device-side target; returns (norm after, clipped).

    All-zero gradients (total 0) are never reported as clipped: multiplying zeros changes nothing.
    """
    coef = torch.clamp(target / (total + TORCH_CLIP_EPS), max=1.0).to(total.dtype)
    scale_(batch, coef)
    return total * coef, (coef < 1.0) & (total > 0)


def _clip_to_host(batch: GradBatch, total: Tensor, g: float, bound: float) -> ClipStats:
    """The host path of ``_clip_to``: ``g`` is ``total`` as a Python float, ``bound`` the target."""
    coef = bound / (g + TORCH_CLIP_EPS)
    if not coef < 1.0:
        coef = 1.0 if coef >= 1.0 else math.nan  # a NaN norm poisons the gradients, as on the device path
    if coef != 1.0:
        for _, _, _, grads in batch.group_grads():
            torch._foreach_mul_(grads, coef)
    clipped = coef < 1.0 and g > 0
    dtype = total.dtype
    return ClipStats(total, total * coef if coef != 1.0 else total, torch.tensor(bound, dtype=dtype), torch.tensor(clipped), torch.tensor(coef, dtype=dtype))


def _check_tensor(owner: str, key: str, value: Any, shape: tuple[int, ...], *, integer: bool = False) -> Tensor:
    """A state entry as a tensor of ``shape``: finite and >= 0, else a ValueError naming it."""
    if not isinstance(value, Tensor):
        raise ValueError(f"{owner} state[{key!r}] must be a tensor, got {type(value).__name__}. Pass a dict produced by {owner}.state_dict().")
    if integer and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
        raise ValueError(f"{owner} state[{key!r}] must be an integer tensor, got dtype {value.dtype}.")
    if not integer and not value.is_floating_point():
        raise ValueError(f"{owner} state[{key!r}] must be a floating-point tensor, got dtype {value.dtype}.")
    if tuple(value.shape) != shape:
        raise ValueError(f"{owner} state[{key!r}] must have shape {shape}, got {tuple(value.shape)}.")
    bad = (~torch.isfinite(value) if not integer else torch.zeros_like(value, dtype=torch.bool)) | (value < 0)
    if bad.any():
        first = value.reshape(-1)[bad.reshape(-1)][0].item()
        raise ValueError(f"{owner} state[{key!r}] must be finite and >= 0, got {first!r}. The state is corrupt: save it again with {owner}.state_dict().")
    return value.detach().clone()


class AutoClip(Clipper):
    """Clip the total gradient norm to the ``percentile``-th percentile of all norms seen so far.

    The history includes the current step, as in the paper. For the first ``exact_samples``
    finite norms (10,000 by default) the threshold is the exact percentile, ``np.percentile``'s
    linear method over every norm so far, from a sorted buffer of bounded size. After that it
    comes from a log-spaced histogram of all norms, so memory and per-step cost stay constant
    however long training runs: the threshold is then within a factor ``10 ** (1 /
    bins_per_decade)`` (1.2% by default) of the exact percentile's bracketing order statistics
    (see ``_quantile``).

    Args:
        percentile: p in [0, 100]. The paper recommends 10 (clip to the 10th percentile).
        norm_type: norm used for the history and for clipping.
        decay: optional forgetting factor in (0, 1) per step; None keeps the whole history as in
            the paper. With a decay every threshold comes from the histogram (a weighted history
            has no exact sorted form).
        exact_samples: how many first norms the exact buffer holds (0 turns it off).
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
        exact_samples: int = EXACT_SAMPLES,
        low: float = 1e-12,
        high: float = 1e12,
        bins_per_decade: int = 200,
    ):
        args = autoclip_args(percentile, norm_type, decay, exact_samples, low, high, bins_per_decade)
        self.percentile, self.norm_type, self.decay, self.exact_samples = (args[k] for k in ("percentile", "norm_type", "decay", "exact_samples"))
        self._history = LogHistogramQuantile(args["low"], args["high"], args["bins_per_decade"], self.decay)
        self._exact = SortedPrefix(max(self.exact_samples, 1))
        self._seen: float | None = None  # host path: norms counted so far (None: recount from the histogram)

    def apply(self, batch: GradBatch, norms: GradNorms) -> ClipStats:
        total = norms.total
        if _on_host(total):
            return self._apply_host(batch, total)
        self._seen = None
        q = self.percentile / 100.0
        keep = norms.finite
        n = self._history.count().to(total.device)
        if self.exact_samples:
            self._exact.insert(total, keep, n)
        self._history.update(total, keep)
        n = n + keep.to(n.dtype)
        threshold = self._history.quantile(q, total.device)
        if self.exact_samples:
            threshold = torch.where(n <= self.exact_samples, self._exact.quantile(q, n), threshold)
        threshold = threshold.to(total.dtype)
        after, clipped = _clip_to(batch, total, threshold)
        return make_stats(total, after, threshold, clipped)

    def _apply_host(self, batch: GradBatch, total: Tensor) -> ClipStats:
        g = float(total)
        n = self._seen if self._seen is not None else float(self._history.count())
        if math.isfinite(g):
            if self.exact_samples:
                self._exact.insert_host(g, int(n))
            self._history.update_host(g)
            n = n * self.decay + 1.0 if self.decay is not None else n + 1.0
        self._seen = n
        q = self.percentile / 100.0
        if self.exact_samples and n <= self.exact_samples:
            bound = self._exact.quantile_host(q, int(n))
        else:
            bound = self._history.quantile_host(q)
        return _clip_to_host(batch, total, g, bound)

    def quantile_now(self) -> Tensor:
        """The current threshold without adding a sample (inf before the first finite step)."""
        device = self._history.counts.device if self._history.counts is not None else torch.device("cpu")
        n = self._history.count().to(device)
        q = self.percentile / 100.0
        value = self._history.quantile(q, device)
        if self.exact_samples:
            value = torch.where(n <= self.exact_samples, self._exact.quantile(q, n), value)
        return value

    def state_dict(self) -> dict[str, Any]:
        n = int(min(float(self._history.count()), self.exact_samples))
        exact = self._exact.values[:n] if self._exact.values is not None else torch.zeros(0, dtype=torch.float64)
        return {"histogram": self._history.state_dict(), "exact": exact.detach().cpu().clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_state_keys("AutoClip", state, {"histogram", "exact"})
        exact = state["exact"]
        if not isinstance(exact, Tensor) or not exact.is_floating_point() or exact.dim() != 1:
            raise ValueError(f"AutoClip state['exact'] must be a 1-D floating-point tensor, got {getattr(exact, 'dtype', type(exact).__name__)} of shape {tuple(getattr(exact, 'shape', ()))}.")
        exact = exact.detach().to("cpu", torch.float64)
        if not (torch.isfinite(exact).all() and (exact >= 0).all() and (exact[1:] >= exact[:-1]).all()):
            raise ValueError("AutoClip state['exact'] must hold finite norms >= 0 in ascending order; it does not. The state is corrupt: save it again with AutoClip.state_dict().")
        old = self._history.counts
        self._history.load_state_dict(state["histogram"])
        n = float(self._history.count())
        expected = int(min(n, self.exact_samples))
        if self.exact_samples and (n != round(n) or len(exact) != expected):
            self._history.counts = old
            raise ValueError(f"AutoClip state['exact'] holds {len(exact)} norms, but the histogram counts {n:g} and exact_samples={self.exact_samples}, so it must hold {expected}. Load a state saved by an AutoClip with the same exact_samples.")
        device = self._history.counts.device
        values = torch.full((max(self.exact_samples, 1),), math.inf, dtype=torch.float64)
        values[: len(exact)] = exact[: len(values)]
        self._exact.values = values.to(device)
        self._seen = None

    def _config(self):
        return {"percentile": self.percentile, "norm_type": self.norm_type, "decay": self.decay}


class ZClip(Clipper):
    """Clip norms that are outliers against an exponential moving mean and variance of past norms.

    During the first ``warmup_steps`` finite steps the norms are collected and clipped to
    ``max_grad_norm`` only; then mean and variance start as those of the warm-up norms. After
    that, each step, with z = (g - mean) / (std + eps):

    * ``mode="zscore"`` (default): when z > ``z_thresh`` the norm is clipped to
      ``mean + z_thresh * std / (z / z_thresh)`` (``clip_option="adaptive_scaling"``: larger
      outliers are clipped harder) or to ``mean`` (``clip_option="mean"``), times ``clip_factor``.
    * ``mode="percentile"``: the norm is always clipped to ``mean + z_thresh * std``.

    ``max_grad_norm`` caps the bound at every step (1.0 by default, as in the ``zclip``
    package; None turns the cap off and keeps ZClip purely adaptive). The EMAs are then updated
    with the adaptive clip value (or the raw norm when it is not an outlier):
    mean <- a mean + (1 - a) x;  var <- a var + (1 - a) (x - mean)^2.

    The ``threshold`` reported is the clip target on a clipped step, otherwise the level at which
    clipping would start (``mean + z_thresh * std``, capped by ``max_grad_norm``).

    References:
        Kumar, Owen, Chowdhury, Gura. ZClip: Adaptive Spike Mitigation for LLM Pre-Training. 2025
        (arXiv:2504.02507); defaults as in the authors' ``zclip`` package 1.0.0.
    """

    name = "zclip"

    def __init__(
        self,
        alpha: float = 0.97,
        z_thresh: float = 2.5,
        warmup_steps: int = 25,
        *,
        max_grad_norm: float | None = 1.0,
        eps: float = 1e-6,
        mode: str = "zscore",
        clip_option: str = "adaptive_scaling",
        clip_factor: float = 1.0,
        skip_update_on_spike: bool = False,
    ):
        args = zclip_args(alpha, z_thresh, warmup_steps, max_grad_norm, eps, mode, clip_option, clip_factor, skip_update_on_spike)
        for name, value in args.items():
            setattr(self, name, value)
        self._state: dict[str, Tensor] | None = None  # device path
        self._host: dict[str, Any] | None = None  # host path: count, buffer (list), mean, var as Python numbers

    # ---------------------------------------------------------------- state in either form
    def _tensors(self, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        if self._host is not None:
            self._state, self._host = self._host_to_tensors(self._host, dtype), None
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

    def _hosted(self) -> dict[str, Any]:
        if self._host is None:
            if self._state is None:
                self._host = {"count": 0, "buffer": [], "mean": 0.0, "var": 0.0, "dtype": None}
            else:
                s = {k: v.detach().cpu() for k, v in self._state.items()}
                count = int(s["count"])
                self._host = {"count": count, "buffer": s["buffer"][:count].tolist(), "mean": float(s["mean"]), "var": float(s["var"]), "dtype": s["mean"].dtype}
                self._state = None
        return self._host

    def _host_to_tensors(self, h: dict[str, Any], dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        dtype = h["dtype"] or dtype or torch.float32
        buffer = torch.zeros(self.warmup_steps, dtype=dtype)
        buffer[: len(h["buffer"])] = torch.tensor(h["buffer"], dtype=torch.float64).to(dtype)
        return {"count": torch.tensor(h["count"], dtype=torch.long), "buffer": buffer, "mean": torch.tensor(h["mean"], dtype=dtype), "var": torch.tensor(h["var"], dtype=dtype)}

    # ---------------------------------------------------------------- host path
    def _apply_host(self, batch: GradBatch, total: Tensor) -> ClipStats:
        g = float(total)
        h = self._hosted()
        if h["dtype"] is None:
            h["dtype"] = total.dtype
        cap = math.inf if self.max_grad_norm is None else self.max_grad_norm
        if h["count"] < self.warmup_steps:
            if math.isfinite(g):
                h["buffer"].append(g)
                h["count"] += 1
                if h["count"] == self.warmup_steps:
                    buf = h["buffer"]
                    h["mean"] = mean = math.fsum(buf) / len(buf)
                    h["var"] = math.fsum((x - mean) ** 2 for x in buf) / len(buf)
            return _clip_to_host(batch, total, g, cap)
        mean, std = h["mean"], math.sqrt(max(h["var"], 0.0))
        trigger = mean + self.z_thresh * std
        target = None
        if self.mode == "percentile":
            if g > trigger:
                target = trigger
        else:
            z = (g - mean) / (std + self.eps)
            if z > self.z_thresh:
                target = (mean + self.z_thresh * std / (z / self.z_thresh)) * self.clip_factor if self.clip_option == "adaptive_scaling" else mean * self.clip_factor
        stats = _clip_to_host(batch, total, g, min(target, cap) if target is not None else cap)
        if target is None:
            stats = ClipStats(stats.norm_before, stats.norm_after, torch.tensor(min(trigger, cap), dtype=total.dtype), stats.clipped, stats.coef)
        if math.isfinite(g) and not (self.skip_update_on_spike and target is not None):
            x = target if target is not None else g
            h["mean"] = self.alpha * mean + (1 - self.alpha) * x
            h["var"] = self.alpha * h["var"] + (1 - self.alpha) * (x - h["mean"]) ** 2
        return stats

    # ---------------------------------------------------------------- device path
    def apply(self, batch: GradBatch, norms: GradNorms) -> ClipStats:
        g, finite = norms.total, norms.finite
        if _on_host(g):
            return self._apply_host(batch, g)
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

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        if self._host is not None:
            return self._host_to_tensors(self._host)
        if self._state is None:
            return {"count": torch.zeros((), dtype=torch.long), "buffer": torch.zeros(self.warmup_steps), "mean": torch.zeros(()), "var": torch.zeros(())}
        return {k: v.detach().clone() for k, v in self._state.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_state_keys("ZClip", state, {"count", "buffer", "mean", "var"})
        count = _check_tensor("ZClip", "count", state["count"], (), integer=True)
        if int(count) > self.warmup_steps:
            raise ValueError(f"ZClip state['count'] is {int(count)}, more than this ZClip's warmup_steps={self.warmup_steps}; construct ZClip with the warmup_steps the state was saved with.")
        buffer = state["buffer"]
        if isinstance(buffer, Tensor) and buffer.shape != (self.warmup_steps,):
            raise ValueError(f"ZClip state has a warm-up buffer of {tuple(buffer.shape)}, this ZClip has warmup_steps={self.warmup_steps}.")
        buffer = _check_tensor("ZClip", "buffer", buffer, (self.warmup_steps,))
        mean = _check_tensor("ZClip", "mean", state["mean"], ())
        var = _check_tensor("ZClip", "var", state["var"], ())
        device = self._state["mean"].device if self._state is not None else buffer.device
        self._state = {"count": count.long().to(device), "buffer": buffer.to(device), "mean": mean.to(buffer.dtype).to(device), "var": var.to(buffer.dtype).to(device)}
        self._host = None

    def _config(self):
        return {"alpha": self.alpha, "z_thresh": self.z_thresh, "warmup_steps": self.warmup_steps, "max_grad_norm": self.max_grad_norm}
