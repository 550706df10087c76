"""The six clippers of ``gradguard._clipping``, in ``keras.ops``, with their state in optimizer variables.

Each one is built from the PyTorch clipper of the same name (``resolve`` takes the same ``clip``
values as ``gg.Guard``) and computes the same numbers from the same gradients; the tests check
that they agree. Two layout differences follow from Keras itself:

* Keras kernels are stored input-first, ``(in, out)`` for ``Dense`` and ``(h, w, in, out)`` for
  ``Conv2D``, so AGC's output units lie on the **last** axis, where PyTorch has them first.
* Adaptive state (AutoClip's exact buffer and histogram, ZClip's moving statistics) lives in non-trainable
  optimizer variables: a changing threshold is a variable update, never a retrace, and the state
  is saved and restored with the optimizer.

Every state update is ``where(finite, new, old)``: a non-finite step leaves the state bitwise as
it was, and no step waits for the host to decide that.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any

import keras
from keras import ops

from gradguard._clipping._args import agc_args, autoclip_args, norm_args, value_args, zclip_args
from gradguard.keras._measure import Measured

TORCH_CLIP_EPS = 1e-6  # clip_grad_norm_'s (and ClipNorm's) eps in max_norm / (norm + eps)
GRAD_NORM_FLOOR = 1e-6  # AGC's floor on a unit's gradient norm, as in gradguard.AGC
EXACT_SAMPLES = 10_000  # AutoClip's percentile is exact over this many first norms, as in gradguard.AutoClip


def _check_l2(owner: str, p: float, norm_type) -> float:
    """``p``, the checked ``norm_type``, when it is 2 (Keras measures L2 norms only)."""
    if p != 2.0:
        raise ValueError(f"gradguard.keras measures L2 norms only; got {owner}(norm_type={norm_type!r}). Use norm_type=2.0.")
    return p


def _scale(grads, coef):
    return [None if g is None else g * ops.cast(coef, g.dtype) for g in grads]


def _false():
    return ops.zeros((), dtype="bool")


class KerasClipper:
    """Base: ``build`` creates state variables on the optimizer, ``apply`` clips and reports.

    ``apply`` returns (clipped grads, norm_after, threshold, clipped), all scalars but the grads.
    """

    name = ""

    def build(self, optimizer, variables) -> None:
        self.names = [v.path for v in variables]

    def apply(self, grads, variables, m: Measured):  # pragma: no cover - abstract
        raise NotImplementedError


class ClipNorm(KerasClipper):
    """g <- g * min(1, max_norm / (||g|| + 1e-6)), as ``gg.ClipNorm`` and ``clip_grad_norm_``."""

    name = "norm"

    def __init__(self, max_norm: float, norm_type: float | str = 2.0):
        self.max_norm, p = norm_args(max_norm, norm_type)
        self.norm_type = _check_l2("ClipNorm", p, norm_type)

    def apply(self, grads, variables, m):
        coef = ops.minimum(self.max_norm / (m.total + TORCH_CLIP_EPS), 1.0)
        return _scale(grads, coef), m.total * coef, ops.cast(self.max_norm, m.total.dtype), coef < 1.0


class ClipTensorNorm(KerasClipper):
    """Each gradient to its own norm, with ``tf.clip_by_norm``'s arithmetic: g * c / max(||g||, c)."""

    name = "tensor_norm"

    def __init__(self, max_norm: float, norm_type: float | str = 2.0):
        self.max_norm, p = norm_args(max_norm, norm_type)
        self.norm_type = _check_l2("ClipTensorNorm", p, norm_type)

    def apply(self, grads, variables, m):
        c = self.max_norm
        out, after = [], []
        for i, g in enumerate(grads):
            n = m.vector[i]
            denom = ops.maximum(n, c)
            out.append(None if g is None else (g * ops.cast(c, g.dtype)) / ops.cast(denom, g.dtype))
            after.append(n * (c / denom))
        after = ops.sqrt(ops.sum(ops.square(ops.stack(after))))
        return out, after, ops.cast(c, m.total.dtype), ops.any(m.vector > c)


