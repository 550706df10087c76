"""How parameters form groups ("modules"): one object shared by the per-module gradient norms,
the parameter probe and ``GradNorms.by_module``.

A grouping maps each parameter name to a label (its owning module, a truncated module path, a
glob pattern's label, or any function), keeps the labels in first-seen order, and turns a step's
per-tensor norms into per-group norms with one scatter (``reduce_groups``). The index tensor of a
list of names is cached, so a step with the same gradients as the last one builds nothing.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from gradguard._errors import GradGuardWarning, check_int
from gradguard._grads import index_tensor
from gradguard._norms import module_of, pattern_grouper, reduce_groups


def grouper(group_by: Any) -> Callable[[str], str]:
    """``group_by`` as a function of the parameter name: None (owning module), an int depth,
    ``{label: glob}`` patterns, or a function."""
    if group_by is None:
        return module_of
    if isinstance(group_by, bool):
        raise TypeError("group_by must be None, an int depth, a {label: pattern} mapping or a function.")
    if isinstance(group_by, int):
        depth = check_int("group_by", group_by, minimum=1)
        return lambda name: module_of(name, depth)
    if isinstance(group_by, Mapping):
        for label, pats in group_by.items():
            pats = (pats,) if isinstance(pats, str) else pats
            if not isinstance(label, str) or not isinstance(pats, (list, tuple)) or not pats or not all(isinstance(p, str) for p in pats):
                raise TypeError(f"group_by maps a label (str) to a glob pattern or a list of them, e.g. {{'encoder': 'enc.*'}}; "
                                f"got {label!r}: {group_by[label]!r}.")
        return pattern_grouper(group_by)
    if callable(group_by):
        return group_by
    raise TypeError(f"group_by must be None, an int depth, a {{label: pattern}} mapping or a function; got {type(group_by).__name__}.")


class Grouping:
    """Group labels of parameter names, fixed at construction (``fixed=True``, Guard's case: a
    parameter of an unknown group counts in the total, not per group, and warns once) or growing
    as new labels appear (``fixed=False``: ``by_module`` on any set of names)."""

    def __init__(self, key: Callable[[str], str], names: Iterable[str] = (), *, fixed: bool = True):
        self.key = key
        self.fixed = fixed
        self.labels: list[str] = []
        self._pos: dict[str, int] = {}
        for name in names:
            self._label(name)
        self._cache: dict[tuple[str, ...], tuple[Tensor, Tensor, list[bool]]] = {}
        self._warned = False

    @classmethod
    def of_model(cls, model: torch.nn.Module, group_by: Any = None) -> Grouping:
        """The groups of ``model``'s trainable parameters, in parameter order."""
        return cls(grouper(group_by), [n for n, p in model.named_parameters() if p.requires_grad])

    def __len__(self) -> int:
        return len(self.labels)

    def _label(self, name: str) -> int:
        label = self.key(name)
        pos = self._pos.get(label)
        if pos is None:
            pos = self._pos[label] = len(self.labels)
            self.labels.append(label)
        return pos

    def index(self, names: tuple[str, ...], device: torch.device) -> tuple[Tensor, Tensor, list[bool]]:
        """(group position of each name as a device tensor, which groups have a name as a device
        bool tensor, the same as host booleans). Position ``len(self)`` collects unknown names."""
        cached = self._cache.get(names)
        if cached is not None and cached[0].device == device:
            return cached
        if not self.fixed:
            for name in names:
                self._label(name)
        n = len(self.labels)
        index, present = [], [False] * (n + 1)
        for pname in names:
            pos = self._pos.get(self.key(pname), n)
            if pos == n and not self._warned:
                warnings.warn(f"parameter {pname!r} was not trainable when Guard was built; it counts in the total norm but not per module.", GradGuardWarning, stacklevel=5)
                self._warned = True
            index.append(pos)
            present[pos] = True
        result = (index_tensor(tuple(index), device), torch.tensor(present[:n], device=device), present[:n])
        self._cache[names] = result
        return result

    def reduce(self, vector: Tensor, index: Tensor, norm_type: float, present: Tensor | None = None) -> Tensor:
        """Per-group norms from per-tensor norms; NaN for groups without a gradient (with ``present``)."""
        n = len(self.labels)
        values = reduce_groups(vector, index, n + 1, norm_type)[:n]
        return values if present is None else torch.where(present, values, math.nan)

    def norms(self, names: tuple[str, ...], vector: Tensor, norm_type: float) -> dict[str, Tensor]:
        """{label: 0-dim norm} of the groups present among ``names``."""
        if not names:
            return {}
        index, _, present = self.index(names, vector.device)
        values = self.reduce(vector, index, norm_type)
        return {label: v for label, v, ok in zip(self.labels, values.unbind(0), present) if ok}
