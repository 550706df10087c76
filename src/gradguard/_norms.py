"""Gradient norms from one fused pass: per tensor, total, per group, and unit-wise.

Every statistic gradguard keeps starts here. Per (device, dtype) group, ``torch._foreach_norm``
reads each gradient once; totals and group norms are reduced from the per-tensor norms, never
from the gradients again. A tensor holds a NaN or Inf exactly when its norm is NaN or Inf, so the
non-finite check is read off these norms too (a finite gradient whose norm overflows the float32
range also reads as non-finite: such a step cannot be clipped meaningfully either).

Nothing here calls ``.item()``: results stay on the device until someone asks for them.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from gradguard._errors import check_norm_type
from gradguard._grads import GradBatch, ParamsLike, ShardLayout, collect, index_tensor, is_inf, stat_dtype

ROOT = "(root)"  # group of parameters registered directly on the top-level module
OTHER = "(other)"  # group of parameters no pattern matched


@dataclass(frozen=True)
class GradNorms:
    """Norms of one step's gradients. All tensors live on the gradients' device.

    Attributes:
        names: parameter names, in parameter order.
        vector: 1-D tensor of per-tensor norms, aligned with ``names``.
        total: 0-dim tensor, the norm of all gradients viewed as one vector.
        norm_type: the p of the p-norm (``math.inf`` for the max norm).
    """

    names: tuple[str, ...]
    vector: Tensor
    total: Tensor
    norm_type: float

    @cached_property
    def per_tensor(self) -> dict[str, Tensor]:
        """Name -> 0-dim norm tensor."""
        return dict(zip(self.names, self.vector.unbind(0))) if self.names else {}

    @property
    def finite(self) -> Tensor:
        """0-dim bool tensor, True when every gradient is finite. No host sync."""
        return torch.isfinite(self.total)

    @cached_property
    def nonfinite(self) -> list[str]:
        """Names whose gradient holds NaN or Inf. Reading this synchronises with the device."""
        if not self.names:
            return []
        bad = (~torch.isfinite(self.vector)).nonzero().flatten().tolist()
        return [self.names[i] for i in bad]

    def by_module(self, depth: int | None = None) -> dict[str, Tensor]:
        """Norms per owning module, optionally truncated to the first ``depth`` name components."""
        return group_norms(self, lambda name: module_of(name, depth))

    def by_pattern(self, patterns: Mapping[str, str | Sequence[str]]) -> dict[str, Tensor]:
        """Norms per label of ``{label: glob pattern(s)}``; the first matching label wins."""
        return group_norms(self, pattern_grouper(patterns))


def module_of(name: str, depth: int | None = None) -> str:
    """'encoder.0.weight' -> 'encoder.0' (or 'encoder' with depth=1)."""
    owner = name.rpartition(".")[0]
    if not owner:
        return ROOT
    if depth is not None:
        owner = ".".join(owner.split(".")[:depth])
    return owner


def pattern_grouper(patterns: Mapping[str, str | Sequence[str]]) -> Callable[[str], str]:
    compiled = [(label, (pats,) if isinstance(pats, str) else tuple(pats)) for label, pats in patterns.items()]

    def key(name: str) -> str:
        for label, pats in compiled:
            if any(fnmatch.fnmatchcase(name, pat) for pat in pats):
                return label
        return OTHER

    return key


def group_index(names: Sequence[str], key: Callable[[str], str]) -> tuple[list[str], list[int]]:
    """Group labels in first-seen order, and each name's group position."""
    labels: dict[str, int] = {}
    index = [labels.setdefault(key(n), len(labels)) for n in names]
    return list(labels), index


def reduce_groups(vector: Tensor, index: Tensor, n_groups: int, norm_type: float) -> Tensor:
    """Combine per-tensor norms into per-group norms: (sum n_i^p)^(1/p), or the max for p = inf."""
    if is_inf(norm_type):
        out = torch.zeros(n_groups, dtype=vector.dtype, device=vector.device)
        return out.scatter_reduce(0, index, vector, reduce="amax", include_self=False)
    out = torch.zeros(n_groups, dtype=vector.dtype, device=vector.device)
    return out.index_add_(0, index, vector.pow(norm_type)).pow(1.0 / norm_type)


def group_norms(norms: GradNorms, key: Callable[[str], str]) -> dict[str, Tensor]:
    """Norms per group, where ``key(name)`` gives a parameter's group label."""
    from gradguard._grouping import Grouping  # the grouping Guard and the parameter probe use

    return Grouping(key, fixed=False).norms(norms.names, norms.vector, norms.norm_type)


