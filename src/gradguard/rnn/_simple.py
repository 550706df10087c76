"""SimpleRNN: the Elman recurrence h_t = f(W_h h_{t-1} + W_x x_t + b), written out step by step.

This is the teaching model of the recurrent tools: its forward is an explicit loop over time, so
every quantity Pascanu et al. (2013, arXiv:1211.5063, section 2) reason about is one line of code.
The step Jacobian is dh_t/dh_{t-1} = diag(f'(a_t)) W_h, with ||diag(f')|| <= gamma, where gamma
is 1 for tanh, relu and the identity and 1/4 for the logistic sigmoid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from gradguard._errors import check_int, unknown_name


@dataclass(frozen=True)
class Nonlinearity:
    """An elementwise activation, its derivative read off its output, and the bound gamma on it."""

    name: str
    fn: Callable[[Tensor], Tensor]
    derivative_from_output: Callable[[Tensor], Tensor]  # f'(a) written in terms of h = f(a)
    gamma: float  # sup |f'|: Pascanu et al.'s bound on ||diag(f'(a))||


NONLINEARITIES = {
    "tanh": Nonlinearity("tanh", torch.tanh, lambda h: 1.0 - h * h, 1.0),
    "sigmoid": Nonlinearity("sigmoid", torch.sigmoid, lambda h: h * (1.0 - h), 0.25),
    "relu": Nonlinearity("relu", torch.relu, lambda h: (h > 0).to(h.dtype), 1.0),
    "identity": Nonlinearity("identity", lambda a: a, torch.ones_like, 1.0),
}


def get_nonlinearity(name: str) -> Nonlinearity:
    if name not in NONLINEARITIES:
        raise unknown_name("nonlinearity", name, NONLINEARITIES)
    return NONLINEARITIES[name]


class SimpleRNN(nn.Module):
    """A single-layer Elman RNN with an explicit loop over time.

    h_t = f(W_h h_{t-1} + W_x x_t + b), with ``weight_hh`` = W_h (hidden x hidden), ``weight_ih``
    = W_x (hidden x input) and ``bias`` = b. Shapes follow ``nn.RNN``: input (T, B, input_size),
    or (B, T, input_size) with ``batch_first=True``, or (T, input_size) unbatched; ``hx`` and the
    returned ``h_n`` are (1, B, hidden_size). ``forward`` returns ``(outputs, h_n)``.

    Args:
        nonlinearity: ``"tanh"``, ``"sigmoid"``, ``"relu"`` or ``"identity"`` (the linear RNN).
        init: initialisation scheme, see :func:`gradguard.rnn.init_rnn`; ``"default"`` is
            PyTorch's ``nn.RNN`` initialisation.
        spectral_radius, max_singular_value: rescale ``weight_hh`` after ``init`` so that its
            spectral radius (or largest singular value) is this number.
        generator: a ``torch.Generator`` for a reproducible initialisation.

    References:
        Elman 1990, "Finding structure in time". Pascanu, Mikolov, Bengio 2013, "On the
        difficulty of training recurrent neural networks", arXiv:1211.5063.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        nonlinearity: str = "tanh",
        batch_first: bool = False,
        bias: bool = True,
        init: str = "default",
        *,
        spectral_radius: float | None = None,
        max_singular_value: float | None = None,
        generator: torch.Generator | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.input_size = check_int("input_size", input_size, minimum=1)
        self.hidden_size = check_int("hidden_size", hidden_size, minimum=1)
        self.nonlinearity = get_nonlinearity(nonlinearity).name
        self.batch_first = bool(batch_first)
        kw = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size, **kw))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size, **kw))
        if bias:
            self.bias = nn.Parameter(torch.empty(hidden_size, **kw))
        else:
            self.register_parameter("bias", None)
        from gradguard.rnn._init import init_rnn

        self.init = init
        init_rnn(self, init, spectral_radius=spectral_radius, max_singular_value=max_singular_value, generator=generator)

    @property
    def gamma(self) -> float:
        """Upper bound on |f'|: 1 for tanh, relu and identity, 1/4 for sigmoid."""
        return NONLINEARITIES[self.nonlinearity].gamma

    def step(self, drive: Tensor, h: Tensor) -> Tensor:
        """One step: f(W_h h + drive), where ``drive`` = W_x x_t + b was computed for all t at once."""
        return NONLINEARITIES[self.nonlinearity].fn(drive + F.linear(h, self.weight_hh))

    def forward(self, input: Tensor, hx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if not isinstance(input, Tensor) or input.dim() not in (2, 3):
            got = f"a tensor of shape {tuple(input.shape)}" if isinstance(input, Tensor) else type(input).__name__
            raise ValueError(f"SimpleRNN expects input of shape (T, B, {self.input_size}) or (T, {self.input_size}), got {got}.")
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(1)
        if batched and self.batch_first:
            x = x.transpose(0, 1)
        if x.shape[-1] != self.input_size:
            raise ValueError(f"SimpleRNN(input_size={self.input_size}) got input with last dimension {x.shape[-1]}.")
        steps, batch = x.shape[0], x.shape[1]
        h = self._initial_state(hx, batch, batched, x)
        drive = F.linear(x, self.weight_ih, self.bias)  # the input term of every step in one matmul
        outputs = []
        for t in range(steps):
            h = self.step(drive[t], h)
            outputs.append(h)
        out = torch.stack(outputs) if outputs else x.new_zeros(0, batch, self.hidden_size)
        if batched and self.batch_first:
            out = out.transpose(0, 1)
        if not batched:
            return out.squeeze(1), h  # unbatched: h is (1, hidden), as nn.RNN returns
        return out, h.unsqueeze(0)

    def _initial_state(self, hx: Tensor | None, batch: int, batched: bool, x: Tensor) -> Tensor:
        if hx is None:
            return x.new_zeros(batch, self.hidden_size)
        expected = (1, batch, self.hidden_size) if batched else (1, self.hidden_size)
        if tuple(hx.shape) == expected:
            return hx[0] if batched else hx
        if batched and tuple(hx.shape) == (batch, self.hidden_size):
            return hx
        raise ValueError(f"SimpleRNN expected hx of shape {expected}, got {tuple(hx.shape)}.")

    def extra_repr(self) -> str:
        bias = "" if self.bias is not None else ", bias=False"
        first = ", batch_first=True" if self.batch_first else ""
        return f"{self.input_size}, {self.hidden_size}, nonlinearity={self.nonlinearity!r}{first}{bias}, init={self.init!r}"


def default_bound(hidden_size: int) -> float:
    """PyTorch's nn.RNN initialisation bound: every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H))."""
    return 1.0 / math.sqrt(hidden_size)
