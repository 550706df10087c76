"""One pass over the gradients: squared sums per variable, from which every norm is derived.

The per-variable norms, the per-layer norms, the global norm and the non-finite check all come
from the same ``sum(g * g)`` per variable, so monitoring and clipping never read the gradients
twice (clippers that change elements, ``value`` and ``agc``, read them once more to apply).
A NaN or Inf anywhere in a gradient makes its squared sum NaN or Inf: the non-finite check is
read off the norms, with no extra pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keras import ops


def stat_dtype(dtype: Any) -> str:
    """Norms in float64 for float64 variables, float32 otherwise (float16/bfloat16 overflow)."""
    return "float64" if str(dtype).endswith("float64") else "float32"


@dataclass(frozen=True)
class Measured:
    """Norms of one step's gradients, all tensors on the gradients' device.

    ``squares[i]`` is sum(g_i ** 2) (0 for a variable without gradient), ``vector[i]`` its square
    root, ``total`` the global L2 norm, ``finite`` a bool scalar: every gradient is finite.
    """

    squares: Any
    vector: Any
    total: Any
    finite: Any


def measure(grads: list[Any]) -> Measured:
    """Squared sums in one pass; ``grads`` may hold None (counted as zero)."""
    dtype = "float64" if any(g is not None and stat_dtype(g.dtype) == "float64" for g in grads) else "float32"
    squares = []
    for g in grads:
        if g is None:
            squares.append(ops.zeros((), dtype=dtype))
        else:
            x = ops.cast(g, stat_dtype(g.dtype))
            squares.append(ops.cast(ops.sum(ops.square(x)), dtype))
    squares = ops.stack(squares)
    total_sq = ops.sum(squares)
    return Measured(squares, ops.sqrt(squares), ops.sqrt(total_sq), ops.isfinite(total_sq))


def group_norms(squares: Any, segment_ids: Any, num_groups: int) -> Any:
    """Per-layer L2 norms: square root of the summed squares of each layer's variables.

    A segment sum, not a matrix product: a NaN in one layer must not reach the others (NaN * 0 is
    NaN in a product).
    """
    return ops.sqrt(ops.segment_sum(squares, segment_ids, num_segments=num_groups))