class ClipValue(KerasClipper):
    """Clamp every element to [-c, c]; the norm after clamping takes one more read."""

    name = "value"

    def __init__(self, clip_value: float):
        self.clip_value = value_args(clip_value)

    def apply(self, grads, variables, m):
        c = self.clip_value
        out, max_abs, after_sq = [], [], []
        for g in grads:
            if g is None:
                out.append(None)
                continue
            max_abs.append(ops.cast(ops.max(ops.abs(g)), m.total.dtype))
            clipped = ops.clip(g, -c, c)
            out.append(clipped)
            after_sq.append(ops.cast(ops.sum(ops.square(ops.cast(clipped, m.total.dtype))), m.total.dtype))
        if not max_abs:
            return out, m.total, ops.cast(c, m.total.dtype), _false()
        return out, ops.sqrt(ops.sum(ops.stack(after_sq))), ops.cast(c, m.total.dtype), ops.max(ops.stack(max_abs)) > c


def _unit_norm(x):
    """Norm per output unit: Keras kernels keep output units on the last axis."""
    if len(x.shape) <= 1:
        return ops.sqrt(ops.sum(ops.square(x)))
    return ops.sqrt(ops.sum(ops.square(x), axis=tuple(range(len(x.shape) - 1)), keepdims=True))


