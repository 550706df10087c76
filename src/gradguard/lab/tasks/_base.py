"""What every lab task provides: batches, its loss, its own error criterion and a baseline.

A task draws its batches from a ``torch.Generator`` it is handed, so the same seed gives the same
data on every machine. Sequences are batch-first: ``x`` is (batch, time, features).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F


@dataclass(frozen=True)
class Baseline:
    """A predictor that uses no memory, with its analytic loss and error.

    ``loss`` and ``error`` are the values on the task's own loss and error criterion; the tests
    measure the predictor on the task's generator and compare.
    """

    name: str  # what the predictor does, e.g. "predict 1"
    loss: float
    error: float
    source: str  # where the number comes from (paper, section)


class Task:
    """Base class. Subclasses set the attributes below and implement ``batch``."""

    name: str = "task"
    input_size: int
    output_size: int
    per_step: bool = False  # True: a target at every step (copy memory); False: at the last step
    classification: bool = False
    error_name: str = "error"  # what ``error`` measures, for tables
    success: str = ""  # the criterion for "solved", in words

    def batch(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        """Training loss: MSE for regression, mean cross-entropy over labelled steps otherwise."""
        if self.classification:
            return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        return F.mse_loss(out, y)

    def error(self, out: Tensor, y: Tensor) -> float:
        """The task's own error criterion (see ``error_name``), lower is better."""
        raise NotImplementedError

    def solved(self, error: float) -> bool:
        """The success criterion of the literature for this task."""
        raise NotImplementedError

    def baseline(self) -> Baseline:
        raise NotImplementedError

    def baseline_output(self, x: Tensor) -> Tensor:
        """The output of the memoryless baseline predictor for inputs ``x``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def wrong_share(out: Tensor, y: Tensor, tolerance: float, squared: bool = True) -> float:
    """Share of sequences whose (squared or absolute) error exceeds ``tolerance``."""
    diff = (out.detach() - y).reshape(len(y), -1)
    err = diff.pow(2) if squared else diff.abs()
    return (err > tolerance).any(dim=1).float().mean().item()


def argmax_error(out: Tensor, y: Tensor) -> float:
    """Share of wrong argmax predictions."""
    return (out.detach().argmax(-1) != y).float().mean().item()
