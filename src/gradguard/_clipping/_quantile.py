"""A streaming quantile of positive numbers with constant memory and per-update cost, on the device.

AutoClip (Seetharaman et al. 2020) clips to a percentile of every gradient norm seen so far. Its
reference keeps the whole history and calls ``np.percentile`` on it each step, so the step gets
slower as training goes on. Here the history is a histogram over log10(x) with ``bins_per_decade``
bins between ``low`` and ``high``: an update adds one count, a query is a cumulative sum and a
``searchsorted``, all device tensor ops (no host sync), independent of how many steps came before.

Accuracy: np.percentile (linear method) interpolates between the order statistics x_(floor r)
and x_(ceil r), with r = q (n - 1). The estimate lies in the bin that holds x_(floor r), so it is
within a factor f = 10 ** (1 / bins_per_decade) of [x_(floor r), x_(ceil r)] (f = 1.0116 for the
default 200 bins per decade). Values outside [low, high] are counted in the edge bins.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


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

    def count(self) -> Tensor:
        return self.counts.sum() if self.counts is not None else torch.zeros((), dtype=torch.float64)

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
        counts = torch.as_tensor(state["counts"], dtype=torch.float64)
        if counts.shape != (self.n_bins,) or state["log_low"] != self.log_low or state["bins_per_decade"] != self.bins_per_decade:
            raise ValueError(
                "AutoClip state was saved with a different histogram layout "
                f"(bins={tuple(counts.shape)}, log_low={state['log_low']}, bins_per_decade={state['bins_per_decade']}); "
                f"this one has bins={self.n_bins}, log_low={self.log_low}, bins_per_decade={self.bins_per_decade}. "
                "Construct AutoClip with the same low/high/bins_per_decade."
            )
        device = self.counts.device if self.counts is not None else counts.device
        self.counts = counts.clone().to(device)
