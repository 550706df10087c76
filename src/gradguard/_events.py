"""Events: the things that happened at one step (a skip, a spike, where a NaN started...).

Each kind is a small dataclass; the monitor creates them, the run store keeps them as JSON
(``kind`` plus the payload), and the rules and the report read them back as the same classes.
Events also read like the plain dicts they used to be (``event["kind"]``, ``event.get("z")``),
so code that only needs one field does not care which class it holds.

Adding a kind: a dataclass here with ``kind`` as its default and an entry in ``KINDS``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar


@dataclass
class Event(Mapping):
    """Base: the step (None when not tied to one), the kind, and ``extra`` fields of a payload
    this class does not declare (so nothing read from a store is lost)."""

    step: int | None
    extra: dict[str, Any] = field(default_factory=dict, kw_only=True)
    kind: ClassVar[str] = "event"

    def payload(self) -> dict[str, Any]:
        """Everything but ``step`` and ``kind``: what the store writes as JSON."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("step", "extra")}
        out.update(self.extra)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "kind": self.kind, **self.payload()}

    # Mapping: read like the dict of the store's row
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


@dataclass
class SkipEvent(Event):
    """A step the non-finite policy skipped; ``parameters`` held NaN or Inf gradients."""

    parameters: list[str] = field(default_factory=list)
    kind: ClassVar[str] = "skip"


@dataclass
class SpikeEvent(Event):
    """A jump of the gradient norm or the loss against its moving average (``_probes._spikes``)."""

    trigger: str = "grad_norm"  # "grad_norm", "loss" or "nonfinite"
    z: float = float("nan")
    z_threshold: float = float("nan")
    spikes_in_chunk: int = 1
    first_module: str | None = None
    first_step: int | None = None
    first_z: float | None = None
    kind: ClassVar[str] = "spike"


@dataclass
class ForensicsEvent(Event):
    """The forensic ring buffer dumped at a spike: recent steps' norms, losses, update ratios."""

    dump: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "forensics"

    def payload(self) -> dict[str, Any]:
        return {**self.dump, **self.extra}


@dataclass
class NonfiniteLocationEvent(Event):
    """Where NaN/Inf first appeared, forward or backward, on the step after a skip (``_probes._locate``)."""

    where: list[str] = field(default_factory=list)
    message: str = ""
    remedy: str = ""
    kind: ClassVar[str] = "nonfinite_location"


@dataclass
class NonfiniteInputEvent(Event):
    """NaN/Inf in the model's floating-point inputs on a step whose norms were non-finite (``_probes._inputs``)."""

    what: str = ""
    inputs: list[str] = field(default_factory=list)
    kind: ClassVar[str] = "nonfinite_input"


KINDS: dict[str, type[Event]] = {cls.kind: cls for cls in (SkipEvent, SpikeEvent, ForensicsEvent, NonfiniteLocationEvent, NonfiniteInputEvent)}


@dataclass
class OtherEvent(Event):
    """An event of a kind this version does not know (read from a newer store): kept as is."""

    other_kind: str = "event"

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "kind": self.other_kind, **self.extra}

    def payload(self) -> dict[str, Any]:
        return dict(self.extra)


def make_event(kind: str, step: int | None, payload: Mapping[str, Any]) -> Event:
    """The typed event of ``kind``: declared fields from ``payload``, the rest in ``extra``."""
    cls = KINDS.get(kind)
    if cls is None:
        return OtherEvent(step, extra=dict(payload), other_kind=kind)
    if cls is ForensicsEvent:
        return ForensicsEvent(step, dump=dict(payload))
    names = {f.name for f in fields(cls)} - {"step", "extra"}
    known = {k: v for k, v in payload.items() if k in names}
    extra = {k: v for k, v in payload.items() if k not in names}
    return cls(step, extra=extra, **known)


def as_event(value: Event | Mapping[str, Any]) -> Event:
    """An ``Event`` as is; a dict with "kind" and "step" (a store row, older code) as its typed event."""
    if isinstance(value, Event):
        return value
    payload = {k: v for k, v in value.items() if k not in ("step", "kind")}
    return make_event(str(value.get("kind", "event")), value.get("step"), payload)
