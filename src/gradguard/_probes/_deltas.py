"""Back-propagated errors: ||dL/d(output)|| of every layer.

Glorot & Bengio (2010, eq. 14) show that weight-gradient norms can stay level across depth while
the back-propagated errors shrink layer by layer; the errors are the direct evidence of
vanishing, so gradguard judges on both. A "layer" is a module that owns parameters directly
(Linear, Conv, norms, RNN, embeddings). The norm is the Frobenius norm of the gradient with respect
to the layer's output over the whole batch; a layer called several times in one step (shared
weights, a cell unrolled over time) reports the root of the summed squares.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gradguard._grads import stat_dtype
from gradguard._probes._base import stack_values
from gradguard._probes._hooks import ForwardHookProbe


def layers_of(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]


def first_tensor(output) -> Tensor | None:
    """The tensor whose gradient is the layer's error: the output, or the first of a tuple (RNNs)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    return None


class DeltaProbe(ForwardHookProbe):
    """Forward hooks that put a gradient hook on each layer's output, registered only while armed."""

    name = "deltas"

    def __init__(self, model: nn.Module):
        super().__init__(layers_of(model))
        self._squares: dict[str, Tensor] = {}
        self.forward_order: list[str] = []  # first-call order of the last armed step: depth order

    @property
    def layers(self) -> list[tuple[str, nn.Module]]:
        return self.modules

    def _reset(self) -> None:
        self._squares.clear()
        self.forward_order = []

    def _hook(self, name: str):
        def record(grad: Tensor) -> None:
            # float64 stays float64: errors of deep float64 models go far below float32's range (1e-45).
            square = torch.linalg.vector_norm(grad.detach(), dtype=stat_dtype(grad.dtype)).pow(2)
            self._squares[name] = self._squares[name] + square if name in self._squares else square

        def hook(module: nn.Module, inputs, output) -> None:
            out = first_tensor(output)
            if out is None or not out.requires_grad or not module.training:
                return
            if name not in self.forward_order:
                self.forward_order.append(name)
            out.register_hook(record)

        return hook

    def collect(self, ctx=None) -> dict[str, tuple[tuple[str, ...], Tensor]]:
        return {metric: stack_values(values) for metric, values in self.values().items()}

    def values(self) -> dict[str, dict[str, Tensor]]:
        """{"error_norm": {layer: 0-dim tensor}} of the armed step, in forward order (empty: {})."""
        errors = {name: self._squares[name].sqrt() for name in self.forward_order if name in self._squares}
        self._squares.clear()
        return {"error_norm": errors} if errors else {}
