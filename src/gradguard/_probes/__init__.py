"""Probes: what Guard measures beyond the per-module gradient norms, by cost.

Gradient norms (total and per module) come from the fused pass on every step. Probes add more on
scheduled steps only (step 1, multiples of each probe's period, and the step after an anomaly);
their hooks are registered for a scheduled step and removed right after, so other steps pay
nothing for them. Periods default to 10 steps, 100 for the per-time-step replay.

=============  ==============================================================  ==============
probe          what it records (metric names in the run store)                 cost on its step
=============  ==============================================================  ==============
norms          param_norm, update_ratio (||delta theta|| / ||theta||) per module   one params copy + 2 reads
activations    saturation, dead_fraction, preact_mean, preact_std per activation  forward hooks
deltas         error_norm: ||dL/d(output)|| per layer (Glorot & Bengio 2010)      forward + tensor hooks
timesteps      timestep_grad_norm: ||dL/dh_t|| over t per recurrent module        a replay of the RNN
=============  ==============================================================  ==============

Beside them, with no period: the non-finite locator (``_locate``), armed by a non-finite step for
the next one; and, on the host at each flush, spike forensics (``_spikes``).

Every probe follows one protocol (``_base.Probe``); the monitor loops over the list that
``build_probes`` makes, so a new probe is a class and a line in ``FACTORIES``.

Presets, in the spirit of Cockpit's economy/business/full: "norms" (the default), "business"
(norms, activations, deltas) and "full" (all four).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import nn

from gradguard._errors import check_int, unknown_name
from gradguard._grouping import Grouping
from gradguard._probes._base import Probe, StepContext

__all__ = ["PROBE_NAMES", "PRESETS", "Probe", "StepContext", "build_probes", "resolve_periods", "resolve_probes", "split_probes"]

PROBE_NAMES = ("norms", "activations", "deltas", "timesteps")
PRESETS = {
    "norms": ("norms",),
    "business": ("norms", "activations", "deltas"),
    "full": ("norms", "activations", "deltas", "timesteps"),
}


# Steps between probe runs, by default. The per-time-step replay costs several training steps
# (about seven for a 2-layer LSTM), so it runs ten times less often than the others.
DEFAULT_PERIODS = {"norms": 10, "activations": 10, "deltas": 10, "timesteps": 100}


def resolve_periods(probe_every: int | Mapping[str, int]) -> dict[str, int]:
    """``probe_every`` as an int (the base period; timesteps run 10x less often) or per probe."""
    if isinstance(probe_every, Mapping):
        unknown = [k for k in probe_every if k not in PROBE_NAMES]
        if unknown:
            raise unknown_name("probe", unknown[0], PROBE_NAMES)
        periods = dict(DEFAULT_PERIODS)
        periods.update({k: check_int(f"probe_every[{k!r}]", v, minimum=1) for k, v in probe_every.items()})
        return periods
    base = check_int("probe_every", probe_every, minimum=1)
    return {name: base * (10 if name == "timesteps" else 1) for name in PROBE_NAMES}


def resolve_probes(probes: str | Iterable[str] | None) -> tuple[str, ...]:
    """A preset name, a probe name, or several probe names -> probe names in canonical order."""
    if probes is None:
        return ()
    if isinstance(probes, str):
        if probes in PRESETS:
            return PRESETS[probes]
        probes = (probes,)
    chosen = []
    for name in probes:
        if not isinstance(name, str) or name not in PROBE_NAMES:
            raise unknown_name("probe", name, PROBE_NAMES + tuple(PRESETS))
        chosen.append(name)
    return tuple(n for n in PROBE_NAMES if n in chosen)


def _params(model: nn.Module, grouping: Grouping) -> Probe:
    from gradguard._probes._params import ParamProbe

    return ParamProbe(grouping)


def _activations(model: nn.Module, grouping: Grouping) -> Probe:
    from gradguard._probes._activations import ActivationProbe

    return ActivationProbe(model)


def _deltas(model: nn.Module, grouping: Grouping) -> Probe:
    from gradguard._probes._deltas import DeltaProbe

    return DeltaProbe(model)


def _timesteps(model: nn.Module, grouping: Grouping) -> Probe:
    from gradguard._probes._timesteps import TimestepsProbe

    return TimestepsProbe(model)


# How each named probe is built from the model and Guard's grouping (the name is its ``name``).
FACTORIES: dict[str, Callable[[nn.Module, Grouping], Probe]] = {
    "norms": _params,
    "activations": _activations,
    "deltas": _deltas,
    "timesteps": _timesteps,
}


def build_probes(model: nn.Module, grouping: Grouping, names: Iterable[str], periods: Mapping[str, int], *, locate_nonfinite: bool = True, check_inputs: bool = True, extra: Iterable[Probe] = ()) -> list[Probe]:
    """The probes a Guard runs: the named ones with their periods, the non-finite locator (armed
    by a non-finite step), the input check (``_inputs``: data or model, on a non-finite step),
    and ``extra`` probe objects as given."""
    probes = []
    for name in names:
        probe = FACTORIES[name](model, grouping)
        probe.period = periods[name]
        probes.append(probe)
    if locate_nonfinite:
        from gradguard._probes._locate import NonfiniteLocator

        probes.append(NonfiniteLocator(model))
    if check_inputs:
        from gradguard._probes._inputs import InputCheck

        probes.append(InputCheck(model))
    for probe in extra:
        if not isinstance(probe, Probe):
            raise TypeError(f"a probe must be a gradguard Probe (see gradguard._probes._base), got {type(probe).__name__}.")
        probes.append(probe)
    return probes


def split_probes(probes: Any) -> tuple[Any, list[Probe]]:
    """``probes=`` as (preset or probe names, probe objects): objects may stand among the names."""
    if probes is None or isinstance(probes, (str, Probe)):
        return (None, [probes]) if isinstance(probes, Probe) else (probes, [])
    items = list(probes)
    return [p for p in items if not isinstance(p, Probe)], [p for p in items if isinstance(p, Probe)]
