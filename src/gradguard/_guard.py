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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from gradguard import _distributed
from gradguard._clipping import Clipper, make_clipper, unclipped_stats
from gradguard._errors import GradGuardWarning, check_choice, check_int, check_norm_type
from gradguard._finding import Finding
from gradguard._grads import CachedCollector, GradBatch, index_tensor
from gradguard._history import SCALARS, Chunk, History
from gradguard._monitor import Monitor
from gradguard._norms import GradNorms, batch_norms, module_of, pattern_grouper, reduce_groups
from gradguard._policy import POLICIES, NonfinitePolicy
from gradguard._probes import resolve_periods, resolve_probes
from gradguard._rundata import RunData
from gradguard._spikes import SPIKE_Z
from gradguard._store import RunStore


@dataclass(frozen=True)
class StepInfo:
    """What ``guard.step`` measured and did. Tensor fields are 0-dim and stay on the device.

    ``skipped`` is a bool tensor: ``if info.skipped:`` works, and reads it from the device.
    """

    step: int
    skipped: Tensor
    norm_before: Tensor
    norm_after: Tensor
    clipped: Tensor
    threshold: Tensor
    coef: Tensor
    module_norms: Tensor  # aligned with guard.module_names; NaN where a module had no gradient

    def as_floats(self) -> dict[str, Any]:
        """Python values (one host sync)."""
        values = torch.stack([t.to(torch.float64) for t in (self.norm_before, self.norm_after, self.threshold, self.coef, self.clipped, self.skipped)])
        nb, na, th, co, cl, sk = values.tolist()
        return {"step": self.step, "norm_before": nb, "norm_after": na, "threshold": th, "coef": co, "clipped": bool(cl), "skipped": bool(sk)}


def resolve_clipper(clip: Any) -> Clipper | None:
    """``None``, a number (global-norm bound), a registry name, or a clipper object."""
    if clip is None or isinstance(clip, Clipper):
        return clip
    if isinstance(clip, bool):
        raise TypeError("clip must be None, a number, a clipper name or a clipper object, got a bool.")
    if isinstance(clip, numbers.Real):
        from gradguard._clipping import ClipNorm

        return ClipNorm(float(clip))
    if isinstance(clip, str):
        return make_clipper(clip)
    raise TypeError(
        f"clip must be None, a number (max global norm), a name such as 'autoclip', or a clipper "
        f"such as gg.ClipNorm(1.0); got {type(clip).__name__}."
    )


def _grouper(group_by: Any) -> Callable[[str], str]:
    if group_by is None:
        return module_of
    if isinstance(group_by, bool):
        raise TypeError("group_by must be None, an int depth, a {label: pattern} mapping or a function.")
    if isinstance(group_by, int):
        depth = check_int("group_by", group_by, minimum=1)
        return lambda name: module_of(name, depth)
    if isinstance(group_by, Mapping):
        return pattern_grouper(group_by)
    if callable(group_by):
        return group_by
    raise TypeError(f"group_by must be None, an int depth, a {{label: pattern}} mapping or a function; got {type(group_by).__name__}.")


