"""``Finding``: one diagnosis, with the evidence behind it, a concrete remedy and its machine form."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

# Ordered from least to most urgent.
SEVERITIES = ("info", "warning", "error")

# The codes the rules emit, root causes first: when two findings of the same severity both claim
# to be a cause, the one earlier here is the more fundamental (non-finite data explains a NaN
# gradient, an un-averaged loss explains a learning rate that is "too high", and so on).
CAUSE_CODES = (
    "NONFINITE_INPUT",  # NaN/Inf in the batch the model was given
    "SCALER_COLLAPSE",  # a GradScaler skipping every step while its scale falls toward 0
    "FP16_OVERFLOW",  # a float16 value past 65504, forward or backward
    "LOSS_NOT_AVERAGED",  # a loss summed over the batch, or accumulated without dividing
    "LR_TOO_HIGH",  # the learning rate, for this model and optimizer
    "INIT_SCALE",  # weights initialised off the scale their activation needs
    "SATURATION",
    "DEAD_UNITS",
    "RECURRENT_SPECTRUM",
    "VANISHING_GRADIENT",
    "EXPLODING_GRADIENT",
    "NONFINITE",  # a cause when a module's op produced it; otherwise the symptom of one above
    "UPDATE_RATIO",
)
# Codes that describe what happened rather than why; a rule names their cause when it can.
SYMPTOM_CODES = (
    "GRADIENT_SPIKE",
    "LOSS_OSCILLATION",
    "CLIPPING_ALWAYS",
    "CLIPPING_NEVER",
    "CLIP_THRESHOLD",
)
CODES = CAUSE_CODES + SYMPTOM_CODES


@dataclass(frozen=True)
class Finding:
    """A diagnosis.

    Attributes:
        code: what was found, e.g. "VANISHING_GRADIENT" (see ``CODES``).
        severity: "info", "warning" or "error".
        message: one sentence, with the key numbers.
        where: module or parameter names it concerns, most relevant first.
        evidence: the measured numbers and the thresholds they were compared with.
        remedy: a concrete suggestion, in the syntax of the loop the run used (plain loop,
            Lightning or Hugging Face).
        step: the optimizer step it refers to, when it refers to one.
        caused_by: for a symptom, the code of the finding that explains it (None for a cause).
        fix: the remedy as a config change, e.g. ``{"lr": 3e-4}`` or ``{"clip": 2.5}``; empty
            when there is none. Keys: see ``FIX_KEYS``.
    """

    code: str
    severity: str
    message: str
    where: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    remedy: str = ""
    step: int | None = None
    caused_by: str | None = None
    fix: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}.")
        if self.caused_by == self.code:
            raise ValueError(f"a finding cannot be its own cause ({self.code!r}).")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite evidence numbers become strings such as 'nan')."""
        out = asdict(self)
        out["evidence"] = {k: _jsonable(v) for k, v in self.evidence.items()}
        out["fix"] = {k: _jsonable(v) for k, v in self.fix.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        """The inverse of ``to_dict``; dicts written before ``caused_by`` and ``fix`` existed load too."""
        return cls(
            code=data["code"],
            severity=data["severity"],
            message=data["message"],
            where=list(data.get("where", [])),
            evidence=dict(data.get("evidence", {})),
            remedy=data.get("remedy", ""),
            step=data.get("step"),
            caused_by=data.get("caused_by"),
            fix=dict(data.get("fix") or {}),
        )

    def __str__(self) -> str:
        where = f" [{', '.join(self.where[:4])}{', ...' if len(self.where) > 4 else ''}]" if self.where else ""
        cause = f" (caused by {self.caused_by})" if self.caused_by else ""
        lines = [f"{self.severity.upper()} {self.code}{where}{cause}: {self.message}"]
        if self.remedy:
            lines.append(f"  remedy: {self.remedy}")
        return "\n".join(lines)


# What each ``Finding.fix`` key means, as a change to a run's configuration.
FIX_KEYS = {
    "lr": "the learning rate, at most this at every step (peak of the schedule)",
    "warmup_steps": "a linear warm-up of the learning rate over this many steps",
    "clip": "clip the global gradient norm at this value (or a clipper name: 'zclip', 'autoclip')",
    "init": "re-initialise the weights for their activation: 'he', 'xavier' or 'orthogonal'",
    "activation": "replace the activation: 'relu', 'leaky_relu', 'gelu'",
    "norm": "add normalisation layers: 'batch' or 'layer'",
    "residual": "add residual connections (x + f(x))",
    "cell": "replace the recurrent cell: 'lstm' or 'gru'",
    "precision": "compute in this dtype: 'bf16' or 'fp32'",
    "upcast": "run these modules in float32 (a list of names)",
    "eps": "add this epsilon inside log/sqrt/division in the named module",
    "nonfinite": "Guard's non-finite policy: 'skip' drops the step of a bad batch",
    "loss_reduction": "'mean': average the loss over the batch instead of summing it",
    "loss_scale": "multiply the loss by this (1/k when k micro-batches are accumulated)",
}


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


def _rank(f: Finding) -> tuple[int, int]:
    """Most urgent first; among equals, the more fundamental cause first."""
    order = CODES.index(f.code) if f.code in CODES else len(CODES)
    return (-SEVERITIES.index(f.severity), order)


def causal_order(findings: list[Finding]) -> list[Finding]:
    """Root causes first (most urgent, then most fundamental), each followed by the symptoms it explains.

    A symptom whose ``caused_by`` names no finding in the list counts as a root. The order depends
    only on the findings, so applying it twice changes nothing.
    """
    present = {f.code for f in findings}
    roots = sorted((f for f in findings if f.caused_by not in present), key=_rank)
    children: dict[str, list[Finding]] = {}
    for f in findings:
        if f.caused_by in present:
            children.setdefault(f.caused_by, []).append(f)
    out: list[Finding] = []
    placed: set[int] = set()

    def place(f: Finding) -> None:
        if id(f) in placed:
            return
        placed.add(id(f))
        out.append(f)
        for child in sorted(children.get(f.code, []), key=_rank):
            place(child)

    for f in roots:
        place(f)
    for f in sorted(findings, key=_rank):  # a cycle of caused_by: keep every finding anyway
        place(f)
    return out


def by_severity(findings: list[Finding]) -> list[Finding]:
    """The order every consumer shows findings in: ``causal_order`` (kept under its old name,
    which callers use; within causes and within symptoms, the most urgent comes first)."""
    return causal_order(findings)
