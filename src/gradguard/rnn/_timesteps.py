"""Per-time-step gradient norms ||dL/dh_t||: how much of the loss's signal reaches each step.

The gradient that reaches a fused ``nn.RNN``/``nn.LSTM``/``nn.GRU`` output sequence is only the
*direct* part of dL/dh_t (what the loss reads at step t); the part that flows back through the
later steps stays inside the fused kernel. With a loss on the last step only, that captured
gradient is zero before T, which says nothing about vanishing. The total is what Pascanu et al.
(2013, eq. 5) sum over: dL/dh_t = sum_{k >= t} (dL_k/dh_k)(dh_k/dh_t).

So ``TimestepProbe`` captures, during an ordinary forward and backward, the module's input,
initial state and the gradients that reached its outputs; then ``collect()`` replays the
module's own weights one step at a time and back-propagates those gradients through the replay,
which yields the total dL/dh_t at every step. ``timestep_grad_norms`` runs the same probe around
a closure.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from gradguard._errors import GradGuardError, GradGuardWarning, check_choice, unknown_name
from gradguard.rnn._cells import SUPPORTED, Spec, check_recurrent, compute_dtype, is_recurrent, spec_of, total_state_grads, unroll

STATES = ("h", "c", "hc")


@dataclass
class Capture:
    """What one forward/backward of the probed module left behind."""

    seen: bool = False  # a graph-building call was captured
    calls: int = 0  # graph-building calls since arm()
    training: bool = False
    input: Tensor | None = None
    hx: object = None  # h0, or (h0, c0) for the LSTM, detached
    batched: bool = True
    grads: dict[str, Tensor] = field(default_factory=dict)  # "output", "h_n", "c_n"
    outputs: dict[str, Tensor] = field(default_factory=dict)  # kept only for timestep_grad_norms
    output: Tensor | None = None  # the output sequence, detached; kept only for NormPreservingPenalty
    unsupported: str | None = None


@dataclass
class Replay:
    """States and total gradients of the tracked layers, time-major, batched."""

    spec: Spec
    states: dict[tuple[int, int], tuple[Tensor, Tensor | None]]  # (layer, direction) -> h (T, B, out), c
    grads: dict[tuple[int, int], tuple[Tensor, Tensor | None]]  # total dL/dh_t, dL/dc_t


class TimestepProbe:
    """Measures the total ||dL/dh_t|| of one recurrent module, during ordinary training steps.

    ::

        probe = gg.rnn.TimestepProbe(model.rnn)
        probe.arm()                       # hooks for the next forward/backward
        loss = loss_fn(model(x), y)
        loss.backward()
        norms = probe.collect()           # (T,) batch-mean ||dL/dh_t||, computed by replay; disarms
        probe.close()

    While disarmed the probe has no hook on anything and costs nothing. Armed, it keeps
    references to the module's input, initial state and output gradients of the first
    graph-building call (no copies, no host synchronisation); calls made without gradients (an
    evaluation pass under ``torch.no_grad()``) are ignored. ``collect()`` replays the module on the
    device and returns a device tensor; it does not touch parameters, ``.grad`` or buffers.

    What is measured:
        - ``h_t`` is the state of the **last layer** at time t; for a bidirectional module both
          directions are concatenated, as in the module's output (the forward direction's total
          gradient flows back from later times, the reverse direction's from earlier times).
        - For ``nn.LSTM``, ``state="h"`` (default) measures ||dL/dh_t||; ``"c"`` the cell state
          ||dL/dc_t||; ``"hc"`` the pair (h_t, c_t) concatenated.
        - The result is the mean over the batch of the per-sequence norms, one entry per time step.

    Limits: the replay runs in the weights' precision (float32 for half weights) outside any
    autocast region; inter-layer dropout of a multi-layer module in training mode cannot be
    replayed (a warning says so and the replay runs without it); ``PackedSequence`` inputs are
    not supported.
    """

    def __init__(self, module: nn.Module, *, state: str = "h"):
        self.module = check_recurrent(module)
        self.state = check_choice("state", state, STATES)
        if state != "h" and spec_of(module).kind != "lstm":
            raise ValueError(f"state={state!r} needs an nn.LSTM (the only module with a cell state); {type(module).__name__} has only h.")
        self._capture: Capture | None = None
        self._handle = None
        self._keep_outputs = False
        self._keep_output_sequence = False

    # -- life cycle -----------------------------------------------------------------------

    @property
    def armed(self) -> bool:
        return self._handle is not None

    @property
    def ready(self) -> bool:
        """True once an armed forward was captured and a gradient reached its outputs."""
        cap = self._capture
        return cap is not None and cap.seen and (bool(cap.grads) or cap.unsupported is not None)

    def arm(self) -> TimestepProbe:
        """Hook the module so the next graph-building forward and its backward are captured."""
        if self._handle is None:
            self._handle = self.module.register_forward_hook(self._on_forward, with_kwargs=True)
        self._capture = Capture()
        return self

    def disarm(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._capture = None

    def close(self) -> None:
        """Remove every hook. Gradient hooks on tensors already captured become no-ops."""
        self.disarm()

    def __enter__(self) -> TimestepProbe:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- hooks ----------------------------------------------------------------------------

    def _on_forward(self, module, args, kwargs, output) -> None:
        cap = self._capture
        if cap is None:
            return
        out, final = output
        x = args[0] if args else kwargs.get("input")
        if isinstance(x, PackedSequence):
            cap.seen, cap.calls = True, cap.calls + 1
            cap.unsupported = (
                "the timestep probe does not support PackedSequence inputs (the per-step batch changes "
                "with the sequence lengths); pass a padded tensor to measure per-step gradients."
            )
            return
        if not out.requires_grad:
            return  # a pass without a graph (evaluation): wait for the training pass
        cap.calls += 1
        if cap.seen:
            return  # the first call is the one measured
        hx = args[1] if len(args) > 1 else kwargs.get("hx")
        cap.seen, cap.training = True, module.training
        cap.input, cap.batched = x.detach(), x.dim() == 3
        if self._keep_output_sequence:
            cap.output = out.detach()  # a reference, no copy
        cap.hx = tuple(t.detach() for t in hx) if isinstance(hx, tuple) else (hx.detach() if hx is not None else None)
        h_n, c_n = final if isinstance(final, tuple) else (final, None)
        for key, t in (("output", out), ("h_n", h_n), ("c_n", c_n)):
            if t is not None and t.requires_grad:
                t.register_hook(partial(_store_grad, cap, key))
                if self._keep_outputs:
                    cap.outputs[key] = t

    # -- results --------------------------------------------------------------------------

    def collect(self) -> Tensor:
        """After ``backward()``: the (T,) batch-mean total ||dL/dh_t||, by replay. Disarms the probe."""
        cap = self._capture
        self.disarm()
        return step_norms(replay(self.module, _check_ready(cap, self.module), tracked="last"), self.state)


def _store_grad(cap: Capture, key: str, grad: Tensor) -> None:
    # A second backward through the same graph (retain_graph=True) accumulates, as .grad would.
    cap.grads[key] = grad if key not in cap.grads else cap.grads[key] + grad


def _check_ready(cap: Capture | None, module: nn.Module) -> Capture:
    name = type(module).__name__
    if cap is None:
        raise GradGuardError(f"the probe on {name} is not armed: call arm() before the forward pass.")
    if cap.unsupported:
        raise TypeError(cap.unsupported)
    if not cap.seen:
        raise GradGuardError(
            f"the {name} was not called with gradients enabled since arm(); run a training forward pass "
            "(not under torch.no_grad()) and backward() before collect()."
        )
    if not cap.grads:
        raise GradGuardError(
            f"no gradient reached the outputs of the {name}: call collect() after loss.backward(), "
            "with a loss that depends on the module's outputs."
        )
    if cap.calls > 1:
        warnings.warn(
            f"the {name} ran {cap.calls} times with gradients enabled since arm(); the first call was measured. "
            "Arm the probe right before the forward pass you want to measure.",
            GradGuardWarning,
            stacklevel=3,
        )
    return cap


def _batched_time_major(t: Tensor | None, cap: Capture, batch_first: bool, dtype) -> Tensor | None:
    """(T, B, ...) from the module's layout: unbatched inputs gain a batch of one."""
    if t is None:
        return None
    if not cap.batched:
        t = t.unsqueeze(1)
    elif batch_first:
        t = t.transpose(0, 1)
    return t.detach().to(dtype)


