"""Guard: measure, clip and step, in the order that keeps every number honest.

``guard.step(optimizer)`` replaces ``clip_grad_norm_(...); optimizer.step()``::

    unscale (GradScaler, once) -> one fused norm pass (total and per module) -> clip, reusing
    those norms -> non-finite policy -> optimizer.step()

Host synchronisation. Statistics stay on the device and are copied to the host every
``log_every`` steps, in one transfer. Deciding to skip a step needs the non-finite flag on the
host, except where the optimizer can skip on the device (fused optimizers; see ``_policy``): then
a step that logs nothing never waits for the host. With other optimizers the skip decision reads
one boolean per step (on the CPU that costs nothing). ``nonfinite="ignore"`` never syncs.

Everything beyond the gradient norms (probes, spike forensics, non-finite localisation, the run
store) is the monitor's job (``_monitor``).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import gradguard._distributed as _distributed
from gradguard._clipping import unclipped_stats
from gradguard._errors import GradGuardWarning, check_choice, check_int, check_norm_type
from gradguard._grads import CachedCollector, GradBatch
from gradguard._grouping import Grouping
from gradguard._history import Chunk
from gradguard._monitor import Monitor
from gradguard._names import unwrap
from gradguard._norms import GradNorms, batch_norms
from gradguard._policy import POLICIES, NonfinitePolicy
from gradguard._probes import build_probes, resolve_periods, resolve_probes, split_probes
from gradguard._recorder import Recorder, open_store
from gradguard._rundata import RunData
from gradguard._runmeta import recurrent_spectra, run_meta
from gradguard._slots import ParameterSlots, agree_across_ranks
from gradguard._probes._spikes import SPIKE_Z
from gradguard._stepinfo import StepInfo, max_lr, resolve_clipper
from gradguard._store import RunStore



class Guard:
    """Watch and protect the gradients of ``model`` at every optimizer step.

    Args:
        model: the module being trained.
        clip: None (measure only), a number (``ClipNorm(number)``), a registry name
            ("autoclip", "zclip", "agc"...), or a clipper object.
        nonfinite: what a step with NaN/Inf gradients does. "skip": no update; parameters,
            optimizer state and clipper statistics stay exactly as they were; the step is counted;
            more than ``max_consecutive_skips`` in a row raise ``NonFiniteGradientError`` naming
            the parameters. "raise": raise on the first one, before clipping, with the gradients
            left as they were. "ignore": step anyway.
        max_consecutive_skips: how many non-finite steps in a row are skipped before raising. With
            a ``scaler``, overflows while its scale is above 1 are calibration and do not count.
        scaler: a ``torch.amp.GradScaler``. Guard unscales (unless you already did), then calls
            ``scaler.step`` and ``scaler.update`` itself.
        norm_type: norm for monitoring when there is no clipper (a clipper's own norm wins).
        log_every: steps between device-to-host copies of the statistics.
        group_by: how parameters form the per-module norms: None (owning module), an int
            (module path truncated to that depth), ``{label: glob}`` patterns, or a function.
        probes: what to measure beyond gradient norms, on probe steps: a preset ("norms",
            "business", "full"), probe names ("norms", "activations", "deltas", "timesteps"), or
            None. See ``gradguard._probes``.
        probe_every: probe steps are 1, probe_every, 2 * probe_every, ... and the step after an
            anomaly; the per-time-step replay (which costs several training steps) runs 10x less
            often. A mapping sets each probe's period, e.g. ``{"deltas": 50, "timesteps": 500}``.
        store: path of a run store (SQLite, one file per run) or a ``RunStore``; written by
            rank 0 only. None keeps everything in memory. A store has one writer: a path another
            Guard or process is writing raises ``StoreLockedError`` here; a store that fails
            during the run (full disk...) warns once and the run goes on (see ``findings``).
        spike_z: z-score (on log norms and log loss, against their moving averages) above which a
            step is a spike and the forensic buffer is dumped; None turns spike detection off.
        forensics_steps: steps kept in the forensic ring buffer.
        locate_nonfinite: after a skipped step, hook every module for the next step to name the
            first one where NaN/Inf appears (forward or backward).
        loggers: callables receiving each ``Chunk`` of statistics when it reaches the host.
        max_history: steps kept in ``guard.history`` (older ones are dropped from memory).
        name: run name recorded in the store and the report.

    Example:
        >>> import torch, gradguard as gg
        >>> model = torch.nn.Linear(4, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> guard = gg.Guard(model, clip=1.0)
        >>> model(torch.randn(8, 4)).pow(2).mean().backward()
        >>> info = guard.step(opt)
        >>> bool(info.skipped)
        False
    """

    def __init__(
        self,
        model: nn.Module,
        clip: Any = None,
        nonfinite: str = "skip",
        max_consecutive_skips: int = 10,
        scaler: Any = None,
        *,
        norm_type: float | str | None = None,
        log_every: int = 10,
        group_by: Any = None,
        probes: str | Sequence[str] | None = "norms",
        probe_every: int | Mapping[str, int] = 10,
        store: str | Path | RunStore | None = None,
        spike_z: float | None = SPIKE_Z,
        forensics_steps: int = 64,
        locate_nonfinite: bool = True,
        loggers: Sequence[Callable[[Chunk], None]] = (),
        max_history: int | None = 100_000,
        name: str | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"Guard needs the nn.Module being trained, got {type(model).__name__}.")
        spike_z = _check_spike_z(spike_z)
        locate_nonfinite = _check_bool("locate_nonfinite", locate_nonfinite)
        loggers = _check_loggers(loggers)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string or None, got {name!r} of type {type(name).__name__}.")
        self.model = model = unwrap(model)  # torch.compile/DDP wrappers off: names as the user wrote them
        self.clipper = resolve_clipper(clip)
        self.nonfinite = check_choice("nonfinite", nonfinite, POLICIES)
        self.max_consecutive_skips = check_int("max_consecutive_skips", max_consecutive_skips, minimum=0)
        if scaler is not None and not hasattr(scaler, "unscale_"):
            raise TypeError(f"scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}.")
        self.scaler = scaler
        self.norm_type = self._pick_norm_type(norm_type)
        self.log_every = check_int("log_every", log_every, minimum=1)
        self.name = name or type(model).__name__
        self.grouping = Grouping.of_model(model, group_by)
        self.module_names = self.grouping.labels
        self._policy = NonfinitePolicy(self.nonfinite, self.max_consecutive_skips, scaler, self.log_every)
        self.recorder = Recorder(
            self.module_names, store=open_store(store, owner=self), loggers=loggers, max_history=max_history,
            meta=run_meta(model, name=self.name, clipper=self.clipper, norm_type=self.norm_type, nonfinite=self.nonfinite, module_names=self.module_names),
        )
        names, extra = split_probes(probes)
        self.monitor = Monitor(
            self.grouping,
            build_probes(model, self.grouping, resolve_probes(names), resolve_periods(probe_every), locate_nonfinite=locate_nonfinite, extra=extra),
            recorder=self.recorder,
            spike_z=spike_z,
            forensics_steps=max(check_int("forensics_steps", forensics_steps, minimum=2), 2 * self.log_every + 2),
        )
        self._slots = ParameterSlots(model)
        self._collect = CachedCollector()
        self._ownership_checked = False  # the optimizer's ownership of the parameters is checked once, at the first step
        self._nan: dict[torch.device, Tensor] = {}  # the loss column of steps given no loss
        self._step = 0
        self._closed = False

    @property
    def history(self):
        """What was measured, per step (``History``)."""
        return self.recorder.history

    @property
    def store(self) -> RunStore | None:
        return self.recorder.store

    @property
    def loggers(self) -> list[Callable[[Chunk], None]]:
        return self.recorder.loggers

    # ------------------------------------------------------------------ set-up helpers
    def _pick_norm_type(self, norm_type: float | str | None) -> float:
        if self.clipper is None:
            return 2.0 if norm_type is None else check_norm_type(norm_type)
        if norm_type is not None and check_norm_type(norm_type) != self.clipper.norm_type:
            raise ValueError(
                f"norm_type={norm_type!r} conflicts with the clipper's norm_type={self.clipper.norm_type}; "
                "Guard measures in the clipper's norm so one pass serves both. Set it on the clipper."
            )
        return self.clipper.norm_type

    # ------------------------------------------------------------------ the step
    def step(self, optimizer: torch.optim.Optimizer, *, loss: Tensor | float | None = None) -> StepInfo:
        """Unscale, measure, clip, apply the non-finite policy, and step ``optimizer``."""
        if optimizer is None or not callable(getattr(optimizer, "step", None)):
            raise TypeError(
                f"guard.step(optimizer) needs the optimizer to step (e.g. a torch.optim.Optimizer), got "
                f"{'None' if optimizer is None else type(optimizer).__name__}. To measure and clip without "
                "stepping, call guard.check() and step the optimizer yourself."
            )
        return self._run(optimizer, loss, stepping=True)

    def check(self, optimizer: torch.optim.Optimizer | None = None, *, loss: Tensor | float | None = None) -> StepInfo:
        """Measure, clip and apply the non-finite policy, but leave the stepping to the caller.

        For training loops that call ``optimizer.step()`` themselves (Lightning, the Hugging Face
        Trainer): call it after gradients are final (unscaled, accumulated, synchronised) and
        before the optimizer steps. On a skipped step every gradient is set to None, and torch
        optimizers leave a parameter without a gradient, and its state, untouched, so the
        caller's ``optimizer.step()`` becomes a no-op. ``optimizer`` is only needed with a scaler.
        """
        return self._run(optimizer, loss, stepping=False)

    def _run(self, optimizer, loss, stepping: bool) -> StepInfo:
        if self._closed:
            raise RuntimeError("this Guard was closed; build a new one to keep guarding.")
        if loss is not None:
            loss = _loss_tensor(loss)  # checked before anything is touched
        if optimizer is not None and not self._ownership_checked:
            self._check_ownership(optimizer)
        self._step += 1
        step = self._step
        with torch.no_grad():
            if self.scaler is not None and optimizer is not None:
                self._unscale(optimizer)
            batch = self._collect(self._slots.named())
            norms = self._measure(batch)
            # "raise" decides before clipping, so the gradients it reports are left as they were
            # (torch's error_if_nonfinite). It reads the flag every step, as it always has.
            self._policy.raise_if_nonfinite(step, norms)
            stats = self.clipper.apply(batch, norms) if self.clipper is not None else unclipped_stats(norms)
            index, present, present_host = self.grouping.index(norms.names, norms.vector.device) if norms.names else (None, None, [])
            module_norms = self._module_norms(norms, index, present)
            self.monitor.before_optimizer(batch, step, stepping)
            skipped, skipped_host = self._policy.apply(step, optimizer if stepping else None, batch, norms)
            nonfinite = self._policy.last_names if skipped_host else ()
            self.monitor.end_step(step, batch, index, present_host, stepping and skipped_host is not True, skipped_host, nonfinite)
            info = StepInfo(step, skipped, stats.norm_before, stats.norm_after, stats.clipped, stats.threshold, stats.coef, module_norms)
            self._record(info, loss, optimizer)
        return info

    def _check_ownership(self, optimizer: Any) -> None:
        """Warn once when the optimizer does not own every trainable parameter of the model: those
        parameters would be measured and clipped but never updated (a wrong optimizer, or one built
        before a layer was added). Runs on the host, at the first step given an optimizer only."""
        self._ownership_checked = True
        groups = getattr(optimizer, "param_groups", None)
        if not isinstance(groups, (list, tuple)):
            return  # not a torch optimizer: nothing to compare
        owned = {id(p) for group in groups if isinstance(group, Mapping) for p in group.get("params", ())}
        missing = [name for name, p in self._slots.named() if p.requires_grad and id(p) not in owned]
        if not missing:
            return
        total = sum(1 for _, p in self._slots.named() if p.requires_grad)
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        warnings.warn(
            f"the optimizer given to guard.step ({type(optimizer).__name__}) does not own {len(missing)} of the "
            f"{total} trainable parameters of the guarded {type(self.model).__name__}: {shown}. Those are measured "
            "and clipped but never updated. Build the optimizer from this model's parameters "
            "(e.g. torch.optim.AdamW(model.parameters())), or guard the model the optimizer trains.",
            GradGuardWarning, stacklevel=4,
        )

    def _measure(self, batch: GradBatch) -> GradNorms:
        norms = batch_norms(batch, self.norm_type)
        if _distributed.world_size() > 1:
            norms = agree_across_ranks(norms, self._slots)
        return norms

    def _module_norms(self, norms: GradNorms, index: Tensor | None, present: Tensor | None) -> Tensor:
        if index is None:
            return torch.full((len(self.module_names),), math.nan, device=norms.total.device)
        return self.grouping.reduce(norms.vector, index, norms.norm_type, present)

    def _unscale(self, optimizer: torch.optim.Optimizer) -> None:
        from torch.amp.grad_scaler import OptState

        if not self.scaler.is_enabled():
            return
        state = self.scaler._per_optimizer_states[id(optimizer)]
        if state["stage"] is OptState.READY:  # never unscale twice: it would divide by the scale again
            self.scaler.unscale_(optimizer)

    # ------------------------------------------------------------------ statistics
    def _record(self, info: StepInfo, loss: Tensor | float | None, optimizer: Any) -> None:
        device = info.norm_before.device
        if loss is None:
            loss_t = self._nan.get(device)
            if loss_t is None:
                loss_t = self._nan[device] = torch.full((), math.nan, dtype=torch.float64, device=device)
        else:
            loss_t = loss.to(device=device, dtype=torch.float64)
        # One row per step, by column name (``_rundata.STEP_COLUMNS``): device values are stacked
        # in one call (the loss is float64, so the row is too), host values stay Python floats.
        device_row = {"norm_before": info.norm_before, "norm_after": info.norm_after, "threshold": info.threshold,
                      "coef": info.coef, "clipped": info.clipped, "skipped": info.skipped, "loss": loss_t}
        host_row = {"lr": max_lr(optimizer)}
        if optimizer is not None and "optimizer" not in self.recorder.meta:  # for the rules: Adam-family gets a warm-up, a scaler can collapse
            self.recorder.set_meta(optimizer=type(getattr(optimizer, "optimizer", optimizer)).__name__, scaler=bool(self.scaler is not None and self.scaler.is_enabled()))
        if self.recorder.pend(info.step, device_row, host_row, info.module_norms.to(device)) >= self.log_every:
            self.flush()

    def flush(self) -> None:
        """Copy pending statistics to the host (one transfer) and hand them to history, store and loggers."""
        chunk = self.recorder.flush()
        if chunk is None:
            return
        self._slots.refresh()
        self._policy.check_device_limit(int(chunk.steps[-1]))

    # ------------------------------------------------------------------ what was measured, and what it means
    def run_data(self) -> RunData:
        """Everything measured so far, as the rules, the report and the loggers read it."""
        self.flush()
        return self.recorder.run_data(forward_order=self.monitor.forward_order, recurrent=recurrent_spectra(self.model))

    def findings(self) -> list:
        """Run the diagnosis rules on what was measured so far; root causes first. When the run
        store failed during the run, a last ``STORE_INCOMPLETE`` finding (severity info) says so."""
        return self._findings(self.run_data())

    def _findings(self, data: RunData) -> list:
        from gradguard._diagnose import findings_of  # the rules sit above the core

        found = findings_of(data) + _store_findings(data.meta)
        if self.store is not None:
            self.recorder._write(self.store.replace_findings, found)
        return found

    def report(self, path: str | Path, format: str = "html") -> Path:
        """Write the report (findings, gradient flow, norm timeline...) for this run to ``path``."""
        from gradguard._diagnose import write_run_report

        data = self.run_data()
        data.findings = self._findings(data)
        return write_run_report(data, path, format=format, title=self.name)

    def to_store(self, path: str | Path, findings: list | None = None) -> RunStore:
        """Write what this Guard holds in memory into a run store at ``path``."""
        run = self.run_data()
        store = self.recorder.to_store(RunStore(path))
        store.set_meta(forward_order=run.meta.get("forward_order", []))
        store.add_findings(findings if findings is not None else self.findings())
        return store

    # ------------------------------------------------------------------ counters and state
    @property
    def skipped_steps(self) -> int:
        """Steps skipped so far (reads the device counter when skips are decided on the device)."""
        return self._policy.total_skips

    @property
    def steps(self) -> int:
        return self._step

    def state_dict(self) -> dict[str, Any]:
        """Counters and the clipper's state, for checkpoints (no history)."""
        return {
            "step": self._step,
            "consecutive": self._policy.consecutive,
            "skips": self.skipped_steps,
            "clipper_type": type(self.clipper).__name__ if self.clipper is not None else None,
            "clipper": self.clipper.state_dict() if self.clipper is not None else {},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()``'s counters and clipper state; checked as a whole before any is set."""
        counters = _check_guard_state(state, self.clipper)
        if self.clipper is not None:
            self.clipper.load_state_dict(state.get("clipper", {}))  # the clipper checks its own state
        self._step, self._policy.consecutive, self._policy.skips = counters
        self._policy.reset_device_counters()

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Flush statistics, write the findings to the store, and remove every hook Guard registered."""
        if self._closed:
            return
        self.flush()
        self.monitor.close()
        if self.store is not None:
            self.findings()
            self.recorder.close()  # later findings() or report() work from memory
        self._closed = True

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Guard(clip={self.clipper!r}, nonfinite={self.nonfinite!r}, steps={self._step}, skipped={self._policy.skips})"


def _store_findings(meta: Mapping[str, Any]) -> list:
    """The store failed during the run: say so, with where and why (the run itself is in memory)."""
    failed = meta.get("store_incomplete")
    if not failed:
        return []
    from gradguard._finding import Finding

    return [Finding(
        "STORE_INCOMPLETE", "info",
        f"the run store {failed['path']} stopped being written "
        f"{'before any step' if failed['last_step'] is None else 'after step ' + str(failed['last_step'])} ({failed['reason']}); "
        "it holds only the run's beginning. This report and guard.history hold the whole run.",
        [failed["path"]], dict(failed),
        "Free disk space or fix the store path's permissions, then keep the whole run with guard.to_store('run-full.sqlite').",
    )]


# ---------------------------------------------------------------------- argument and state checks
def _check_spike_z(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"spike_z must be a positive number (a z-score such as 6.0) or None to turn spike detection off, "
                        f"got {value!r} of type {type(value).__name__}.")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"spike_z must be a finite number > 0 (a z-score such as 6.0), or None to turn spike detection off; got {value!r}.")
    return float(value)


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} of type {type(value).__name__}.")
    return value


def _check_loggers(loggers: Any) -> Sequence[Callable[[Chunk], None]]:
    if callable(loggers):
        raise TypeError("loggers must be a list of callables; wrap the one logger in a list: loggers=[logger].")
    if isinstance(loggers, (str, bytes)) or not isinstance(loggers, Iterable):
        raise TypeError(f"loggers must be a list of callables taking a Chunk, got {type(loggers).__name__}.")
    loggers = list(loggers)
    for i, log in enumerate(loggers):
        if not callable(log):
            raise TypeError(f"loggers[{i}] must be callable (it receives each Chunk of statistics), got {log!r}.")
    return loggers


_STATE_KEYS = ("step", "consecutive", "skips", "clipper_type", "clipper")


def _check_guard_state(state: Any, clipper: Any) -> tuple[int, int, int]:
    """Validate a ``Guard.state_dict()`` against this Guard; returns (step, consecutive, skips).

    A clipper's state is never dropped: loading it into a Guard without that clipper, or a state
    without one into a Guard whose clipper keeps state, is an error.
    """
    from gradguard._errors import suggest

    if not isinstance(state, Mapping):
        raise TypeError(f"Guard.load_state_dict needs the dict from guard.state_dict(), got {type(state).__name__}.")
    unknown = [k for k in state if k not in _STATE_KEYS]
    if unknown:
        raise ValueError(f"Guard.load_state_dict got unknown key {unknown[0]!r}.{suggest(str(unknown[0]), _STATE_KEYS)} "
                         f"A Guard state has the keys {', '.join(_STATE_KEYS)} (from guard.state_dict()).")
    missing = [k for k in ("step", "consecutive", "skips") if k not in state]
    if missing:
        raise ValueError(f"Guard.load_state_dict: the state lacks {', '.join(map(repr, missing))} (it has {sorted(state) or 'no keys'}); "
                         "pass the dict returned by guard.state_dict().")
    counters = []
    for key in ("step", "consecutive", "skips"):
        value = state[key]
        if isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"Guard.load_state_dict: {key!r} must be an int >= 0, got {value!r}.")
        counters.append(int(value))
    step, consecutive, skips = counters
    if consecutive > step or skips > step or consecutive > skips:
        raise ValueError(f"Guard.load_state_dict: inconsistent counters step={step}, consecutive={consecutive}, skips={skips} "
                         "(a run cannot skip more steps than it took, nor more in a row than in all).")
    held = state.get("clipper", {})
    if not isinstance(held, Mapping):
        raise TypeError(f"Guard.load_state_dict: 'clipper' must be the clipper's state dict, got {type(held).__name__}.")
    have = type(clipper).__name__ if clipper is not None else None
    saved = state.get("clipper_type", have if held or clipper is None else None)
    if saved is not None and not isinstance(saved, str):
        raise TypeError(f"Guard.load_state_dict: 'clipper_type' must be a class name or None, got {saved!r}.")
    if clipper is None and (saved is not None or held):
        raise ValueError(f"Guard.load_state_dict: the state holds the state of a {saved or 'stateful'} clipper, but this Guard has no clipper "
                         f"(clip=None). Build the Guard with the clip= of the run that saved it.")
    if clipper is not None and saved != have and (saved is not None or clipper.state_dict()):
        raise ValueError(f"Guard.load_state_dict: the state was saved by a Guard with clipper {saved or 'None'}, but this Guard's clipper is "
                         f"{have}; its state would be lost or misread. Build the Guard with the clip= of the run that saved it.")
    return step, consecutive, skips


def _loss_tensor(loss: Any) -> Tensor:
    """``loss=`` as a 0-dim tensor; a tensor of several values or a non-number is a clear error (no sync)."""
    if isinstance(loss, Tensor):
        if loss.numel() != 1:
            raise ValueError(f"loss must be one value (the step's scalar loss), got a tensor of shape {tuple(loss.shape)}; pass loss.mean() or loss.sum().")
        return loss.detach().reshape(())
    if isinstance(loss, bool) or not isinstance(loss, numbers.Real):
        raise TypeError(f"loss must be a number or a one-element tensor (or None), got {loss!r} of type {type(loss).__name__}.")
    return torch.tensor(float(loss))

