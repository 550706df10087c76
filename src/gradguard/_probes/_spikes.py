"""Spike detection and forensics: which module moved first when the norm or the loss jumped.

The detector works on the host, on the rows Guard already copies there every ``log_every`` steps
(total norm, loss, per-module norms), so it adds nothing to a training step. For each step it:

* scores log(total gradient norm) and log(loss) against exponential moving averages of their
  mean and variance (a z-score; logs because norms vary by factors, not by offsets);
* keeps the step's total norm, loss, z-scores and module norms in a ring buffer of the last
  ``capacity`` steps.

A *spike* is a z-score above ``z_thresh`` after ``warmup`` steps, or a non-finite norm. Outliers
enter the averages winsorised to ``z_thresh`` standard deviations, so one spike does not mask the
next and a lasting change of level is absorbed in a few dozen steps.

When a spike is found, the buffer is dumped into the run store and the *first deviating module*
is named: every module's log gradient norm is scored the same way, by replaying the averages over
the buffer, and the first module is the one with the largest z-score at the earliest step, within
the ``LOOKBACK_STEPS`` before the spike, at which a module's z-score rose above ``module_z``.
Module scores are computed only then, not every step: the two trigger scores are two scalars a
step in plain Python, while scoring hundreds of modules every step cost more than the rest of
Guard's step on a small model. The steps of the buffer before the look-back window warm the
replayed averages up (the default buffer of 64 steps leaves 56, about three EMA windows). Update
norms are not in the buffer (measuring them needs a copy of the parameters); the update ratios of
probe steps in the window are part of the dump.
"""

from __future__ import annotations

import math
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


class _ScalarEma:
    """EMA mean and variance of one log-scale series, in plain Python floats (a few microseconds a step)."""

    __slots__ = ("mean", "var", "seen")

    def __init__(self) -> None:
        self.mean, self.var, self.seen = 0.0, 0.0, False

    def score(self, value: float, trusted: bool, z_thresh: float) -> float:
        """z-score of ``value`` against the averages so far, then fold it in (winsorised)."""
        if not (value > 0.0 and math.isfinite(value)):
            return 0.0  # non-finite or non-positive (a loss can be): not scored, averages unchanged
        x = math.log(value)
        if not self.seen:
            self.mean, self.var, self.seen = x, 0.0, True
            return 0.0
        std = math.sqrt(max(self.var, VAR_FLOOR))
        z = (x - self.mean) / std if trusted else 0.0
        clipped = min(max(x, self.mean - z_thresh * std), self.mean + z_thresh * std)
        self.mean = EMA_ALPHA * self.mean + (1 - EMA_ALPHA) * clipped
        self.var = EMA_ALPHA * self.var + (1 - EMA_ALPHA) * (clipped - self.mean) ** 2
        return z


def ema_zscores(values: np.ndarray, z_thresh: float, warmup: int) -> np.ndarray:
    """z-scores of every row of ``values`` (steps x series, log scale applied here) against EMAs of
    the rows before it, with the winsorised update of ``_ScalarEma``; 0 before ``warmup`` rows
    and where a value is non-finite or not positive. The vectorised twin of ``_ScalarEma``."""
    rows, n = values.shape
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(np.where(values > 0, values, np.nan))
    has = np.isfinite(logs)
    logs = np.where(has, logs, 0.0)
    mean, var, seen = np.zeros(n), np.zeros(n), np.zeros(n, dtype=bool)
    out = np.zeros((rows, n))
    for i in range(rows):
        x, ok = logs[i], has[i]
        std = np.sqrt(np.maximum(var, VAR_FLOOR))
        if i >= warmup:
            out[i] = np.where(ok & seen, (x - mean) / std, 0.0)
        clipped = np.clip(x, mean - z_thresh * std, mean + z_thresh * std)
        new_mean = np.where(seen, EMA_ALPHA * mean + (1 - EMA_ALPHA) * clipped, x)
        new_var = np.where(seen, EMA_ALPHA * var + (1 - EMA_ALPHA) * (clipped - new_mean) ** 2, 0.0)
        mean, var = np.where(ok, new_mean, mean), np.where(ok, new_var, var)
        seen |= ok
    return out


class SpikeDetector:
    """Host-side EMA z-scores and the forensic ring buffer (see module docstring)."""

    def __init__(self, module_names: list[str], capacity: int = 64, z_thresh: float = SPIKE_Z, module_z: float = MODULE_Z, warmup: int = WARMUP_STEPS):
        self.module_names = list(module_names)
        self.z_thresh, self.module_z, self.warmup = z_thresh, module_z, warmup
        self._total, self._loss = _ScalarEma(), _ScalarEma()
        self._count = 0  # finite steps scored
        # The ring: row r holds step, total norm, loss, spike flag, z of the total, z of the loss,
        # and module norms; written a chunk at a time, oldest row at ``_next`` once full.
        self._capacity = capacity
        self._rows = np.zeros((capacity, 6 + len(self.module_names)))
        self._next = 0
        self._filled = 0

    def score(self, steps: np.ndarray, totals: np.ndarray, losses: np.ndarray, module_norms: np.ndarray) -> np.ndarray:
        """Score consecutive steps; returns (steps x 3): spike flag, z of the total norm, z of the loss."""
        rows = []
        for total, loss in zip(np.asarray(totals, dtype=float).tolist(), np.asarray(losses, dtype=float).tolist()):
            trusted = self._count >= self.warmup
            z_total = self._total.score(total, trusted, self.z_thresh)
            z_loss = self._loss.score(loss, trusted, self.z_thresh)
            nonfinite = not math.isfinite(total)
            self._count += 0 if nonfinite else 1
            rows.append((float(nonfinite or z_total > self.z_thresh or z_loss > self.z_thresh), z_total, z_loss))
        out = np.array(rows, dtype=float).reshape(len(rows), 3)
        self._append(np.column_stack([steps, totals, losses, out, np.asarray(module_norms, dtype=float).reshape(len(rows), -1)]))
        return out

    def _append(self, block: np.ndarray) -> None:
        block = block[-self._capacity :]
        first = min(len(block), self._capacity - self._next)
        self._rows[self._next : self._next + first] = block[:first]
        self._rows[: len(block) - first] = block[first:]
        self._next = (self._next + len(block)) % self._capacity
        self._filled = min(self._filled + len(block), self._capacity)

    def _ring(self) -> np.ndarray:
        """The buffered rows, oldest first."""
        if self._filled < self._capacity:
            return self._rows[: self._filled]
        return np.concatenate([self._rows[self._next :], self._rows[: self._next]])

    def forensics(self, spike_step: int, trigger: str, z: float) -> SpikeReport:
        """Score the modules over the ring buffer, name the first to move, and dump the buffer."""
        ring = self._ring()
        ring = ring[ring[:, 0] <= spike_step]
        m = len(self.module_names)
        norms = ring[:, 6:]
        recent = np.flatnonzero(ring[:, 0] > spike_step - LOOKBACK_STEPS)
        # The rows before the look-back window warm the replayed averages up (at least two rows).
        warmup = min(self.warmup, max(2, int(recent[0]) if len(recent) else len(ring)))
        zs = ema_zscores(norms, self.z_thresh, warmup) if m else np.zeros((len(ring), 0))
        first_module = first_step = first_z = None
        for row in recent.tolist():
            if m and zs[row].max() > self.module_z:
                j = int(np.argmax(zs[row]))
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
