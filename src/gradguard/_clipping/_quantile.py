"""Percentiles of a growing set of positive numbers: exact while it is small, bounded after.

AutoClip (Seetharaman et al. 2020) clips to a percentile of every gradient norm seen so far. Its
reference keeps the whole history and calls ``np.percentile`` on it each step, so the step gets
slower as training goes on. Here the history has two parts:

* ``SortedPrefix``: the first ``capacity`` samples (10,000 by default), kept sorted. While no more
  than ``capacity`` samples have been seen, the percentile is exact: ``np.percentile``'s default
  linear method, to rounding.
* ``LogHistogramQuantile``: every sample, counted in a histogram over log10(x) with
  ``bins_per_decade`` bins between ``low`` and ``high``. Used once more than ``capacity`` samples
  have been seen. An update adds one count, a query is a cumulative sum and a ``searchsorted``:
  constant memory and cost however long training runs.

Accuracy of the histogram: np.percentile (linear) interpolates between the order statistics
x_(floor r) and x_(ceil r), r = q (n - 1). The estimate lies in the bin that holds x_(floor r), so
it is within a factor f = 10 ** (1 / bins_per_decade) of [x_(floor r), x_(ceil r)] (f = 1.0116
for the default 200 bins per decade). Values outside [low, high] are counted in the edge bins.

Both keep their state in tensors and have two update paths on the same state: numpy views for
tensors in CPU memory (where reading a number costs nothing and a handful of small torch ops
costs more than the clipping itself), and torch ops without any host synchronisation for
tensors on an accelerator. Tests check that the two paths agree.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def lerp(a, b, t):
    """np.percentile's interpolation (numpy's ``_lerp``): exact at both ends, monotone in t."""
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t


class SortedPrefix:
    """The first ``capacity`` samples in ascending order, padded with +inf; exact percentiles."""

    def __init__(self, capacity: int = 10_000):
        self.capacity = int(capacity)
        self.values: Tensor | None = None

    def tensor(self, device: torch.device) -> Tensor:
        if self.values is None:
            self.values = torch.full((self.capacity,), math.inf, dtype=torch.float64, device=device)
        elif self.values.device != device:
            self.values = self.values.to(device)
        return self.values

    # host path: ``n`` (samples seen before this one) is a Python number
    def insert_host(self, x: float, n: int) -> None:
        if n >= self.capacity:
            return
        buf = self.tensor(torch.device("cpu")).numpy()
        k = int(np.searchsorted(buf[:n], x, side="right"))
        buf[k + 1 : n + 1] = buf[k:n].copy()
        buf[k] = x

    def quantile_host(self, q: float, n: int) -> float:
        if n <= 0:
            return math.inf
        buf = self.tensor(torch.device("cpu")).numpy()
        r = q * (n - 1)
        lo = math.floor(r)
        hi = min(lo + 1, n - 1)
        return float(lerp(buf[lo], buf[hi], r - lo))

    # device path: ``n`` and ``keep`` are 0-dim tensors
    def insert(self, x: Tensor, keep: Tensor, n: Tensor) -> None:
        buf = self.tensor(x.device)
        x = x.to(torch.float64)
        k = torch.searchsorted(buf, x.reshape(1), right=True)
        index = torch.arange(self.capacity, device=buf.device)
        moved = torch.where(index < k, buf, torch.where(index == k, x, buf.roll(1)))
        buf.copy_(torch.where(keep & (n < self.capacity), moved, buf))

    def quantile(self, q: float, n: Tensor) -> Tensor:
        buf = self.tensor(n.device)
        r = q * (n - 1).clamp(min=0)
        lo = r.floor()
        hi = torch.minimum(lo + 1, (n - 1).clamp(min=0))
        a = buf.index_select(0, lo.long().clamp(0, self.capacity - 1).reshape(1))[0]
        b = buf.index_select(0, hi.long().clamp(0, self.capacity - 1).reshape(1))[0]
        t = r - lo
        value = torch.where(t >= 0.5, b - (b - a) * (1 - t), a + (b - a) * t)
        return torch.where(n > 0, value, torch.full_like(value, math.inf))


class LogHistogramQuantile:
    def __init__(self, low: float = 1e-12, high: float = 1e12, bins_per_decade: int = 200, decay: float | None = None):
        if not (0 < low < high):
            raise ValueError(f"need 0 < low < high, got low={low!r}, high={high!r}.")
        self.log_low = math.log10(low)
        self.bins_per_decade = int(bins_per_decade)
        self.n_bins = int(round((math.log10(high) - self.log_low) * self.bins_per_decade))
        self.decay = decay
        self.counts: Tensor | None = None

    def _counts(self, device: torch.device) -> Tensor:
        if self.counts is None:
            self.counts = torch.zeros(self.n_bins, dtype=torch.float64, device=device)
        elif self.counts.device != device:
            self.counts = self.counts.to(device)
        return self.counts

    def count(self) -> Tensor:
        return self.counts.sum() if self.counts is not None else torch.zeros((), dtype=torch.float64)

    # host path
    def bin_host(self, x: float) -> int:
        position = (math.log10(max(x, 1e-300)) - self.log_low) * self.bins_per_decade
        return min(max(math.floor(position), 0), self.n_bins - 1)

    def update_host(self, x: float) -> None:
        counts = self._counts(torch.device("cpu")).numpy()
        if self.decay is not None:
            counts *= self.decay
        counts[self.bin_host(x)] += 1.0

    def quantile_host(self, q: float) -> float:
        counts = self._counts(torch.device("cpu")).numpy()
        cumulative = np.cumsum(counts)
        n = float(cumulative[-1])
        if n <= 0:
            return math.inf
        rank = max(q * (n - 1), 0.0)
        k = min(int(np.searchsorted(cumulative, rank, side="right")), self.n_bins - 1)
        below = float(cumulative[k - 1]) if k > 0 else 0.0
        fraction = min(max((rank - below + 0.5) / max(float(counts[k]), 1e-12), 0.0), 1.0)
        return 10.0 ** (self.log_low + (k + fraction) / self.bins_per_decade)

    # device path
    def update(self, x: Tensor, keep: Tensor) -> None:
        """Add ``x`` (0-dim, > 0) where the 0-dim bool ``keep`` is True; a no-op otherwise."""
        counts = self._counts(x.device)
        keep = keep.to(torch.float64)
        if self.decay is not None:
            # Exponential forgetting: old counts fade by `decay` per kept update.
            counts.mul_(1.0 - keep * (1.0 - self.decay))
        position = (torch.log10(x.to(torch.float64).clamp(min=1e-300)) - self.log_low) * self.bins_per_decade
        position = torch.nan_to_num(position, nan=0.0, posinf=self.n_bins - 1, neginf=0.0)
        index = position.floor().clamp(0, self.n_bins - 1).long().reshape(1)
        counts.index_add_(0, index, keep.reshape(1))

    def quantile(self, q: float, device: torch.device) -> Tensor:
        """The q-quantile (0 <= q <= 1) as a 0-dim float64 tensor; +inf before any update."""
        counts = self._counts(device)
        cumulative = counts.cumsum(0)
        n = cumulative[-1]
        rank = (q * (n - 1)).clamp(min=0)
        # index_select with 1-element index tensors: indexing with a 0-dim tensor would read it on the host.
        k = torch.searchsorted(cumulative, rank.reshape(1), right=True).clamp(max=self.n_bins - 1)
        below = torch.where(k > 0, cumulative.index_select(0, (k - 1).clamp(min=0)), torch.zeros_like(k, dtype=n.dtype))[0]
        in_bin = counts.index_select(0, k)[0].clamp(min=1e-12)
        k = k[0]
        # Spread a bin's samples evenly in log space: sample j of c sits at (j + 0.5) / c of the bin.
        fraction = ((rank - below + 0.5) / in_bin).clamp(0.0, 1.0)
        value = torch.pow(10.0, self.log_low + (k.to(torch.float64) + fraction) / self.bins_per_decade)
        return torch.where(n > 0, value, torch.full_like(value, math.inf))

    def state_dict(self) -> dict:
        counts = self.counts if self.counts is not None else torch.zeros(self.n_bins, dtype=torch.float64)
        return {"counts": counts.detach().clone(), "log_low": self.log_low, "bins_per_decade": self.bins_per_decade}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or set(state) != {"counts", "log_low", "bins_per_decade"}:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"AutoClip state['histogram'] must be a dict with keys ['bins_per_decade', 'counts', 'log_low'], got {got}. Pass a dict produced by AutoClip.state_dict().")
        counts = state["counts"]
        if not isinstance(counts, Tensor) or not counts.is_floating_point():
            raise ValueError(f"AutoClip state['histogram']['counts'] must be a floating-point tensor, got {getattr(counts, 'dtype', type(counts).__name__)}.")
        counts = counts.detach().to(torch.float64)
        if counts.shape != (self.n_bins,) or state["log_low"] != self.log_low or state["bins_per_decade"] != self.bins_per_decade:
            raise ValueError(
                "AutoClip state was saved with a different histogram layout "
                f"(bins={tuple(counts.shape)}, log_low={state['log_low']}, bins_per_decade={state['bins_per_decade']}); "
                f"this one has bins={self.n_bins}, log_low={self.log_low}, bins_per_decade={self.bins_per_decade}. "
                "Construct AutoClip with the same low/high/bins_per_decade."
            )
        bad = ~torch.isfinite(counts) | (counts < 0)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(f"AutoClip state['histogram']['counts'] must be finite and >= 0; bin {i} holds {counts[i].item()!r} ({int(bad.sum())} bad bin(s)). The state is corrupt: save it again with AutoClip.state_dict().")
        device = self.counts.device if self.counts is not None else counts.device
        self.counts = counts.clone().to(device)
