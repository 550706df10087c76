"""The little gradguard needs from torch.distributed: rank, world size, and agreeing on a flag."""

from __future__ import annotations

import torch
from torch import Tensor


def initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    return torch.distributed.get_world_size() if initialized() else 1


def rank() -> int:
    return torch.distributed.get_rank() if initialized() else 0


def is_main_process() -> bool:
    """Rank 0, or a single process: the one that writes run stores and reports."""
    return rank() == 0


def any_rank(flag: Tensor) -> Tensor:
    """True on every rank when ``flag`` is True on any rank (one tiny all-reduce, no host sync).

    Gradients are identical across DDP ranks after backward, but parameters outside the DDP
    wrapper, or a fault on one rank, can make one rank see a NaN the others do not. Deciding a
    skip on the reduced flag keeps ranks in lockstep: a rank that skips alone hangs the next
    collective.
    """
    if world_size() == 1:
        return flag
    as_int = flag.to(torch.int32)
    backend = torch.distributed.get_backend()
    if backend == "nccl" and as_int.device.type != "cuda":
        as_int = as_int.cuda()
    torch.distributed.all_reduce(as_int, op=torch.distributed.ReduceOp.MAX)
    return as_int.to(flag.device).bool()
