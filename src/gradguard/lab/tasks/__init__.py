"""Lab tasks: synthetic long-range problems and small bundled data sets, each with a baseline.

``make_task("adding", length=200)`` builds one by name; ``TASKS`` lists the names.
"""

from __future__ import annotations

from typing import Any

from gradguard._errors import unknown_name
from gradguard.lab.tasks._base import Baseline, Task
from gradguard.lab.tasks.data import Digits, Sunspots, digits_arrays, sunspot_series
from gradguard.lab.tasks.synthetic import Adding, CopyMemory, Multiplication, TemporalOrder


def _adding(variant):
    return lambda length=100: Adding(length, variant)


TASKS = {
    "adding": _adding("modern"),
    "adding-pascanu": _adding("pascanu"),
    "adding-1997": _adding("1997"),
    "multiplication": Multiplication,
    "copy": CopyMemory,
    "temporal-order": lambda length=100: TemporalOrder(length, bits=2),
    "temporal-order-3bit": lambda length=100: TemporalOrder(length, bits=3),
    "digits": Digits,
    "sunspots": Sunspots,
}


def make_task(name: str, **kwargs: Any) -> Task:
    """Build a task by name (see ``TASKS``); keyword arguments go to its constructor."""
    if name not in TASKS:
        raise unknown_name("task", name, TASKS)
    return TASKS[name](**kwargs)


__all__ = [
    "TASKS",
    "Adding",
    "Baseline",
    "CopyMemory",
    "Digits",
    "Multiplication",
    "Sunspots",
    "Task",
    "TemporalOrder",
    "digits_arrays",
    "make_task",
    "sunspot_series",
]
