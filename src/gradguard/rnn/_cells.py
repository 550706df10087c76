"""The recurrent modules' own weights, unrolled one time step at a time.

PyTorch's ``nn.RNN``, ``nn.LSTM`` and ``nn.GRU`` run fused (cuDNN, MKL) kernels that never
expose the hidden state of one step as a tensor of its own. To measure anything per time step
(the total dL/dh_t, the step Jacobians dh_t/dh_{t-1}) we replay the module: the same weights,
the same equations as torch's documentation, one step at a time. ``SimpleRNN`` gets the same
treatment so that every tool has one code path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from gradguard.rnn._simple import NONLINEARITIES, Nonlinearity, SimpleRNN

State = "Tensor | tuple[Tensor, Tensor]"  # h, or (h, c) for the LSTM

SUPPORTED = "gradguard.rnn.SimpleRNN, torch.nn.RNN, torch.nn.LSTM or torch.nn.GRU"


@dataclass(frozen=True)
class Cell:
    """One layer in one direction: its weights and its step equation.

    The equations are torch's (gate order i, f, g, o for the LSTM and r, z, n for the GRU).
    """

    kind: str  # "rnn", "gru" or "lstm"
    w_ih: Tensor
    w_hh: Tensor
    b_ih: Tensor | None
    b_hh: Tensor | None
    w_hr: Tensor | None  # LSTM projection (proj_size > 0)
    act: Nonlinearity  # the Elman RNN's f; unused by the gated cells
    reverse: bool
    name: str  # parameter name of the recurrent matrix, e.g. "weight_hh_l1_reverse"

    def drive(self, x: Tensor) -> Tensor:
        """The input term of every time step at once: W_ih x_t + b_ih, shape (T, B, gates)."""
        return F.linear(x, self.w_ih, self.b_ih)

    def step(self, gi: Tensor, state):
        """The state after one step, given this step's input term ``gi`` and the previous state."""
        if self.kind == "rnn":
            return self.act.fn(gi + F.linear(state, self.w_hh, self.b_hh))
        if self.kind == "gru":
            h = state
            i_r, i_z, i_n = gi.chunk(3, -1)
            h_r, h_z, h_n = F.linear(h, self.w_hh, self.b_hh).chunk(3, -1)
            r = torch.sigmoid(i_r + h_r)
            z = torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
            return (1 - z) * n + z * h
        h, c = state
        i, f, g, o = (gi + F.linear(h, self.w_hh, self.b_hh)).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        if self.w_hr is not None:
            h = F.linear(h, self.w_hr)
        return h, c


@dataclass(frozen=True)
class Spec:
    """A recurrent module read as a stack of cells: ``layers[l][d]`` is layer l, direction d."""

    kind: str
    layers: tuple[tuple[Cell, ...], ...]
    batch_first: bool
    hidden_size: int
    out_size: int  # size of h: proj_size for a projected LSTM, else hidden_size
    dropout: float

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_directions(self) -> int:
        return len(self.layers[0])


_KIND_OF_MODE = {"RNN_TANH": ("rnn", "tanh"), "RNN_RELU": ("rnn", "relu"), "LSTM": ("lstm", "tanh"), "GRU": ("gru", "tanh")}


def is_recurrent(module: nn.Module) -> bool:
    return isinstance(module, SimpleRNN) or (isinstance(module, nn.RNNBase) and module.mode in _KIND_OF_MODE)


def check_recurrent(module: object, what: str = "module") -> nn.Module:
    if not isinstance(module, nn.Module) or not is_recurrent(module):
        raise TypeError(f"{what} must be a {SUPPORTED}; got {type(module).__name__}.")
    return module


def compute_dtype(module: nn.Module) -> torch.dtype:
    """The replay runs in the weights' precision, upcast to float32 for half and bfloat16 weights."""
    dtype = next(module.parameters()).dtype
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def spec_of(module: nn.Module, dtype: torch.dtype | None = None) -> Spec:
    """Read a module's weights (detached, cast to ``dtype``) into cells."""
    check_recurrent(module)

    def get(name):
        p = getattr(module, name, None)
        return None if p is None else p.detach().to(dtype or p.dtype)

    if isinstance(module, SimpleRNN):
        act = NONLINEARITIES[module.nonlinearity]
        cell = Cell("rnn", get("weight_ih"), get("weight_hh"), get("bias"), None, None, act, False, "weight_hh")
        return Spec("rnn", ((cell,),), module.batch_first, module.hidden_size, module.hidden_size, 0.0)
    kind, act_name = _KIND_OF_MODE[module.mode]
    act = NONLINEARITIES[act_name]
    directions = ("", "_reverse")[: 2 if module.bidirectional else 1]
    layers = []
    for layer in range(module.num_layers):
        row = []
        for d, sfx in enumerate(directions):
            key = f"l{layer}{sfx}"
            w_hr = get(f"weight_hr_{key}") if kind == "lstm" and getattr(module, "proj_size", 0) > 0 else None
            row.append(Cell(kind, get(f"weight_ih_{key}"), get(f"weight_hh_{key}"), get(f"bias_ih_{key}"), get(f"bias_hh_{key}"), w_hr, act, d == 1, f"weight_hh_{key}"))
        layers.append(tuple(row))
    out_size = module.proj_size if getattr(module, "proj_size", 0) > 0 else module.hidden_size
    return Spec(kind, tuple(layers), module.batch_first, module.hidden_size, out_size, float(module.dropout))


