"""Adaptive gradient clipping, unit-wise (Brock et al. 2021)."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import torch

from gradguard._clipping._base import ClipStats, Clipper, make_stats, mul_wide_
from gradguard._clipping._args import HEAD, agc_args
from gradguard._grads import GradBatch, Shard
from gradguard._norms import GradNorms, module_of, unitwise_norm

# Floor on a unit's gradient norm in the division, as in the reference implementation.
GRAD_NORM_FLOOR = 1e-6


def head_names(names: Sequence[str], params: Sequence[torch.Tensor]) -> set[str]:
    """The final layer: the module owning the last matrix (ndim >= 2) parameter, in registration order.

    PyTorch registers a classifier last in nearly every model; pass explicit patterns in
    ``exclude`` when yours is registered elsewhere.
    """
    last = None
    for name, p in zip(names, params):
        if p.ndim >= 2:
            last = name
    if last is None:
        return set()
    owner = module_of(last)
    return {n for n in names if module_of(n) == owner}


class AGC(Clipper):
    """Unit-wise adaptive gradient clipping.

    For each output unit i of a layer (a row of a weight matrix, one output channel of a conv kernel,
    a whole vector for biases and gains)::

        G_i <- G_i * lambda * max(||W_i||, eps) / ||G_i||   where ||G_i|| / max(||W_i||, eps) > lambda

    ``eps`` keeps zero-initialised parameters from having their gradients clipped to zero.

    Args:
        clipping: lambda, the largest allowed ratio of gradient norm to weight norm per unit.
            The paper uses 0.01 for batch sizes 1024 to 4096 and finds smaller values are needed
            at larger batch sizes.
        eps: floor on the weight norm.
        exclude: parameters left unclipped: glob patterns on parameter names, and the token
            ``"head"`` for the final classifier layer (the paper: "it is always better to not clip
            the final linear layer"). ``exclude=()`` clips everything.

    References:
        Brock, De, Smith, Simonyan. High-Performance Large-Scale Image Recognition Without
        Normalization. ICML 2021 (arXiv:2102.06171), section 4.
    """

    name = "agc"
    norm_type = 2.0  # unit norms are Frobenius norms

    def __init__(self, clipping: float = 0.01, eps: float = 1e-3, exclude: str | Sequence[str] = (HEAD,)):
        self.clipping, self.eps, self.exclude = agc_args(clipping, eps, exclude)

    def excluded(self, names: Sequence[str], params: Sequence[torch.Tensor]) -> set[str]:
        out = head_names(names, params) if HEAD in self.exclude else set()
        patterns = [p for p in self.exclude if p != HEAD]
        out.update(n for n in names if any(fnmatch.fnmatchcase(n, pat) for pat in patterns))
        return out

    def apply(self, batch: GradBatch, norms: GradNorms) -> ClipStats:
        skip = self.excluded(batch.names, batch.params)
        dtype = norms.vector.dtype
        after_sq, clipped, global_vectors = [], [], set()
        for i, (name, param, grad) in enumerate(zip(batch.names, batch.params, batch.grads)):
            if name in skip:
                after_sq.append(norms.vector[i].pow(2))
                continue
            layout = batch.layouts[i]
            weight = param.detach()
            if layout is not None:
                _check_row_sharded(name, param)
                weight = weight.to_local()
            if layout is not None and grad.ndim <= 1:
                # A sharded vector is one unit spread over ranks: take the global gradient norm
                # from the pass, and reduce the weight norm the same way.
                from gradguard._norms import reduce_shards

                global_vectors.add(i)
                g_norm = norms.vector[i]
                w_norm = reduce_shards(unitwise_norm(weight.to(dtype)).reshape(1), [layout], 2.0)[0]
            else:
                g_norm = unitwise_norm(grad.to(dtype))
                w_norm = unitwise_norm(weight.to(dtype))
            # The factor stays in float32 (float64 for float64 gradients): rounded to fp16 it would
            # underflow to 0 for large gradients and zero them.
            # Only units over the bound change (the paper's condition): with a bound below the
            # floor, a min(1, bound / floor) factor would also shrink units already under it.
            bound = self.clipping * w_norm.clamp(min=self.eps)
            coef = torch.where(g_norm > bound, bound / g_norm.clamp(min=GRAD_NORM_FLOOR), torch.ones_like(g_norm))
            mul_wide_(grad, coef)
            after_sq.append((g_norm * coef).pow(2).sum())
            # A unit with a zero gradient is unchanged whatever its factor (eps=0 and a zero
            # weight give a factor of 0): it does not count as clipped.
            clipped.append(((coef < 1.0) & (g_norm > 0)).any())
        if not after_sq:
            return make_stats(norms.total, norms.total, self.clipping, torch.zeros((), dtype=torch.bool, device=batch.device))
        after = torch.stack(after_sq)
        any_clipped = torch.stack(clipped).any() if clipped else torch.zeros((), dtype=torch.bool, device=after.device)
        if batch.sharded:
            any_clipped, after = _reduce_agc(batch, after, any_clipped, global_vectors, skip)
        return make_stats(norms.total, after.sum().sqrt(), self.clipping, any_clipped)

    def _config(self):
        return {"clipping": self.clipping, "eps": self.eps, "exclude": self.exclude}


def _check_row_sharded(name: str, param) -> None:
    for placement in param.placements:
        if isinstance(placement, Shard) and placement.dim != 0 and param.ndim >= 2:
            raise NotImplementedError(
                f"AGC needs whole output units on each rank, but parameter {name!r} is sharded on dim "
                f"{placement.dim}. FSDP2's default Shard(0) works; use it or exclude the parameter."
            )


def _reduce_agc(batch, after_sq, any_clipped, global_vectors, skip):
    """Shard-local squared norms of matrices add up across ranks; vectors and excluded ones are global already."""
    import torch.distributed as dist

    from gradguard._norms import reduce_shards

    layouts = [
        None if (i in global_vectors or name in skip) else layout
        for i, (name, layout) in enumerate(zip(batch.names, batch.layouts))
    ]
    after_sq = reduce_shards(after_sq.sqrt(), layouts, 2.0).pow(2)
    flag = any_clipped.to(torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag.bool(), after_sq
