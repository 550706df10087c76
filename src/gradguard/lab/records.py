"""What the lab writes and the report reads: ``FigureSpec``, ``JobRecord``, ``Verdict`` and ``Result``.

The runner writes, under its ``--out`` directory::

    <experiment>/<preset>/result.json          a Result
    <experiment>/<preset>/jobs/<variant>.seed<k>.json   a JobRecord (one finished job)
    <experiment>/<preset>/stores/<job>/<name>.db        run stores a job wrote

All through ``gradguard._io`` (atomic, strict JSON: non-finite numbers are the strings "nan",
"inf" and "-inf"). Reading is forgiving, since a results folder may hold files of an older
version or edited by hand: ``from_dict`` fills what is missing with defaults, keeps what has the
wrong type out, and returns None only when a file is not a lab record at all.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradguard import _io


def _str(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _num(value: Any, default: float = math.nan) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class FigureSpec:
    """A figure the report draws from a list-valued metric: one line per variant, seeds aggregated.

    Metric names are paths into a job's metrics, dotted for nested dicts ("curve.df"). A metric
    is a list of numbers or a list of [x, y] pairs.

    Attributes:
        metric: the curve drawn, one line per variant.
        title: the figure's title.
        x: the metric holding the x values; "" takes x from [x, y] pairs, else 0, 1, 2, ...
        x_label, y_label: axis labels.
        log_y: a log y axis (values <= 0 are left out); None: decided from the values.
        reference: a metric drawn dashed in its variant's colour (a bound, a value at init).
        reference_label: the legend's words for the dashed lines.
        variants: shell patterns of the variants drawn (e.g. ``("adding:*",)``); empty: all.
        hlines: constant levels drawn dotted, as (value, label), e.g. a baseline's error.
        caption: what to read in the figure, one or two sentences.
    """

    metric: str
    title: str
    x: str = ""
    x_label: str = ""
    y_label: str = ""
    log_y: bool | None = False
    reference: str = ""
    reference_label: str = ""
    variants: tuple[str, ...] = ()
    hlines: tuple[tuple[float, str], ...] = ()
    caption: str = ""

    def __post_init__(self) -> None:
        if not self.metric or not self.title:
            raise ValueError(f"a FigureSpec needs a metric and a title; got metric={self.metric!r}, title={self.title!r}.")
        if isinstance(self.variants, str):
            raise TypeError(f"FigureSpec.variants is a tuple of patterns; write ({self.variants!r},) for one.")
        for line in self.hlines:
            if len(line) != 2 or not isinstance(line[0], (int, float)) or not isinstance(line[1], str):
                raise TypeError(f"FigureSpec.hlines holds (value, label) pairs; got {line!r}.")

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready data, as ``result.json`` holds it."""
        d = dataclasses.asdict(self)
        d["variants"] = list(self.variants)
        d["hlines"] = [[float(v), label] for v, label in self.hlines]
        return d

    @classmethod
    def from_dict(cls, raw: Any) -> FigureSpec | None:
        """A spec read back from result.json; None when it names no metric."""
        if not isinstance(raw, dict) or not isinstance(raw.get("metric"), str) or not raw["metric"]:
            return None
        hlines = []
        for item in raw.get("hlines") or []:
            value = _num(item[0], None) if isinstance(item, list) and len(item) == 2 else None
            if value is not None and math.isfinite(value):
                hlines.append((value, str(item[1])))
        variants = raw.get("variants") or []
        return cls(
            metric=raw["metric"],
            title=str(raw.get("title") or raw["metric"]),
            x=str(raw.get("x") or ""),
            x_label=str(raw.get("x_label") or ""),
            y_label=str(raw.get("y_label") or ""),
            log_y=bool(raw.get("log_y")),
            reference=str(raw.get("reference") or ""),
            reference_label=str(raw.get("reference_label") or ""),
            variants=tuple(str(v) for v in variants) if isinstance(variants, list) else (),
            hlines=tuple(hlines),
            caption=str(raw.get("caption") or ""),
        )


@dataclass
class JobRecord:
    """One finished job: its variant and seed, and the numbers it measured."""

    experiment: str
    preset: str
    variant: str
    seed: int
    metrics: dict[str, Any]
    config_hash: str = ""
    device: str = ""
    seconds: float = math.nan
    finished: float = math.nan
    pid: int = 0
    cpu_seconds: float = math.nan  # CPU time of the job's process (one torch thread): what a quiet core would take

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def brief(self) -> dict[str, Any]:
        """What result.json keeps of a job."""
        return {"variant": self.variant, "seed": self.seed, "seconds": self.seconds, "cpu_seconds": self.cpu_seconds, "metrics": self.metrics}

    @classmethod
    def from_dict(cls, raw: Any, experiment: str = "", preset: str = "") -> JobRecord | None:
        if not isinstance(raw, dict) or "metrics" not in raw:
            return None
        seed = raw.get("seed")
        return cls(
            experiment=_str(raw.get("experiment"), experiment),
            preset=_str(raw.get("preset"), preset),
            variant=str(raw.get("variant", "")),
            seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else 0,
            metrics=_dict(raw.get("metrics")),  # a hand-edited or foreign file: no curves, no crash
            config_hash=_str(raw.get("config_hash")),
            device=_str(raw.get("device")),
            seconds=_num(raw.get("seconds")),
            finished=_num(raw.get("finished")),
            pid=raw.get("pid") if isinstance(raw.get("pid"), int) else 0,
            cpu_seconds=_num(raw.get("cpu_seconds")),
        )

    @classmethod
    def read(cls, path: Path) -> JobRecord | None:
        return cls.from_dict(_io.read_json(path))