def _batched_state(t: Tensor | None, cap: Capture, dtype) -> Tensor | None:
    """(layers * directions, B, size); an unbatched state gains a batch of one."""
    if t is None:
        return None
    if not cap.batched:
        t = t.unsqueeze(1)
    elif t.dim() == 2:  # SimpleRNN also accepts hx of shape (B, H)
        t = t.unsqueeze(0)
    return t.detach().to(dtype)


def replay(module: nn.Module, cap: Capture, tracked: str = "last") -> Replay:
    """Unroll the module on the captured input and back-propagate the captured output gradients.

    ``tracked="last"`` differentiates the last layer's states only (all that per-step norms
    need); ``"all"`` every layer's, for the norm-preserving regulariser.
    """
    dtype = compute_dtype(module)
    spec = spec_of(module, dtype)
    if cap.training and spec.dropout > 0 and spec.num_layers > 1:
        warnings.warn(
            f"the {type(module).__name__} applies dropout={spec.dropout} between layers in training mode; the "
            "replay cannot reproduce the dropout masks and runs without them, so the per-step values are approximate.",
            GradGuardWarning,
            stacklevel=3,
        )
    x = _batched_time_major(cap.input, cap, spec.batch_first, dtype)
    if x.shape[0] == 0:
        raise ValueError("the captured input has no time steps.")
    h0, c0 = cap.hx if isinstance(cap.hx, tuple) else (cap.hx, None)
    h0, c0 = _batched_state(h0, cap, dtype), _batched_state(c0, cap, dtype)
    layers = {spec.num_layers - 1} if tracked == "last" else set(range(spec.num_layers))
    traces = unroll(spec, x, h0, c0, layers)
    g = cap.grads
    grads = total_state_grads(
        spec,
        traces,
        layers,
        _batched_time_major(g.get("output"), cap, spec.batch_first, dtype),
        _batched_state(g.get("h_n"), cap, dtype),
        _batched_state(g.get("c_n"), cap, dtype),
    )
    states = {}
    for layer in layers:
        for d, tr in enumerate(traces[layer]):
            states[(layer, d)] = (torch.stack(tr.h).detach(), torch.stack(tr.c).detach() if tr.c is not None else None)
    return Replay(spec, states, grads)


