"""The experiment registry: each experiment states its claim and anchor, and how to judge it.

An experiment is a module in ``gradguard.lab.experiments`` that ends with ``register(Experiment(...))``.
It splits into jobs: one per (variant, seed), where the variants are what the experiment
compares (clippers, cells, depths...). ``run`` does one job and returns its measured numbers;
``judge`` reads every job's numbers and returns a ``Verdict`` by a stated criterion. ``figures``
says which list-valued metrics (curves) the report draws, and how; the runner writes them into
``result.json``, so the report draws them from JSON alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gradguard._errors import unknown_name
from gradguard.lab.records import STATUS_FAIL, STATUS_PASS, STATUS_SCALE, STATUS_SETUP, FigureSpec, Verdict  # noqa: F401 (used by the experiments)

# smoke: a tiny budget that only checks the set-up runs end to end (its verdicts mean nothing);
# quick: minutes on 2 CPU cores (the demo); standard: quick plus the longer runs an experiment
# needs to show all of its claim (an experiment without a standard preset runs its quick one);
# full: the papers' scale, for a GPU or a long run.
PRESETS = ("quick", "standard", "full", "smoke")

# What a job's judge returns and how a figure is declared: defined with the other records the
# runner writes and the report reads.
Figure = FigureSpec


@dataclass
class Context:
    """What a job gets besides its config: where to compute and where it may write files."""

    device: torch.device
    job_dir: Path | None = None  # a directory for this job's run stores (None: write nothing)

    def store_path(self, name: str) -> Path | None:
        """Path for a run store (SQLite) this job may write, or None when nothing is kept."""
        if self.job_dir is None:
            return None
        self.job_dir.mkdir(parents=True, exist_ok=True)
        return self.job_dir / f"{name}.db"


@dataclass(frozen=True)
class Experiment:
    """One registered experiment.

    Attributes:
        name: registry name, e.g. "clipping".
        claim: the claim, in one sentence.
        anchor: the paper and number it is checked against.
        config: the Config dataclass; ``presets`` maps "quick", "full" and "smoke" to instances.
        variants: ``variants(cfg)`` -> the job names of one seed.
        run: ``run(cfg, variant, seed, ctx)`` -> JSON-ready dict of measured numbers.
        judge: ``judge(cfg, jobs)`` -> Verdict, where ``jobs`` is a list of
            ``{"variant", "seed", "metrics"}`` dicts.
        quick_seconds: wall time of the quick preset with its default seeds on 2 CPU cores: the
            jobs' single-threaded CPU seconds (``JobRecord.cpu_seconds``) over 2.
        short_anchor: the anchor in a few words, for the terminal table ("" = ``anchor``).
        seeds: default number of seeds per preset.
        parallel: whether spreading its jobs over processes pays (jobs of a second or more).
        figures: the curves the report draws (see ``Figure``); none: it draws every list-valued
            metric of equal length across jobs.
    """

    name: str
    claim: str
    anchor: str
    config: type
    presets: Mapping[str, Any]
    variants: Callable[[Any], list[str]]
    run: Callable[[Any, str, int, Context], dict[str, Any]]
    judge: Callable[[Any, list[dict[str, Any]]], Verdict]
    quick_seconds: float
    seeds: Mapping[str, int] = field(default_factory=lambda: {"quick": 1, "full": 5, "smoke": 1})
    parallel: bool = True
    short_anchor: str = ""
    figures: tuple[Figure, ...] = ()

    def preset(self, name: str, overrides: Mapping[str, str] | None = None) -> Any:
        """The config of preset ``name`` with ``overrides`` ("field" -> text value) applied."""
        if name == "standard" and name not in self.presets:
            name = "quick"  # no longer runs needed: standard is quick
        if name not in self.presets:
            raise unknown_name("preset", name, self.presets)
        cfg = self.presets[name]
        if overrides:
            cfg = dataclasses.replace(cfg, **{k: parse_field(self.config, k, v) for k, v in overrides.items()})
        return cfg


def parse_field(config: type, key: str, text: str) -> Any:
    """Convert a ``--set key=value`` text to the type of the Config field ``key``."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    if key not in fields:
        raise unknown_name(f"{config.__module__.rsplit('.', 1)[-1]} config field", key, fields)
    default = getattr(config(), key)
    if isinstance(default, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key} is a yes/no field; got {text!r}, expected true or false.")
    if isinstance(default, tuple):
        kind = type(default[0]) if default else str
        return tuple(kind(part) for part in text.split(",") if part.strip())
    try:
        return type(default)(text) if default is not None else text
    except ValueError:
        raise ValueError(f"{key} expects a {type(default).__name__} (like {default!r}); got {text!r}.") from None


_REGISTRY: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    missing = [p for p in ("quick", "full", "smoke") if p not in experiment.presets]
    if missing:
        raise ValueError(f"experiment {experiment.name!r} lacks preset(s) {missing}; every experiment has quick, full and smoke.")
    if not all(isinstance(f, Figure) for f in experiment.figures):
        raise TypeError(f"experiment {experiment.name!r}: figures must be a tuple of registry.Figure.")
    _REGISTRY[experiment.name] = experiment
    return experiment


def _load() -> None:
    import gradguard.lab.experiments  # noqa: F401  (each module registers itself on import)


def names() -> list[str]:
    """Registered experiment names, in the order of the issue (the registry's insertion order)."""
    _load()
    return list(_REGISTRY)


def get(name: str) -> Experiment:
    """The experiment called ``name``; unknown names raise with close-match suggestions."""
    _load()
    if name not in _REGISTRY:
        raise unknown_name("experiment", name, _REGISTRY)
    return _REGISTRY[name]
