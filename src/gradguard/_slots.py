"""The model's parameters as Guard reads them each step, and the non-finite agreement across ranks."""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor, nn

import gradguard._distributed as _distributed
from gradguard._grads import index_tensor
from gradguard._norms import GradNorms


class ParameterSlots:
    """(owning module, local name, full name) of every parameter, each parameter once.

    Walking ``model.named_parameters()`` costs more than the norm pass itself on models with many
    small layers. A parameter replaced in place (``fully_shard``, re-registration) is seen at once
    through its slot; modules added or removed are picked up at ``refresh`` (Guard's flush).
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.refresh()

    def refresh(self) -> None:
        slots, seen = [], set()
        for mname, module in self.model.named_modules():
            for local, param in module._parameters.items():
                if param is None or id(param) in seen:
                    continue
                seen.add(id(param))
                slots.append((module, local, f"{mname}.{local}" if mname else local))
        self.slots = slots
        self.position = {full: i for i, (_, _, full) in enumerate(slots)}

    def __len__(self) -> int:
        return len(self.slots)

    def named(self) -> list[tuple[str, Tensor]]:
        """The model's named parameters, read through the slots."""
        named = []
        for module, local, full in self.slots:
            param = module._parameters.get(local)
            if param is not None:
                named.append((full, param))
        return named


def agree_across_ranks(norms: GradNorms, slots: ParameterSlots) -> GradNorms:
    """A gradient is non-finite when it is on any rank: one all-reduce of a per-parameter mask.

    Every rank then holds the same NaN entries, so clipping, clipper statistics, the skip
    decision, the names in errors and the per-module norms agree everywhere. The mask is laid out
    over all of the model's parameters (the same list on every rank), plus one entry for a total
    that overflowed.
    """
    device = norms.total.device
    positions = index_tensor(tuple(slots.position[name] for name in norms.names), device)
    mask = torch.zeros(len(slots) + 1, dtype=torch.int32, device=device)
    mask.index_copy_(0, positions, (~torch.isfinite(norms.vector)).to(torch.int32))
    mask[-1] = (~norms.finite).to(torch.int32)
    mask = _distributed.any_rank(mask)
    bad = mask.index_select(0, positions)
    vector = torch.where(bad, torch.full_like(norms.vector, math.nan), norms.vector)
    total = torch.where(mask.any(), torch.full_like(norms.total, math.nan), norms.total)
    return replace(norms, vector=vector, total=total)
