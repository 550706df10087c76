"""One readable line per event, for the HTML and Markdown events tables.

A store keeps each event's whole payload (a forensic dump holds the ring buffer: dozens of steps
with their norms and z-scores); a table row says what happened instead: which parameters broke,
how far a spike went past its threshold, which module moved first, the range a dump covers.
Lists of numbers become their count and range, never the list itself. Not escaped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

MAX_NAMES = 3


def steps_text(steps: Sequence[int]) -> str:
    """'step 150', 'steps 40 and 41', 'steps 3, 9 and 12', or 'steps 1-500 (37 steps)' when long."""
    steps = [int(s) for s in steps]
    if not steps:
        return "no step"
    if len(steps) == 1:
        return f"step {steps[0]}"
    if len(steps) <= 6:
        return "steps " + ", ".join(map(str, steps[:-1])) + f" and {steps[-1]}"
    return f"steps {steps[0]}\u2013{steps[-1]} ({len(steps)} steps: " + ", ".join(map(str, steps[:3])) + ", \u2026)"


def _names(names: Sequence[Any], limit: int = MAX_NAMES) -> str:
    names = [str(n) for n in names]
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f" and {len(names) - limit} more"


def _numbers(values: Sequence[Any]) -> list[float]:
    out = []
    for v in values:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append(float(v))
        elif isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
            out.append(float(v[1]))  # [step, value] pairs: the value
    return out


def _range(values: Sequence[Any], fmt: Callable[[float], str]) -> str:
    nums = [v for v in _numbers(values) if math.isfinite(v)]
    if not nums:
        return "no finite value"
    lo, hi = min(nums), max(nums)
    return fmt(lo) if lo == hi else f"{fmt(lo)} to {fmt(hi)}"


def _value(key: str, value: Any, fmt: Callable[[float], str]) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return fmt(value)
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return f"{len(value)} entries"
    if isinstance(value, (list, tuple)):
        if not value:
            return "none"
        if all(isinstance(v, str) for v in value):
            return _names(value)
        if key in ("steps", "step") and all(isinstance(v, int) for v in value):
            return steps_text(value)
        nums = _numbers(value)
        if len(nums) == len(value):
            return f"{len(value)} values, {_range(value, fmt)}"
        return f"{len(value)} entries"
    return str(value)


def event_summary(event: Mapping[str, Any], fmt: Callable[[float], str] = lambda v: f"{v:.4g}", limit: int = 240) -> str:
    """What an event says, in words; unknown kinds as 'key: value' pairs with lists summarised."""
    kind = event.get("kind")
    get = event.get
    if kind == "skip":
        params = list(get("parameters") or [])
        text = "step skipped: non-finite gradient" + (f" in {_names(params)}" if params else "")
    elif kind == "spike":
        trigger = get("trigger") or "grad_norm"
        what = {"grad_norm": "gradient norm", "loss": "loss", "nonfinite": "non-finite gradient norm"}.get(trigger, str(trigger))
        z, zt = get("z"), get("z_threshold")
        text = f"{what} spike"
        if trigger != "nonfinite" and isinstance(z, (int, float)) and math.isfinite(z):
            text += f", z = {fmt(z)}" + (f" (threshold {fmt(zt)})" if isinstance(zt, (int, float)) and math.isfinite(zt) else "")
        if get("first_module"):
            text += f"; first module to move: {get('first_module')}"
            if get("first_step") is not None:
                text += f" at step {int(get('first_step'))}"
        n = get("spikes_in_chunk")
        if isinstance(n, int) and n > 1:
            text += f"; {n} spiking steps in this stretch"
    elif kind == "forensics":
        steps = [s for s in (get("steps") or []) if isinstance(s, int)]
        text = "recent history kept at the spike"
        if steps:
            text += f": {steps_text(steps)}"
        if get("total_norm"):
            text += f"; total norm {_range(get('total_norm'), fmt)}"
        if get("loss"):
            text += f"; loss {_range(get('loss'), fmt)}"
        if get("modules"):
            text += f"; {len(get('modules'))} modules' norms"
    elif kind == "nonfinite_location":
        where = list(get("where") or ([get("module")] if get("module") else []))
        text = "NaN/Inf first appeared" + (f" in {_names(where)}" if where else "")
        if get("phase"):
            text += f" ({get('phase')})"
        if get("message") and not where:
            text += f": {get('message')}"
    else:
        text = "; ".join(f"{k}: {_value(k, v, fmt)}" for k, v in event.items() if k not in ("step", "kind"))
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"