def reduce_shards(vector: Tensor, layouts: Sequence[ShardLayout | None], norm_type: float) -> Tensor:
    """Turn local norms of DTensor shards into global norms, one all-reduce per mesh dimension.

    ``layouts`` is aligned with ``vector``; entries that are None (plain tensors) are left alone.
    Shards' p-th powers add up (max for p = inf); replicated mesh dimensions are left out so copies
    are not counted twice.
    """
    import torch.distributed as dist

    by_layout: dict[tuple[int, tuple[int, ...]], tuple[ShardLayout, list[int]]] = {}
    for pos, layout in enumerate(layouts):
        if layout is not None and layout.reduce_dims:
            key = (id(layout.mesh), layout.reduce_dims)
            by_layout.setdefault(key, (layout, []))[1].append(pos)
    if not by_layout:
        return vector
    vector = vector.clone()
    op = dist.ReduceOp.MAX if is_inf(norm_type) else dist.ReduceOp.SUM
    for layout, positions in by_layout.values():
        pos = index_tensor(tuple(positions), vector.device)
        part = vector.index_select(0, pos)
        if is_inf(norm_type):
            # A MAX all-reduce can drop a NaN (gloo keeps the operand that compares greater, and a
            # NaN never does), which would hide a non-finite shard. Sent as +inf, it survives.
            part = torch.where(torch.isnan(part), torch.full_like(part, math.inf), part)
        else:
            part = part.pow(norm_type)
        for dim in layout.reduce_dims:
            dist.all_reduce(part, op=op, group=layout.mesh.get_group(dim))
        if not is_inf(norm_type):
            part = part.pow(1.0 / norm_type)
        vector.index_copy_(0, pos, part)
    return vector


def foreach_norm(grads: Sequence[Tensor], norm_type: float, dtype: torch.dtype | None = None) -> list[Tensor]:
    """``torch._foreach_norm``, where an empty tensor has norm 0 for every p, inf included.

    Under FSDP2 a rank can hold an empty shard (a bias of size 1 over two ranks); torch refuses
    the max norm of an empty tensor, and a rank that raised would leave the others hanging.
    """
    if not is_inf(norm_type) or all(g.numel() for g in grads):
        return list(torch._foreach_norm(grads, norm_type, dtype=dtype))
    nonempty = [g for g in grads if g.numel()]
    norms = iter(torch._foreach_norm(nonempty, norm_type, dtype=dtype) if nonempty else ())
    return [next(norms) if g.numel() else g.new_zeros((), dtype=dtype or g.dtype) for g in grads]


def batch_norms(batch: GradBatch, norm_type: float = 2.0) -> GradNorms:
    """The fused norm pass over a collected batch (see module docstring)."""
    norm_type = float(norm_type)
    if not len(batch):
        zero = torch.zeros((), device=batch.device)
        return GradNorms((), zero.new_zeros(0), zero, norm_type)
    parts, order = [], []
    for device, dtype, idx, grads in batch.group_grads():
        out_dtype = stat_dtype(dtype)
        norms = foreach_norm(grads, norm_type, dtype=None if out_dtype == dtype else out_dtype)
        parts.append(torch.stack(norms).to(batch.device))
        order.extend(idx)
    common = parts[0].dtype
    for part in parts[1:]:
        common = torch.promote_types(common, part.dtype)
    in_group_order = torch.cat([p.to(common) for p in parts]) if len(parts) > 1 else parts[0]
    if batch.sharded:
        in_group_order = reduce_shards(in_group_order, [batch.layouts[i] for i in order], norm_type)
    # Same summation order as torch.nn.utils.clip_grad_norm_, so ClipNorm matches it bit for bit.
    total = torch.linalg.vector_norm(in_group_order, norm_type)
    if order == sorted(order):
        vector = in_group_order
    else:
        inverse = [0] * len(order)
        for pos, idx in enumerate(order):
            inverse[idx] = pos
        vector = in_group_order.index_select(0, index_tensor(tuple(inverse), in_group_order.device))
    return GradNorms(batch.names, vector, total, norm_type)


def grad_norms(named_parameters: ParamsLike, norm_type: float | str = 2.0) -> GradNorms:
    """Per-tensor and total gradient norms, and the names of non-finite gradients, in one pass.

    Args:
        named_parameters: a module, ``model.named_parameters()``, tensors, or (name, tensor) pairs.
            Parameters without a gradient are skipped.
        norm_type: p of the p-norm, any p > 0 or ``inf``.

    Returns:
        ``GradNorms`` with ``total`` (0-dim tensor), ``per_tensor`` (name -> 0-dim tensor),
        ``nonfinite`` (names) and ``by_module()`` / ``by_pattern()`` groupings.

    Example:
        >>> import torch, gradguard as gg
        >>> w = torch.nn.Parameter(torch.ones(3)); w.grad = torch.full((3,), 2.0)
        >>> round(float(gg.grad_norms([("w", w)]).total), 4)
        3.4641
    """
    p = check_norm_type(norm_type)
    with torch.no_grad():
        return batch_norms(collect(named_parameters), p)


def unitwise_norm(x: Tensor, norm_type: float = 2.0) -> Tensor:
    """Norm of each output unit: over all dims but the first for matrices and conv kernels.

    Scalars and vectors (biases, norm gains) are one unit. PyTorch stores weights output-first,
    so this is the layout Brock et al. (2021) use for adaptive gradient clipping.
    """
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x, norm_type)
    return torch.linalg.vector_norm(x, norm_type, dim=tuple(range(1, x.ndim)), keepdim=True)


def total_of(vector: Tensor, norm_type: float) -> Tensor:
    """Total norm from per-tensor norms."""
    if vector.numel() == 0:
        return vector.new_zeros(())
    return torch.linalg.vector_norm(vector, norm_type)


__all__ = ["GradNorms", "grad_norms", "group_norms", "module_of", "unitwise_norm"]
