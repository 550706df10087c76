"""``Finding``: one diagnosis, with the evidence behind it and a concrete remedy."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

# Ordered from least to most urgent.
SEVERITIES = ("info", "warning", "error")

# The codes the rules emit; reports colour and sort by severity, not by code.
CODES = (
    "VANISHING_GRADIENT",
    "EXPLODING_GRADIENT",
    "GRADIENT_SPIKE",
    "LOSS_OSCILLATION",
    "NONFINITE",
    "SATURATION",
    "DEAD_UNITS",
    "CLIPPING_ALWAYS",
    "CLIPPING_NEVER",
    "CLIP_THRESHOLD",
    "RECURRENT_SPECTRUM",
    "INIT_SCALE",
    "UPDATE_RATIO",
)


@dataclass(frozen=True)
class Finding:
    """A diagnosis.

    Attributes:
        code: what was found, e.g. "VANISHING_GRADIENT" (see ``CODES``).
        severity: "info", "warning" or "error".
        message: one sentence, with the key numbers.
        where: module or parameter names it concerns, most relevant first.
        evidence: the measured numbers and the thresholds they were compared with.
        remedy: a concrete suggestion (often code, e.g. ``gg.ClipNorm(max_norm=2.3)``).
        step: the optimizer step it refers to, when it refers to one.
    """

    code: str
    severity: str
    message: str
    where: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    remedy: str = ""
    step: int | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite evidence numbers become strings such as 'nan')."""
        out = asdict(self)
        out["evidence"] = {k: _jsonable(v) for k, v in self.evidence.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        return cls(
            code=data["code"],
            severity=data["severity"],
            message=data["message"],
            where=list(data.get("where", [])),
            evidence=dict(data.get("evidence", {})),
            remedy=data.get("remedy", ""),
            step=data.get("step"),
        )

    def __str__(self) -> str:
        where = f" [{', '.join(self.where[:4])}{', ...' if len(self.where) > 4 else ''}]" if self.where else ""
        lines = [f"{self.severity.upper()} {self.code}{where}: {self.message}"]
        if self.remedy:
            lines.append(f"  remedy: {self.remedy}")
        return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _jsonable(value.item())
    return value


def by_severity(findings: list[Finding]) -> list[Finding]:
    """Most urgent first, stable within a severity."""
    return sorted(findings, key=lambda f: -SEVERITIES.index(f.severity))