@dataclass
class Trace:
    """The states one cell went through: ``h[t]`` (and ``c[t]``) at time index t, in time order."""

    h: list[Tensor]
    c: list[Tensor] | None


def unroll(spec: Spec, x: Tensor, h0: Tensor | None, c0: Tensor | None, tracked: set[int]) -> list[list[Trace]]:
    """Run the stack step by step on time-major ``x`` (T, B, input).

    ``h0`` is (layers * directions, B, out_size) or None (zeros), ``c0`` likewise for the LSTM.
    Layers in ``tracked`` are run with autograd on, starting from initial states that require a
    gradient, so that every state they produce is a node one can differentiate with respect to;
    the others run without a graph. Inter-layer dropout is not replayed.
    """
    steps, batch = x.shape[0], x.shape[1]
    ndir = spec.num_directions
    traces, layer_input = [], x
    for layer, cells in enumerate(spec.layers):
        track = layer in tracked
        with torch.set_grad_enabled(track):
            row, outs = [], []
            for d, cell in enumerate(cells):
                idx = layer * ndir + d
                h = h0[idx] if h0 is not None else x.new_zeros(batch, spec.out_size)
                c = None
                if spec.kind == "lstm":
                    c = c0[idx] if c0 is not None else x.new_zeros(batch, spec.hidden_size)
                if track:
                    h = h.detach().clone().requires_grad_()
                    c = c.detach().clone().requires_grad_() if c is not None else None
                state = (h, c) if spec.kind == "lstm" else h
                gi = cell.drive(layer_input)
                hs: list = [None] * steps
                cs: list = [None] * steps if spec.kind == "lstm" else None
                for t in reversed(range(steps)) if cell.reverse else range(steps):
                    state = cell.step(gi[t], state)
                    if spec.kind == "lstm":
                        hs[t], cs[t] = state
                    else:
                        hs[t] = state
                row.append(Trace(hs, cs))
                outs.append(torch.stack(hs))
            layer_input = torch.cat(outs, -1) if ndir > 1 else outs[0]
        traces.append(row)
    return traces


def total_state_grads(
    spec: Spec,
    traces: list[list[Trace]],
    tracked: set[int],
    g_out: Tensor | None,
    g_hn: Tensor | None,
    g_cn: Tensor | None,
) -> dict[tuple[int, int], tuple[Tensor, Tensor | None]]:
    """The total dL/dh_t (and dL/dc_t) of every tracked cell, from the gradients that reached the
    module's outputs: ``g_out`` on the output sequence (T, B, directions * out_size), ``g_hn`` and
    ``g_cn`` on the final states. Returns {(layer, direction): (grads of h (T, B, out), of c)}.

    Back-propagating <g_out, outputs> + <g_hn, h_n> + <g_cn, c_n> through the unrolled steps gives,
    at every state, the sum over all paths: the direct part and what flows back through later steps.
    """
    last, ndir, width = spec.num_layers - 1, spec.num_directions, spec.out_size
    terms = []
    for layer in sorted(tracked):
        for d, tr in enumerate(traces[layer]):
            if layer == last and g_out is not None:
                terms.append((g_out[..., d * width : (d + 1) * width] * torch.stack(tr.h)).sum())
            final = 0 if spec.layers[layer][d].reverse else -1
            if g_hn is not None:
                terms.append((g_hn[layer * ndir + d] * tr.h[final]).sum())
            if g_cn is not None and tr.c is not None:
                terms.append((g_cn[layer * ndir + d] * tr.c[final]).sum())
    keys, inputs = [], []
    for layer in sorted(tracked):
        for d, tr in enumerate(traces[layer]):
            keys.append((layer, d))
            inputs += tr.h + (tr.c or [])
    with torch.enable_grad():
        surrogate = torch.stack(terms).sum()
        grads = torch.autograd.grad(surrogate, inputs, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads)]
    out, pos = {}, 0
    steps = len(traces[0][0].h)
    for layer, d in keys:
        gh = torch.stack(grads[pos : pos + steps])
        pos += steps
        gc = None
        if traces[layer][d].c is not None:
            gc = torch.stack(grads[pos : pos + steps])
            pos += steps
        out[(layer, d)] = (gh, gc)
    return out