def step_norms(rep: Replay, state: str = "h") -> Tensor:
    """Batch mean of the per-sequence norm of the last layer's total gradient, at each step."""
    last = rep.spec.num_layers - 1
    squares = 0.0
    for d in range(rep.spec.num_directions):
        gh, gc = rep.grads[(last, d)]
        if "h" in state:
            squares = squares + gh.pow(2).sum(-1)
        if "c" in state:
            squares = squares + gc.pow(2).sum(-1)
    return squares.sqrt().mean(1).detach()


def find_recurrent_module(model: nn.Module, module: nn.Module | str | None = None) -> nn.Module:
    """``module`` itself, the submodule of that dotted name, or the first recurrent module found."""
    if isinstance(module, nn.Module):
        return check_recurrent(module, "module")
    named = dict(model.named_modules())
    recurrent = [n for n, m in named.items() if is_recurrent(m)]
    if module is None:
        if not recurrent:
            raise ValueError(
                f"no recurrent module found in {type(model).__name__}: expected a {SUPPORTED} inside it. "
                "Pass module=... to name the one to measure."
            )
        return named[recurrent[0]]
    if not isinstance(module, str):
        raise TypeError(f"module must be a module, a submodule name or None; got {type(module).__name__}.")
    if module not in named:
        raise unknown_name("submodule", module, recurrent or named)
    return check_recurrent(named[module], f"submodule {module!r}")


def timestep_grad_norms(
    model: nn.Module,
    closure: Callable[[], Tensor],
    module: nn.Module | str | None = None,
    *,
    state: str = "h",
) -> Tensor:
    """The batch-mean total ||dL/dh_t|| at every time step of a recurrent module, as a (T,) tensor.

    ``closure()`` runs a forward pass and returns the scalar loss L. One forward and one backward
    (restricted to what reaches the module's outputs) are run; the model's parameters, ``.grad``
    and buffers are left as they were (a closure that calls ``backward()`` itself is allowed: the
    gradients it accumulates are discarded).

    ``module`` is the recurrent module to measure (a ``SimpleRNN``, ``nn.RNN``, ``nn.LSTM`` or
    ``nn.GRU``, or its name in ``model.named_modules()``); by default the first one found. Entry t
    is the total gradient at the output of step t (0-based): the direct part the loss reads there
    plus what flows back through the later steps. See :class:`TimestepProbe` for what is measured
    with several layers, two directions and the LSTM cell state.

    References:
        Pascanu, Mikolov, Bengio 2013, arXiv:1211.5063, eqs. 3-5 (temporal contributions).
    """
    target = find_recurrent_module(model, module)
    if not callable(closure):
        raise TypeError(f"closure must be a callable that runs a forward pass and returns the loss; got {type(closure).__name__}.")
    probe = TimestepProbe(target, state=state)
    probe._keep_outputs = True
    params = list(dict.fromkeys(list(model.parameters()) + list(target.parameters())))
    saved_grads = [p.grad for p in params]
    buffers = list(model.buffers())
    saved_buffers = [b.detach().clone() for b in buffers]
    try:
        for p in params:
            p.grad = None
        probe.arm()
        with torch.enable_grad():
            loss = closure()
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise TypeError(f"closure() must return the scalar loss as a tensor; got {_describe(loss)}.")
        cap = probe._capture
        if cap is not None and cap.seen and not cap.grads and cap.outputs:
            if not loss.requires_grad:
                raise GradGuardError("the loss returned by closure() does not require a gradient; it must depend on the module's outputs.")
            keys = list(cap.outputs)
            got = torch.autograd.grad(loss, [cap.outputs[k] for k in keys], allow_unused=True)
            for key, g in zip(keys, got):  # hooks usually fire here already; store what they did not
                if g is not None and key not in cap.grads:
                    cap.grads[key] = g
        return probe.collect()
    finally:
        probe.close()
        for p, g in zip(params, saved_grads):
            p.grad = g
        with torch.no_grad():
            for b, saved in zip(buffers, saved_buffers):
                b.copy_(saved)


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__} {value!r:.60}"
