"""Spike detection and forensics: which module moved first when the norm or the loss jumped.

The detector works on the host, on the rows Guard already copies there every ``log_every`` steps
(total norm, loss, per-module norms), so it adds nothing to a training step. For each step it:

* scores log(total gradient norm) and log(loss) against exponential moving averages of their
  mean and variance (a z-score; logs because norms vary by factors, not by offsets);
* scores every module's log gradient norm the same way;
* keeps the step's total norm, loss, module norms and z-scores in a ring buffer of the last
  ``capacity`` steps.

A *spike* is a z-score above ``z_thresh`` after ``warmup`` steps, or a non-finite norm. Outliers
enter the averages winsorised to ``z_thresh`` standard deviations, so one spike does not mask the
next and a lasting change of level is absorbed in a few dozen steps. When a spike is found, the
buffer is dumped into the run store and the *first deviating module* is named: the module with
the largest z-score at the earliest step, within the ``LOOKBACK_STEPS`` before the spike, at
which a module's z-score rose above ``module_z``. Update norms are not in the buffer (measuring
them needs a copy of the parameters); the update ratios of probe steps in the window are part
of the dump.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

# A z-score of 6 on log norms is a factor of e^(6 sigma): far outside the step-to-step noise of a
# healthy run (the EMA's sigma is typically 0.1-0.3 in log units), so false alarms stay rare.
SPIKE_Z = 6.0
# Modules move together in a spike; the first to rise past 3 sigma is where it started.
MODULE_Z = 3.0
# How far before the spike to look for that first rise: spikes build up over a few steps, and a
# longer look-back would pick up unrelated noise.
LOOKBACK_STEPS = 8
# Steps before z-scores are trusted: the averages need a few dozen samples.
WARMUP_STEPS = 20
# EMA weight of the newest sample: an effective window of about 1 / (1 - 0.95) = 20 steps.
EMA_ALPHA = 0.95
VAR_FLOOR = 1e-4  # log-units^2: keeps z finite when a run is perfectly steady


@dataclass(frozen=True)
class SpikeReport:
    step: int
    trigger: str  # "grad_norm", "loss" or "nonfinite"
    z: float
    first_module: str | None
    first_step: int | None
    first_z: float | None
    dump: dict


class SpikeDetector:
    """Host-side EMA z-scores and the forensic ring buffer (see module docstring)."""

    def __init__(self, module_names: list[str], capacity: int = 64, z_thresh: float = SPIKE_Z, module_z: float = MODULE_Z, warmup: int = WARMUP_STEPS):
        self.module_names = list(module_names)
        self.z_thresh, self.module_z, self.warmup = z_thresh, module_z, warmup
        n = 2 + len(self.module_names)  # total norm, loss, then one entry per module
        self._mean, self._var = np.zeros(n), np.zeros(n)
        self._seen = np.zeros(n, dtype=bool)
        self._count = 0
        # rows: step, total, loss, spike, z_total, z_loss, module norms (m), module z (m)
        self._ring: deque[np.ndarray] = deque(maxlen=capacity)

    def score(self, steps: np.ndarray, totals: np.ndarray, losses: np.ndarray, module_norms: np.ndarray) -> np.ndarray:
        """Score consecutive steps; returns (steps x 3): spike flag, z of the total norm, z of the loss."""
        out = np.zeros((len(steps), 3))
        for i, step in enumerate(steps.tolist()):
            out[i] = self._update(step, float(totals[i]), float(losses[i]), np.asarray(module_norms[i], dtype=float))
        return out

    def _update(self, step: int, total: float, loss: float, module_norms: np.ndarray) -> np.ndarray:
        values = np.concatenate([[total, loss], module_norms])
        with np.errstate(divide="ignore", invalid="ignore"):
            x = np.log(np.where(values > 0, values, np.nan))
        # Losses are scored in log space too, so only positive ones (most are) take part.
        has = np.isfinite(x)
        std = np.sqrt(np.maximum(self._var, VAR_FLOOR))
        trusted = self._count >= self.warmup
        z = np.where(has & self._seen & trusted, (np.nan_to_num(x) - self._mean) / std, 0.0)
        nonfinite = not math.isfinite(total)
        spike = bool((z[:2] > self.z_thresh).any()) or nonfinite
        # EMA update; outliers enter winsorised to z_thresh sigma; an entry's first sample initialises it.
        bound = self.z_thresh * std
        clipped = np.clip(np.nan_to_num(x), self._mean - bound, self._mean + bound)
        new_mean = np.where(self._seen, EMA_ALPHA * self._mean + (1 - EMA_ALPHA) * clipped, np.nan_to_num(x))
        new_var = np.where(self._seen, EMA_ALPHA * self._var + (1 - EMA_ALPHA) * (clipped - new_mean) ** 2, 0.0)
        self._mean = np.where(has, new_mean, self._mean)
        self._var = np.where(has, new_var, self._var)
        self._seen |= has
        self._count += 0 if nonfinite else 1
        scores = np.array([float(spike), z[0], z[1]])
        self._ring.append(np.concatenate([[step], values[:2], scores, values[2:], z[2:]]))
        return scores

    def forensics(self, spike_step: int, trigger: str, z: float) -> SpikeReport:
        """Name the first module to move, from the ring buffer, and dump the buffer."""
        ring = np.array(list(self._ring)) if self._ring else np.zeros((0, 6 + 2 * len(self.module_names)))
        ring = ring[ring[:, 0] <= spike_step]
        m = len(self.module_names)
        norms, zs = ring[:, 6 : 6 + m], ring[:, 6 + m :]
        first_module = first_step = first_z = None
        recent = [row for row in range(len(ring)) if ring[row, 0] > spike_step - LOOKBACK_STEPS]
        for row in recent:
            rising = np.where(np.isfinite(zs[row]), zs[row], -np.inf)
            if m and rising.max() > self.module_z:
                j = int(np.argmax(rising))
                first_module, first_step, first_z = self.module_names[j], int(ring[row, 0]), float(zs[row, j])
                break
        if first_module is None and m and len(ring):
            last = norms[-1]
            if not np.isfinite(last).all():  # a non-finite spike: the first module whose norm broke
                j = int(np.argmax(~np.isfinite(last)))
                first_module, first_step, first_z = self.module_names[j], int(ring[-1, 0]), math.nan
        dump = {
            "steps": ring[:, 0].astype(int).tolist(),
            "total_norm": ring[:, 1].tolist(),
            "loss": ring[:, 2].tolist(),
            "z_total": ring[:, 4].tolist(),
            "z_loss": ring[:, 5].tolist(),
            "modules": self.module_names,
            "module_norms": norms.tolist(),
            "module_z": zs.tolist(),
        }
        return SpikeReport(spike_step, trigger, z, first_module, first_step, first_z, dump)
