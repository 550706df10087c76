"""Clippers with a fixed bound: by global norm, per tensor, and by value."""

from __future__ import annotations

import math

import torch

from gradguard._clipping._base import ClipStats, Clipper, make_stats, scale_, scale_each_
from gradguard._clipping._args import norm_args, value_args
from gradguard._grads import GradBatch, stat_dtype
from gradguard._norms import GradNorms, foreach_norm, total_of

# torch.nn.utils.clip_grad_norm_ divides by (norm + 1e-6); ClipNorm keeps it so the two agree bit for bit.
TORCH_CLIP_EPS = 1e-6


class ClipNorm(Clipper):
    """Rescale all gradients together so their total norm is at most ``max_norm``.

    g <- g * min(1, max_norm / (||g|| + 1e-6)), the same result as ``torch.nn.utils.clip_grad_norm_``.
    Every gradient is multiplied by one factor, so the update direction is kept.

    References:
        Pascanu, Mikolov, Bengio. On the difficulty of training recurrent neural networks.
        ICML 2013 (arXiv:1211.5063), Algorithm 1. Their heuristic threshold: 0.5 to 10 times the
        average gradient norm over many updates.
    """

    name = "norm"

    def __init__(self, max_norm: float, norm_type: float | str = 2.0):
        self.max_norm, self.norm_type = norm_args(max_norm, norm_type)

    def apply(self, batch: GradBatch, norms: GradNorms) -> ClipStats:
        total = norms.total
        coef = torch.clamp(self.max_norm / (total + TORCH_CLIP_EPS), max=1.0)
        scale_(batch, coef)
        # All-zero gradients are unchanged by any factor: not clipped, even when max_norm < 1e-6.
        return make_stats(total, total * coef, self.max_norm, (coef < 1.0) & (total > 0), coef)

    def _config(self):
        return {"max_norm": self.max_norm, "norm_type": self.norm_type}


class ClipTensorNorm(Clipper):
    """Clip each gradient tensor to its own norm ``max_norm`` (``tf.clip_by_norm`` per tensor).

    g_i <- g_i * max_norm / max(||g_i||, max_norm). Unlike ``ClipNorm`` this changes the relative
    size of the tensors, and with it the update direction.

    Norms are taken in float32 for fp16, bf16 and float32 gradients: a tensor whose norm is below
    about 1e-19 (where the squares underflow, as in ``torch.linalg.vector_norm``) reads as 0 and
    is left alone, so a ``max_norm`` that small is not honoured in those dtypes.
    """

    name = "tensor_norm"

    def __init__(self, max_norm: float, norm_type: float | str = 2.0):
        self.max_norm, self.norm_type = norm_args(max_norm, norm_type)

    def apply(self, batch: GradBatch, norms: GradNorms) -> ClipStats:
        # max_norm / 0 = inf clamps to 1: a zero gradient is left alone.
        coefs = torch.clamp(self.max_norm / norms.vector, max=1.0)
        scale_each_(batch, coefs)
        after = total_of(norms.vector * coefs, self.norm_type)
        return make_stats(norms.total, after, self.max_norm, (coefs < 1.0).any())

    def _config(self):
        return {"max_norm": self.max_norm, "norm_type": self.norm_type}


class ClipValue(Clipper):
    """Clamp every gradient element to ``[-clip_value, clip_value]`` (Mikolov's element-wise clipping).

    Costs two reads beyond the shared norm pass: the max-abs check that says whether anything was
    clamped, and the norm after clamping (which, unlike for norm clipping, cannot be derived).
    """

    name = "value"

    def __init__(self, clip_value: float):
        self.clip_value = value_args(clip_value)

    def apply(self, batch: GradBatch, norms: GradNorms) -> ClipStats:
        device = batch.device
        if not len(batch):
            return make_stats(norms.total, norms.total, self.clip_value, torch.zeros((), dtype=torch.bool, device=device))
        max_abs, after = [], []
        c = self.clip_value
        for _, dtype, _, grads in batch.group_grads():
            out = stat_dtype(dtype)
            max_abs.append(torch.stack(foreach_norm(grads, math.inf, dtype=None if out == dtype else out)).to(device))
            torch._foreach_clamp_min_(grads, -c)
            torch._foreach_clamp_max_(grads, c)
            after.append(torch.stack(foreach_norm(grads, norms.norm_type, dtype=None if out == dtype else out)).to(device))
        clipped = torch.cat([m.float() for m in max_abs]).max() > c
        # Under FSDP2 the local norms after clamping are shard norms; reduce them like the pass does.
        after_vec = torch.cat([a.to(norms.vector.dtype) for a in after])
        if batch.sharded:
            from gradguard._norms import reduce_shards

            order = [i for _, _, idx in batch.groups for i in idx]
            after_vec = reduce_shards(after_vec, [batch.layouts[i] for i in order], norms.norm_type)
            clipped = _any_across_ranks(clipped)
        return make_stats(norms.total, total_of(after_vec, norms.norm_type), c, clipped)

    def _config(self):
        return {"clip_value": self.clip_value}


def _any_across_ranks(flag: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    as_int = flag.to(torch.int32)
    dist.all_reduce(as_int, op=dist.ReduceOp.MAX)
    return as_int.bool()