class Guard:
    """Watch and protect the gradients of ``model`` at every optimizer step.

    Args:
        model: the module being trained.
        clip: None (measure only), a number (``ClipNorm(number)``), a registry name
            ("autoclip", "zclip", "agc"...), or a clipper object.
        nonfinite: what a step with NaN/Inf gradients does. "skip": no update; parameters,
            optimizer state and clipper statistics stay exactly as they were; the step is counted;
            more than ``max_consecutive_skips`` in a row raise ``NonFiniteGradientError`` naming
            the parameters. "raise": raise on the first one. "ignore": step anyway.
        max_consecutive_skips: how many non-finite steps in a row are skipped before raising.
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
            rank 0 only. None keeps everything in memory.
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
        self.model = model
        self.clipper = resolve_clipper(clip)
        self.nonfinite = check_choice("nonfinite", nonfinite, POLICIES)
        self.max_consecutive_skips = check_int("max_consecutive_skips", max_consecutive_skips, minimum=0)
        if scaler is not None and not hasattr(scaler, "unscale_"):
            raise TypeError(f"scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}.")
        self.scaler = scaler
        self.norm_type = self._pick_norm_type(norm_type)
        self.log_every = check_int("log_every", log_every, minimum=1)
        self.loggers = list(loggers)
        self.name = name or type(model).__name__
        self._key = _grouper(group_by)
        self.module_names: list[str] = []
        self._group_of: dict[str, int] = {}
        for pname, p in model.named_parameters():
            label = self._key(pname)
            if p.requires_grad and label not in self._group_of:
                self._group_of[label] = len(self.module_names)
                self.module_names.append(label)
        self.history = History(self.module_names, max_history)
        self._policy = NonfinitePolicy(self.nonfinite, self.max_consecutive_skips, scaler, self.log_every)
        self.store = self._open_store(store)
        self.monitor = Monitor(
            model,
            self.module_names,
            probes=resolve_probes(probes),
            periods=resolve_periods(probe_every),
            store=self.store,
            spike_z=spike_z,
            forensics_steps=max(check_int("forensics_steps", forensics_steps, minimum=2), 2 * self.log_every + 2),
            locate_after_skip=locate_nonfinite,
        )
        self._set_slots(_parameter_slots(model))
        self._index_cache: dict[tuple[str, ...], tuple[Tensor, Tensor, list[bool]]] = {}
        self._pending: list[tuple[int, Tensor]] = []
        self._collect = CachedCollector()
        self._nan_loss: dict[torch.device, Tensor] = {}  # the loss column of steps given no loss
        self._step = 0
        self._warned_unknown = False
        self._closed = False

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

    def _open_store(self, store: str | Path | RunStore | None) -> RunStore | None:
        if store is None or not _distributed.is_main_process():
            return None
        if not isinstance(store, RunStore):
            if not isinstance(store, (str, Path)):
                raise TypeError(f"store must be a path or a RunStore, got {type(store).__name__}.")
            store = RunStore(store)
        store.set_meta(**self._meta())
        return store

    def _meta(self) -> dict[str, Any]:
        from gradguard import __version__

        clipper = None
        if self.clipper is not None:
            clipper = {"name": self.clipper.name, "repr": repr(self.clipper)}
            for key in ("max_norm", "clip_value"):
                if hasattr(self.clipper, key):
                    clipper["max_norm" if key == "max_norm" else key] = getattr(self.clipper, key)
        layers, activations = {}, {}
        for mname, module in self.model.named_modules():
            if any(True for _ in module.parameters(recurse=False)):
                layers[mname or "(root)"] = type(module).__name__
            elif not list(module.children()) and mname:
                activations[mname] = type(module).__name__
        return {
            "name": self.name,
            "kind": "training",
            "norm_type": self.norm_type,
            "clipper": clipper,
            "nonfinite": self.nonfinite,
            "module_names": self.module_names,
            "layer_types": layers,
            "activation_types": activations,
            "gradguard_version": __version__,
            "torch_version": torch.__version__,
        }

    def _module_index(self, names: tuple[str, ...], device: torch.device) -> tuple[Tensor, Tensor, list[bool]]:
        """Group position of each gradient, and which groups have a gradient this step."""
        cached = self._index_cache.get(names)
        if cached is not None and cached[0].device == device:
            return cached
        n = len(self.module_names)
        index, present = [], [False] * (n + 1)  # the extra group: parameters not known at construction
        for pname in names:
            pos = self._group_of.get(self._key(pname), n)
            if pos == n and not self._warned_unknown:
                warnings.warn(f"parameter {pname!r} was not trainable when Guard was built; it counts in the total norm but not per module.", GradGuardWarning, stacklevel=4)
                self._warned_unknown = True
            index.append(pos)
            present[pos] = True
        result = (index_tensor(tuple(index), device), torch.tensor(present[:n], device=device), present[:n])
        self._index_cache[names] = result
        return result

    # ------------------------------------------------------------------ the step
    def step(self, optimizer: torch.optim.Optimizer, *, loss: Tensor | float | None = None) -> StepInfo:
        """Unscale, measure, clip, apply the non-finite policy, and step ``optimizer``."""
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
        self._step += 1
        step = self._step
        with torch.no_grad():
            if self.scaler is not None and optimizer is not None:
                self._unscale(optimizer)
            batch = self._collect(self._parameters())
            norms = self._measure(batch)
            stats = self.clipper.apply(batch, norms) if self.clipper is not None else unclipped_stats(norms)
            index, present, present_host = self._module_index(norms.names, norms.vector.device) if norms.names else (None, None, [])
            module_norms = self._module_norms(norms, index, present)
            self.monitor.before_optimizer(batch, step, stepping)
            skipped, skipped_host = self._policy.apply(step, optimizer if stepping else None, batch, norms)
            if skipped_host:
                self.monitor.note_skip(step, self._policy.last_names)
            self.monitor.end_step(step, batch, index, present_host, stepping and skipped_host is not True, skipped_host)
            info = StepInfo(step, skipped, stats.norm_before, stats.norm_after, stats.clipped, stats.threshold, stats.coef, module_norms)
            self._record(info, loss)
        return info

    def _set_slots(self, slots: list[tuple[nn.Module, str, str]]) -> None:
        self._slots = slots
        self._slot_of = {full: i for i, (_, _, full) in enumerate(slots)}

    def _parameters(self) -> list[tuple[str, Tensor]]:
        """The model's named parameters, read through cached (module, name) slots.

        Walking ``model.named_parameters()`` costs more than the norm pass itself on models with
        many small layers. A parameter replaced in place (``fully_shard``, re-registration) is seen
        at once through its slot; modules added or removed are picked up at the next flush.
        """
        named = []
        for module, local, full in self._slots:
            param = module._parameters.get(local)
            if param is not None:
                named.append((full, param))
        return named

    def _measure(self, batch: GradBatch) -> GradNorms:
        norms = batch_norms(batch, self.norm_type)
        if _distributed.world_size() > 1:
            norms = self._agree_across_ranks(norms)
        return norms

    def _agree_across_ranks(self, norms: GradNorms) -> GradNorms:
        """A gradient is non-finite when it is on any rank: one all-reduce of a per-parameter mask.

        Every rank then holds the same NaN entries, so clipping, clipper statistics, the skip
        decision, the names in errors and the per-module norms agree everywhere. The mask is laid
        out over all of the model's parameters (the same list on every rank), plus one entry for a
        total that overflowed.
        """
        device = norms.total.device
        positions = index_tensor(tuple(self._slot_of[name] for name in norms.names), device)
        mask = torch.zeros(len(self._slots) + 1, dtype=torch.int32, device=device)
        mask.index_copy_(0, positions, (~torch.isfinite(norms.vector)).to(torch.int32))
        mask[-1] = (~norms.finite).to(torch.int32)
        mask = _distributed.any_rank(mask)
        bad = mask.index_select(0, positions)
        nan = torch.full_like(norms.vector, math.nan)
        vector = torch.where(bad, nan, norms.vector)
        total = torch.where(mask.any(), torch.full_like(norms.total, math.nan), norms.total)
        return replace(norms, vector=vector, total=total)

    def _module_norms(self, norms: GradNorms, index: Tensor | None, present: Tensor | None) -> Tensor:
        n = len(self.module_names)
        if index is None:
            return torch.full((n,), math.nan, device=norms.total.device)
        values = reduce_groups(norms.vector, index, n + 1, norms.norm_type)[:n]
        return torch.where(present, values, math.nan)

    def _unscale(self, optimizer: torch.optim.Optimizer) -> None:
        from torch.amp.grad_scaler import OptState

        if not self.scaler.is_enabled():
            return
        state = self.scaler._per_optimizer_states[id(optimizer)]
        if state["stage"] is OptState.READY:  # never unscale twice: it would divide by the scale again
            self.scaler.unscale_(optimizer)

    # ------------------------------------------------------------------ statistics
    def _record(self, info: StepInfo, loss: Tensor | float | None) -> None:
        device = info.norm_before.device
        if loss is None:
            loss_t = self._nan_loss.get(device)
            if loss_t is None:
                loss_t = self._nan_loss[device] = torch.full((), math.nan, dtype=torch.float64, device=device)
        else:
            loss_t = torch.as_tensor(loss).detach().reshape(()).to(device=device, dtype=torch.float64)
        # Two operator calls: stack and cat promote to float64 (the loss is float64), and every
        # operator call costs microseconds on a CPU thread and a kernel launch on a GPU.
        scalars = torch.stack([info.norm_before, info.norm_after, info.threshold, info.clipped, info.skipped, loss_t])
        self._pending.append((info.step, torch.cat([scalars, info.module_norms.to(device)])))
        if len(self._pending) >= self.log_every:
            self.flush()

    def flush(self) -> None:
        """Copy pending statistics to the host (one transfer) and hand them to history, store and loggers."""
        if not self._pending:
            return
        steps = np.array([s for s, _ in self._pending], dtype=np.int64)
        table = torch.stack([r for _, r in self._pending]).cpu().numpy()
        self._pending.clear()
        k, m = len(SCALARS), len(self.module_names)
        chunk = Chunk(steps, {name: table[:, i] for i, name in enumerate(SCALARS)}, self.module_names, table[:, k : k + m])
        self.history.append(chunk)
        self.monitor.flush(chunk)
        self._set_slots(_parameter_slots(self.model))
        for log in self.loggers:
            log(chunk)
        self._policy.check_device_limit(int(steps[-1]))

    # ------------------------------------------------------------------ diagnosis
    def run_data(self) -> RunData:
        """Everything measured so far, as the diagnosis rules read it."""
        self.flush()
        h = self.history
        meta = self._meta()
        meta["forward_order"] = self.monitor.forward_order
        meta["recurrent"] = _recurrent_spectra(self.model)
        scalars = {name: h.column(name) for name in SCALARS}
        return RunData(h.step, scalars, list(self.module_names), h.module_norms, self.monitor.records, self.monitor.vectors, self.monitor.events, meta)

    def findings(self) -> list[Finding]:
        """Run the diagnosis rules on what was measured so far; most urgent first."""
        from gradguard._rules import diagnose

        found = diagnose(self.run_data())
        if self.store is not None:
            self.store.replace_findings(found)
        return found

    def report(self, path: str | Path, format: str = "html") -> Path:
        """Write the report (findings, gradient flow, norm timeline...) for this run to ``path``."""
        from gradguard.report import write_report

        findings = self.findings()
        if self.store is not None:
            return write_report([self.store], path, format=format, title=self.name)
        memory = self.to_store(":memory:", findings=findings)
        try:
            return write_report([memory], path, format=format, title=self.name)
        finally:
            memory.close()

    def to_store(self, path: str | Path, findings: list[Finding] | None = None) -> RunStore:
        """Write what this Guard holds in memory into a run store (":memory:" for a temporary one)."""
        self.flush()
        store = RunStore(path, meta={**self._meta(), "forward_order": self.monitor.forward_order})
        for chunk in self.history.chunks():
            store.write_chunk(chunk)
        for metric, entries in self.monitor.records.items():
            for step, values in entries:
                store.write_module_stats(step, metric, values)
        for metric, entries in self.monitor.vectors.items():
            for step, module, values in entries:
                store.write_vector(step, module, metric, values)
        for event in self.monitor.events:
            payload = {k: v for k, v in event.items() if k not in ("step", "kind")}
            store.add_event(event["step"], event["kind"], payload)
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
            "clipper": self.clipper.state_dict() if self.clipper is not None else {},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._step = int(state["step"])
        self._policy.consecutive = int(state["consecutive"])
        self._policy.skips = int(state["skips"])
        self._policy.reset_device_counters()
        if self.clipper is not None:
            self.clipper.load_state_dict(state["clipper"])

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Flush statistics, write the findings to the store, and remove every hook Guard registered."""
        if self._closed:
            return
        self.flush()
        self.monitor.close()
        if self.store is not None:
            self.findings()
            self.store.close()
            self.store = self.monitor.store = None  # later findings() or report() work from memory
        self._closed = True

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Guard(clip={self.clipper!r}, nonfinite={self.nonfinite!r}, steps={self._step}, skipped={self._policy.skips})"


def _parameter_slots(model: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """(owning module, local name, full name) of every parameter, each parameter once."""
    slots, seen = [], set()
    for mname, module in model.named_modules():
        for local, param in module._parameters.items():
            if param is None or id(param) in seen:
                continue
            seen.add(id(param))
            slots.append((module, local, f"{mname}.{local}" if mname else local))
    return slots


def _recurrent_spectra(model: nn.Module) -> dict[str, Any]:
    """Pascanu et al.'s spectral numbers for each Elman recurrent module (first layer and direction)."""
    from gradguard.rnn import SimpleRNN, pascanu_condition

    out = {}
    for mname, module in model.named_modules():
        if isinstance(module, (SimpleRNN, nn.RNN)):
            if not all(bool(torch.isfinite(p).all()) for p in module.parameters()):
                continue  # a diverged run: there is no spectrum to speak of
            out[mname or "(root)"] = pascanu_condition(module)[0].as_dict()
    return out