def _layer_of(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else path


class AGC(KerasClipper):
    """Unit-wise adaptive gradient clipping (Brock et al. 2021, arXiv:2102.06171, section 4).

    G_i <- G_i * min(1, lambda * max(||W_i||, eps) / max(||G_i||, 1e-6)) per output unit i.
    ``exclude`` holds glob patterns on variable paths and the token "head": the layer of the last
    matrix (or kernel) variable, which the paper leaves unclipped.
    """

    name = "agc"

    def __init__(self, clipping: float = 0.01, eps: float = 1e-3, exclude: str | tuple[str, ...] = ("head",)):
        self.clipping, self.eps, self.exclude = agc_args(clipping, eps, exclude)

    def build(self, optimizer, variables) -> None:
        super().build(optimizer, variables)
        skip = set()
        if "head" in self.exclude:
            matrices = [v.path for v in variables if len(v.shape) >= 2]
            if matrices:
                head = _layer_of(matrices[-1])
                skip.update(v.path for v in variables if _layer_of(v.path) == head)
        patterns = [p for p in self.exclude if p != "head"]
        skip.update(v.path for v in variables if any(fnmatch.fnmatchcase(v.path, p) for p in patterns))
        self.skipped = skip

    def apply(self, grads, variables, m):
        dtype = m.total.dtype
        out, after_sq, clipped = [], [], []
        for i, (g, v) in enumerate(zip(grads, variables)):
            if g is None or v.path in self.skipped:
                out.append(g)
                after_sq.append(m.squares[i])
                continue
            g_norm = _unit_norm(ops.cast(g, dtype))
            w_norm = _unit_norm(ops.cast(v.value, dtype))
            coef = ops.minimum(self.clipping * ops.maximum(w_norm, self.eps) / ops.maximum(g_norm, GRAD_NORM_FLOOR), 1.0)
            out.append(g * ops.cast(coef, g.dtype))
            after_sq.append(ops.sum(ops.square(g_norm * coef)))
            clipped.append(ops.any(coef < 1.0))
        any_clipped = ops.any(ops.stack(clipped)) if clipped else _false()
        return out, ops.sqrt(ops.sum(ops.stack(after_sq))), ops.cast(self.clipping, dtype), any_clipped


def _clip_to(grads, total, target):
    coef = ops.minimum(target / (total + TORCH_CLIP_EPS), 1.0)
    return _scale(grads, coef), total * coef, coef < 1.0


class AutoClip(KerasClipper):
    """Clip to the p-th percentile of all past norms (Seetharaman et al. 2020, arXiv:2007.14469).

    The same two-part history as ``gg.AutoClip`` (``gradguard._clipping._quantile``): for the
    first ``exact_samples`` finite norms the threshold is the exact percentile (``np.percentile``'s
    linear method) over a sorted buffer of fixed size, padded with +inf; after that it comes from a
    log-spaced histogram (a float64 count per bin), constant memory and cost per step. Both live
    in non-trainable optimizer variables of fixed shape. With a ``decay`` every threshold comes
    from the histogram, as in ``gg.AutoClip``.
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
        self.percentile, self.decay, self.exact_samples = args["percentile"], args["decay"], args["exact_samples"]
        self.norm_type = _check_l2("AutoClip", args["norm_type"], norm_type)
        self.bins_per_decade = args["bins_per_decade"]
        # The layout formula of gradguard._clipping._quantile.LogHistogramQuantile: both bin a norm alike.
        self.log_low = math.log10(args["low"])
        self.n_bins = int(round((math.log10(args["high"]) - self.log_low) * self.bins_per_decade))
        self.q = self.percentile / 100.0

    def build(self, optimizer, variables) -> None:
        super().build(optimizer, variables)
        add = optimizer.add_variable
        self.counts = add((self.n_bins,), initializer="zeros", dtype="float64", aggregation="only_first_replica", name="autoclip_counts")
        size = max(self.exact_samples, 1)
        self.exact = add((size,), initializer=keras.initializers.Constant(math.inf), dtype="float64", aggregation="only_first_replica", name="autoclip_exact")

    def apply(self, grads, variables, m):
        total = m.total
        keep = ops.cast(m.finite, "float64")
        counts = ops.convert_to_tensor(self.counts)
        seen = ops.sum(counts)  # finite norms before this step (exact: no decay when the buffer is on)
        if self.decay is not None:
            counts = counts * (1.0 - keep * (1.0 - self.decay))
        x = ops.cast(total, "float64")
        position = (ops.log10(ops.maximum(x, 1e-300)) - self.log_low) * self.bins_per_decade
        position = ops.nan_to_num(position, nan=0.0, posinf=self.n_bins - 1, neginf=0.0)
        index = ops.cast(ops.clip(ops.floor(position), 0, self.n_bins - 1), "int32")
        counts = counts + ops.one_hot(index, self.n_bins, dtype="float64") * keep
        self.counts.assign(counts)
        threshold = self._histogram_quantile(counts)
        if self.exact_samples:
            n = seen + keep
            exact = self._insert(ops.convert_to_tensor(self.exact), x, ops.logical_and(m.finite, seen < self.exact_samples))
            self.exact.assign(exact)
            threshold = ops.where(n <= self.exact_samples, self._exact_quantile(exact, n), threshold)
        threshold = ops.cast(threshold, total.dtype)
        out, after, clipped = _clip_to(grads, total, threshold)
        return out, after, threshold, clipped

    def _insert(self, buf, x, keep):
        """``x`` into the ascending buffer where ``keep``, shifting the larger entries up one slot."""
        size = buf.shape[0]
        k = ops.cast(ops.searchsorted(buf, ops.reshape(x, (1,)), side="right"), "int32")[0]
        index = ops.arange(size, dtype="int32")
        moved = ops.where(index < k, buf, ops.where(index == k, x, ops.roll(buf, 1)))
        return ops.where(keep, moved, buf)

    def _exact_quantile(self, buf, n):
        """np.percentile's linear method over the first ``n`` entries (numpy's ``_lerp``)."""
        last = ops.maximum(n - 1.0, 0.0)
        r = self.q * last
        lo = ops.floor(r)
        hi = ops.minimum(lo + 1.0, last)
        top = buf.shape[0] - 1
        a = ops.take(buf, ops.clip(ops.cast(lo, "int32"), 0, top))
        b = ops.take(buf, ops.clip(ops.cast(hi, "int32"), 0, top))
        t = r - lo
        value = ops.where(t >= 0.5, b - (b - a) * (1.0 - t), a + (b - a) * t)
        return ops.where(n > 0, value, math.inf)

    def _histogram_quantile(self, counts):
        cumulative = ops.cumsum(counts)
        n = cumulative[-1]
        rank = ops.maximum(self.q * (n - 1.0), 0.0)
        k = ops.minimum(ops.cast(ops.searchsorted(cumulative, ops.reshape(rank, (1,)), side="right"), "int32"), self.n_bins - 1)[0]
        below = ops.where(k > 0, ops.take(cumulative, ops.maximum(k - 1, 0)), 0.0)
        in_bin = ops.maximum(ops.take(counts, k), 1e-12)
        fraction = ops.clip((rank - below + 0.5) / in_bin, 0.0, 1.0)
        value = ops.power(10.0, self.log_low + (ops.cast(k, "float64") + fraction) / self.bins_per_decade)
        return ops.where(n > 0, value, math.inf)


class ZClip(KerasClipper):
    """EMA z-score clipping (Kumar et al. 2025, arXiv:2504.02507), as ``gg.ZClip``: see its docstring.

    During warm-up the norm is clipped to ``max_grad_norm`` only (1.0 by default, the ``zclip``
    package's default; None: no cap), which also caps the adaptive bound afterwards.
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

    def build(self, optimizer, variables) -> None:
        super().build(optimizer, variables)
        add = optimizer.add_variable
        self.count = add((), initializer="zeros", dtype="int32", aggregation="only_first_replica", name="zclip_count")
        self.buffer = add((self.warmup_steps,), initializer="zeros", dtype="float32", aggregation="only_first_replica", name="zclip_buffer")
        self.mean = add((), initializer="zeros", dtype="float32", aggregation="only_first_replica", name="zclip_mean")
        self.var = add((), initializer="zeros", dtype="float32", aggregation="only_first_replica", name="zclip_var")

    def apply(self, grads, variables, m):
        g = ops.cast(m.total, "float32")
        finite = m.finite
        count, buffer = ops.convert_to_tensor(self.count), ops.convert_to_tensor(self.buffer)
        mean, var = ops.convert_to_tensor(self.mean), ops.convert_to_tensor(self.var)
        warm = count < self.warmup_steps
        cap = math.inf if self.max_grad_norm is None else float(self.max_grad_norm)
        std = ops.sqrt(ops.maximum(var, 0.0))
        trigger = mean + self.z_thresh * std
        if self.mode == "percentile":
            spike, target = g > trigger, trigger
        else:
            z = (g - mean) / (std + self.eps)
            spike = z > self.z_thresh
            if self.clip_option == "adaptive_scaling":
                target = (mean + self.z_thresh * std / (z / self.z_thresh)) * self.clip_factor
            else:
                target = mean * self.clip_factor
        spike = ops.logical_and(spike, ops.logical_not(warm))
        bound = ops.minimum(ops.where(spike, target, math.inf), cap)
        out, after, clipped = _clip_to(grads, g, bound)
        threshold = ops.where(spike, bound, ops.where(warm, cap, ops.minimum(trigger, cap)))
        # Warm-up: store the norm; when the buffer fills, mean and variance start from it.
        store = ops.logical_and(finite, warm)
        slot = ops.one_hot(ops.minimum(count, self.warmup_steps - 1), self.warmup_steps, dtype="bool")
        buffer = ops.where(ops.logical_and(slot, store), g, buffer)
        count = count + ops.cast(store, "int32")
        filled = ops.logical_and(store, count == self.warmup_steps)
        mean0 = ops.mean(buffer)
        var0 = ops.mean(ops.square(buffer - mean0))
        # After warm-up: EMA update with the clipped value (the raw norm when not clipped).
        x = ops.where(spike, target, g)
        mean1 = self.alpha * mean + (1 - self.alpha) * x
        var1 = self.alpha * var + (1 - self.alpha) * ops.square(x - mean1)
        ema = ops.logical_and(finite, ops.logical_not(warm))
        if self.skip_update_on_spike:
            ema = ops.logical_and(ema, ops.logical_not(spike))
        self.count.assign(count)
        self.buffer.assign(buffer)
        self.mean.assign(ops.where(filled, mean0, ops.where(ema, mean1, mean)))
        self.var.assign(ops.where(filled, var0, ops.where(ema, var1, var)))
        return out, ops.cast(after, m.total.dtype), ops.cast(threshold, m.total.dtype), clipped


def resolve(clip: Any) -> KerasClipper | None:
    """``clip`` as ``gg.Guard`` takes it (None, a number, a registry name, a clipper object)."""
    from gradguard import _clipping as torch_clipping
    from gradguard._stepinfo import resolve_clipper

    c = resolve_clipper(clip)
    if c is None:
        return None
    if getattr(c, "norm_type", 2.0) != 2.0:
        raise ValueError(f"gradguard.keras measures L2 norms only; got {c!r} with norm_type={c.norm_type}. Use norm_type=2.0.")
    if isinstance(c, torch_clipping.ClipNorm):
        return ClipNorm(c.max_norm)
    if isinstance(c, torch_clipping.ClipTensorNorm):
        return ClipTensorNorm(c.max_norm)
    if isinstance(c, torch_clipping.ClipValue):
        return ClipValue(c.clip_value)
    if isinstance(c, torch_clipping.AGC):
        return AGC(c.clipping, c.eps, c.exclude)
    if isinstance(c, torch_clipping.AutoClip):
        kc = AutoClip(c.percentile, decay=c.decay, exact_samples=c.exact_samples, bins_per_decade=c._history.bins_per_decade)
        # gg.AutoClip keeps its histogram layout, not low/high: copy it, so both bin every norm alike.
        kc.log_low, kc.n_bins = c._history.log_low, c._history.n_bins
        return kc
    if isinstance(c, torch_clipping.ZClip):
        options = {k: getattr(c, k) for k in ("max_grad_norm", "eps", "mode", "clip_option", "clip_factor", "skip_update_on_spike")}
        return ZClip(c.alpha, c.z_thresh, c.warmup_steps, **options)
    raise TypeError(
        f"gradguard.keras has no Keras version of the clipper {type(c).__name__}; use one of "
        "'norm', 'tensor_norm', 'value', 'agc', 'autoclip', 'zclip'."
    )
