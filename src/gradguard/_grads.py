"""Collect the gradients a pass works on, grouped by (device, dtype) for the fused kernels.

A ``GradBatch`` is built once per step and shared by the norm pass, the clippers and the
non-finite policy, so parameters are walked once. DTensor gradients (FSDP2) are unwrapped to
their local shards here; ``_norms`` reduces the shard norms with one collective.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import Tensor, nn

ParamsLike = Union[nn.Module, Tensor, Iterable[Tensor], Iterable[tuple[str, Tensor]], Mapping[str, Tensor]]

try:  # DTensor is part of torch.distributed, absent from some builds.
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard
except ImportError:  # pragma: no cover - builds without torch.distributed
    DTensor = Partial = Replicate = Shard = None


@dataclass(frozen=True)
class ShardLayout:
    """How one DTensor gradient is spread over its device mesh.

    ``reduce_dims`` are the mesh dimensions the gradient is sharded over: its local norms must be
    combined across them. Replicated dimensions hold identical copies and must not be summed.
    """

    mesh: Any
    reduce_dims: tuple[int, ...]


@dataclass(frozen=True)
class GradBatch:
    """Named gradients of one step, in parameter order, with their (device, dtype) groups."""

    names: tuple[str, ...]
    params: tuple[Tensor, ...]
    grads: tuple[Tensor, ...]  # local tensors: DTensor gradients are replaced by their shards
    groups: tuple[tuple[torch.device, torch.dtype, tuple[int, ...]], ...]
    layouts: tuple[ShardLayout | None, ...]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def sharded(self) -> bool:
        return any(layout is not None for layout in self.layouts)

    @property
    def device(self) -> torch.device:
        """Device where per-tensor statistics are gathered: the first gradient's."""
        return self.grads[0].device if self.grads else torch.device("cpu")

    def with_tensors(self, tensors: list[Tensor]) -> GradBatch:
        """The same parameters with other per-parameter tensors (local shards) in place of the
        gradients, e.g. the weights themselves, so the fused norm pass can measure them too."""
        return GradBatch(self.names, self.params, tuple(tensors), _groups(tensors), self.layouts)

    def group_grads(self) -> list[tuple[torch.device, torch.dtype, list[int], list[Tensor]]]:
        return [(dev, dt, list(idx), [self.grads[i] for i in idx]) for dev, dt, idx in self.groups]


def named_parameters(parameters: ParamsLike) -> list[tuple[str, Tensor]]:
    """Normalise what users pass (a module, a tensor, tensors, (name, tensor) pairs, a dict)."""
    if isinstance(parameters, nn.Module):
        return list(parameters.named_parameters())
    if isinstance(parameters, Tensor):
        return [("[0]", parameters)]
    if isinstance(parameters, Mapping):
        items = list(parameters.items())
    else:
        try:
            items = list(parameters)
        except TypeError:
            raise TypeError(
                "expected a module, a tensor, an iterable of tensors or of (name, tensor) pairs; "
                f"got {type(parameters).__name__}."
            ) from None
        if items and isinstance(items[0], Tensor):
            bad = [type(p).__name__ for p in items if not isinstance(p, Tensor)]
            if bad:
                raise TypeError(f"expected only tensors in the iterable, also found {bad[0]}.")
            return [(f"[{i}]", p) for i, p in enumerate(items)]
    out = []
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], Tensor)):
            raise TypeError(
                "expected tensors or (name, tensor) pairs such as model.named_parameters(); "
                f"got an item of type {type(item).__name__}: {item!r:.80}"
            )
        out.append(item)
    return out


def _layout(grad: Tensor) -> ShardLayout | None:
    if DTensor is None or not isinstance(grad, DTensor):
        return None
    dims = []
    for dim, placement in enumerate(grad.placements):
        if isinstance(placement, Partial):
            raise ValueError(
                "a gradient is a DTensor with a Partial placement (pending reduction); gradguard measures "
                "gradients after they are reduced. Call it after backward() has finished reducing gradients."
            )
        if isinstance(placement, Shard):
            dims.append(dim)
    return ShardLayout(grad.device_mesh, tuple(dims))


def collect(parameters: ParamsLike) -> GradBatch:
    """Gather the parameters that have a gradient, skipping frozen ones and duplicates (tied weights)."""
    return collect_named(named_parameters(parameters))