@dataclass
class Verdict:
    """Whether the measured numbers show the claim, by the stated ``criterion``.

    ``scale_limited`` is True when the run was smaller than the claim needs (the judge states
    the rule); a failed criterion then reads "not reproduced at quick scale" rather than "fail".
    ``setup_only`` marks a smoke run: it checks that the set-up runs and judges no claim.
    """

    passed: bool
    criterion: str
    summary: str  # one line with the key measured numbers
    measured: dict[str, Any] = field(default_factory=dict)
    scale_limited: bool = False
    headline: str = ""  # the few numbers that make the point, for the terminal table ("" = summary)
    setup_only: bool = False
    error: bool = False  # jobs failed: no verdict could be reached

    @property
    def status(self) -> str:
        if self.error:
            return STATUS_ERROR
        if self.setup_only:
            return STATUS_SETUP
        if self.passed:
            return STATUS_PASS
        return STATUS_SCALE if self.scale_limited else STATUS_FAIL

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, raw: Any) -> Verdict:
        # A verdict of another shape (a bare "passed", a list) is a damaged or foreign file: saying
        # "fail" or "no verdict" for it would be a silent wrong result, so it is refused.
        if raw is not None and not isinstance(raw, dict):
            raise ValueError(f"a lab result's verdict must be a JSON object (or null), got {type(raw).__name__} {raw!r}")
        raw = _dict(raw)
        status = _str(raw.get("status"))
        passed = raw.get("passed") if isinstance(raw.get("passed"), bool) else status == STATUS_PASS
        return cls(
            passed=passed,
            criterion=_str(raw.get("criterion")),
            summary=_str(raw.get("summary")),
            measured=_dict(raw.get("measured")),
            scale_limited=bool(raw.get("scale_limited")) or status == STATUS_SCALE,
            headline=_str(raw.get("headline")),
            setup_only=bool(raw.get("setup_only")) or status == STATUS_SETUP,
            error=bool(raw.get("error")) or status == STATUS_ERROR,
        )


STATUS_PASS = "pass"
STATUS_FAIL = "fail"
STATUS_SCALE = "not reproduced at quick scale"
STATUS_SETUP = "set-up ran (smoke)"  # a smoke run: the code ran end to end; it judges no claim
STATUS_ERROR = "error"


@dataclass
class Result:
    """One experiment at one preset: its claim, anchor, config, every job, figures and verdict."""

    experiment: str
    claim: str
    anchor: str
    preset: str
    verdict: Verdict
    short_anchor: str = ""
    seeds: list[int] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    config_hash: str = ""
    device: str = ""
    environment: dict[str, Any] = field(default_factory=dict)
    seconds: float = math.nan
    cpu_seconds: float = math.nan  # the jobs' CPU time, summed
    jobs: list[JobRecord] = field(default_factory=list)
    figures: list[FigureSpec] = field(default_factory=list)  # how the report draws the curves (it never imports experiments)
    errors: dict[str, str] = field(default_factory=dict)
    created: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["verdict"] = self.verdict.to_dict()
        d["jobs"] = [j.brief() for j in self.jobs]
        d["figures"] = [f.to_dict() for f in self.figures]
        d["short_anchor"] = self.short_anchor or self.anchor
        if not self.errors:
            d.pop("errors")
        return d

    def write(self, path: Path) -> Path:
        return _io.write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, raw: Any) -> Result | None:
        """A result read back; None when ``raw`` is no lab result (no experiment or no verdict)."""
        if not isinstance(raw, dict) or not isinstance(raw.get("experiment"), str) or "verdict" not in raw:
            return None
        experiment, preset = raw["experiment"], _str(raw.get("preset"))
        raw_jobs, raw_figures = raw.get("jobs"), raw.get("figures")
        jobs = [j for j in (JobRecord.from_dict(x, experiment, preset) for x in (raw_jobs if isinstance(raw_jobs, list) else [])) if j]
        figures = [s for s in (FigureSpec.from_dict(x) for x in (raw_figures if isinstance(raw_figures, list) else [])) if s]
        seeds = raw.get("seeds")
        return cls(
            experiment=experiment,
            claim=_str(raw.get("claim")),
            anchor=_str(raw.get("anchor")),
            preset=preset,
            verdict=Verdict.from_dict(raw.get("verdict")),
            short_anchor=_str(raw.get("short_anchor")),
            seeds=[s for s in seeds if isinstance(s, int)] if isinstance(seeds, list) else [],
            config=_dict(raw.get("config")),
            config_hash=_str(raw.get("config_hash")),
            device=_str(raw.get("device")),
            environment=_dict(raw.get("environment")),
            seconds=_num(raw.get("seconds")),
            cpu_seconds=_num(raw.get("cpu_seconds")),
            jobs=jobs,
            figures=figures,
            errors={str(k): str(v) for k, v in _dict(raw.get("errors")).items()},
            created=_num(raw.get("created")),
        )

    @classmethod
    def read(cls, path: Path) -> Result | None:
        return cls.from_dict(_io.read_json(path))


def read_results(root: str | Path) -> Iterator[tuple[Path, Result]]:
    """Every result.json at or below ``root`` that is a lab result: (its folder, the Result)."""
    for path in sorted(Path(root).rglob("result.json")):
        result = Result.read(path)
        if result is not None:
            yield path.parent, result


def read_unjudged(root: str | Path, judged: set[Path]) -> dict[Path, list[JobRecord]]:
    """Finished jobs in experiment folders that have no result yet, by folder."""
    out: dict[Path, list[JobRecord]] = {}
    for path in sorted(Path(root).rglob("jobs/*.json")):
        folder = path.parent.parent
        if folder in judged:
            continue
        record = JobRecord.read(path)
        if record is not None and record.experiment:
            out.setdefault(folder, []).append(record)
    return out