def collect_named(named: list[tuple[str, Tensor]]) -> GradBatch:
    """``collect`` for an already normalised list of unique (name, parameter) pairs (Guard's hot path)."""
    names, params, grads, layouts = [], [], [], []
    seen: set[int] = set()
    sharded = DTensor is not None and any(isinstance(p, DTensor) for _, p in named)
    for name, p in named:
        g = p.grad
        if g is None or id(p) in seen:
            continue
        seen.add(id(p))
        if g.layout != torch.strided:
            raise TypeError(
                f"parameter {name!r} has a sparse gradient ({g.layout}); gradguard handles dense gradients. "
                "Use a dense embedding (nn.Embedding(..., sparse=False)) or exclude the parameter."
            )
        _check_measurable(name, g)
        layout = _layout(g) if sharded else None
        if layout is not None:
            g = g.to_local()
        names.append(name)
        params.append(p)
        grads.append(g)
        layouts.append(layout)
    return GradBatch(tuple(names), tuple(params), tuple(grads), _groups(grads), tuple(layouts))


def _check_measurable(name: str, grad: Tensor) -> None:
    """Gradients whose norms gradguard cannot take, refused with what to do instead."""
    if grad.is_complex():
        raise TypeError(
            f"parameter {name!r} has a complex gradient ({grad.dtype}); gradguard measures and clips real "
            "gradients. Keep complex parameters as real pairs (torch.view_as_real) or exclude the parameter."
        )
    if grad.is_meta:
        raise ValueError(
            f"parameter {name!r} has a gradient on the meta device, which holds no values to measure. "
            "Materialise the model first (model.to_empty(device=...) and initialise it) before training."
        )


class CachedCollector:
    """``collect_named`` for a parameter list that rarely changes (Guard's, every step).

    What does not change from step to step (names, (device, dtype) groups, the sparse check) is
    reused while the same parameters have gradients of the same device, dtype and layout; only
    the gradient tensors are read afresh. Any change (a parameter gains or loses its gradient, a
    model moved or cast) rebuilds it. DTensor gradients (FSDP2) always take the full path: their
    local shards are new tensors every step.
    """

    def __init__(self) -> None:
        self._key: tuple[int, ...] | None = None
        self._kinds: list[tuple[torch.device, torch.dtype, torch.layout]] = []
        # names, params, groups, layouts of the last full collection; never its gradients, which
        # would stay alive (a second copy of every gradient) until the next rebuild.
        self._plan: tuple = ()

    def __call__(self, named: list[tuple[str, Tensor]]) -> GradBatch:
        present = [(p, p.grad) for _, p in named]
        present = [(p, g) for p, g in present if g is not None]
        grads = [g for _, g in present]
        key = tuple(id(p) for p, _ in present)
        if key == self._key and [(g.device, g.dtype, g.layout) for g in grads] == self._kinds:
            names, params, groups, layouts = self._plan
            return GradBatch(names, params, tuple(grads), groups, layouts)
        batch = collect_named(named)
        # Reusable only when nothing was dropped as a duplicate and nothing is sharded; the plan
        # holds the parameters, so their ids cannot be reused while the key is kept.
        reusable = not batch.sharded and len(batch) == len(key)
        self._key = key if reusable else None
        self._kinds = [(g.device, g.dtype, g.layout) for g in grads]
        self._plan = (batch.names, batch.params, batch.groups, batch.layouts)
        return batch


def _groups(tensors: list[Tensor]) -> tuple[tuple[torch.device, torch.dtype, tuple[int, ...]], ...]:
    """Positions of the tensors by (device, dtype), groups in first-seen order."""
    buckets: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        buckets.setdefault((t.device, t.dtype), []).append(i)
    return tuple((dev, dt, tuple(idx)) for (dev, dt), idx in buckets.items())


_INDEX_CACHE: dict[tuple[tuple[int, ...], torch.device], torch.Tensor] = {}


def index_tensor(positions: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A cached long tensor of ``positions`` on ``device``: a host-to-device copy happens once, not
    every step (on an accelerator each copy would make the step wait for the host)."""
    key = (positions, torch.device(device))
    cached = _INDEX_CACHE.get(key)
    if cached is None:
        if len(_INDEX_CACHE) > 1024:  # parameter sets rarely change; bound the cache anyway
            _INDEX_CACHE.clear()
        cached = _INDEX_CACHE[key] = torch.tensor(positions, dtype=torch.long, device=device)
    return cached


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics are kept in float32 for low-precision gradients (an fp16 norm overflows at 65504)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def is_inf(norm_type: float) -> bool:
    return math.isinf(norm_type)
