"""Loss terms and gradient terms that act on gradient flow: Pascanu's Omega, L1, L2, ||grad L||^2.

``NormPreservingPenalty`` is the vanishing-gradient regulariser of Pascanu, Mikolov, Bengio
(2013, arXiv:1211.5063, section 3.3, eqs. 9-10). It asks that the error signal keep its norm
when it is carried back one step:

    Omega = sum_k ( ||delta_{k+1} dh_{k+1}/dh_k||^2 / ||delta_{k+1}||^2 - 1 )^2,
    delta_{k+1} = dE/dh_{k+1},   dh_{k+1}/dh_k = diag(f'(a_{k+1})) W_h.

Only the immediate derivative with respect to W_h is taken: delta and the states come from the
ordinary backward pass and are constants. Terms whose denominator ||delta||^2 is below ``eps``
are dropped, as in the official code (bound 1e-20), which also averages over the valid
(step, sequence) pairs (``reduction="mean"``); ``"sum"`` sums the batch-mean over steps as eq. 9
reads. The paper's footnote 4: without gradient clipping the regulariser alone usually fails,
so add its gradient first and clip afterwards.

L1/L2 and the gradient-norm penalty select parameters by name pattern (``fnmatch``:
``"*weight_hh*"``, ``"rnn.*"``) and return a loss term.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from gradguard._errors import check_choice, check_positive
from gradguard._grads import ParamsLike, named_parameters
from gradguard.rnn._init import elman_layers
from gradguard.rnn._simple import NONLINEARITIES, SimpleRNN
from gradguard.rnn._cells import compute_dtype
from gradguard.rnn._timesteps import Replay, TimestepProbe, _batched_state, _batched_time_major, _check_ready, replay

REDUCTIONS = ("mean", "sum")
DEFAULT_EPS = 1e-20  # the official code's `bound` below which ||delta||^2 counts as vanished


def norm_preserving_omega(
    weight_hh: Tensor,
    states: Tensor,
    deltas: Tensor,
    nonlinearity: str,
    *,
    reduction: str = "mean",
    eps: float = DEFAULT_EPS,
) -> Tensor:
    """Omega for one recurrent matrix, differentiable with respect to ``weight_hh`` only.

    ``states`` (T, B, H) are the hidden states h_t the cell produced and ``deltas`` (T, B, H) the
    total dE/dh_t at those states; both are treated as constants. For every t, the error signal
    carried one step back is delta_t^T diag(f'(a_t)) W_h, where f'(a_t) is read off h_t (for
    tanh, 1 - h_t^2). The step from the initial state counts, as in the official code.
    """
    check_choice("reduction", reduction, REDUCTIONS)
    act = NONLINEARITIES[nonlinearity]
    states, deltas = states.detach(), deltas.detach()
    carried = (deltas * act.derivative_from_output(states)) @ weight_hh.to(states.dtype)  # rows: W_h^T (delta * f')
    num = carried.pow(2).sum(-1)
    den = deltas.pow(2).sum(-1)
    valid = den >= eps
    ratio = torch.where(valid, num / torch.where(valid, den, torch.ones_like(den)), torch.ones_like(num))
    terms = (ratio - 1.0).pow(2)
    if reduction == "sum":
        return terms.mean(1).sum()
    return terms.sum() / valid.sum().clamp_min(1)


class NormPreservingPenalty:
    """Pascanu et al.'s regulariser Omega on a ``SimpleRNN`` or ``nn.RNN`` (tanh, relu).

    ::

        penalty = gg.rnn.NormPreservingPenalty(model.rnn, weight=2.0)   # hooks the module
        for x, y in data:
            loss = loss_fn(model(x), y)
            loss.backward()                  # delta = dE/dh_t comes from this backward
            omega = penalty.add_grad()       # W_h.grad += weight * dOmega/dW_h; returns Omega
            guard.step(optimizer)            # clip after adding it (the paper's footnote 4)
            optimizer.zero_grad()
        penalty.close()

    Works with fused ``nn.RNN`` modules. For one layer in one direction the states are the
    module's own output sequence and the total delta at every step comes from the backward
    recursion delta_{t-1} = g_{t-1} + W_h^T (delta_t * f'(a_t)) on the gradients g that reached
    the outputs: two small ops per step, no autograd graph. Stacked or bidirectional modules
    (and the reference the direct path is tested against) replay the module's own weights, as
    in :class:`TimestepProbe`, and back-propagate through the replay.

    ``omega()`` returns Omega as a differentiable function of the recurrent matrices if you prefer to add ``weight * omega`` to a loss and run
    one more backward. Each call consumes the captured step and re-arms for the next one.

    Args:
        module: a ``SimpleRNN`` (any nonlinearity) or ``nn.RNN``.
        weight: alpha, the factor on Omega (Pascanu et al. use 2 to 4 on the synthetic tasks;
            on natural tasks they decay it as 1/t).
        reduction: ``"mean"`` over valid terms (official code) or ``"sum"`` over steps (eq. 9).
        eps: terms with ||delta||^2 below this are dropped.

    References:
        Pascanu, Mikolov, Bengio 2013, arXiv:1211.5063, section 3.3, eqs. 9-10.
    """

    def __init__(self, module: nn.Module, weight: float = 1.0, *, reduction: str = "mean", eps: float = DEFAULT_EPS):
        self._matrices = [(name, w) for name, _, w, _ in elman_layers(module)]  # TypeError for LSTM/GRU
        self.module = module
        self.weight = check_positive("weight", weight, allow_zero=True)
        self.reduction = check_choice("reduction", reduction, REDUCTIONS)
        self.eps = check_positive("eps", eps)
        self.nonlinearity = module.nonlinearity if isinstance(module, SimpleRNN) else module.mode.split("_")[1].lower()
        self._direct = len(self._matrices) == 1  # one layer, one direction: no replay needed
        self._probe = TimestepProbe(module)
        self._probe._keep_output_sequence = self._direct
        self._probe.arm()

    def omega(self) -> Tensor:
        """After ``backward()``: Omega (0-dim), with a graph to the recurrent matrices only."""
        cap = self._probe._capture
        try:
            cap = _check_ready(cap, self.module)
            if self._direct:
                return self._omega_direct(cap)
            rep = replay(self.module, cap, tracked="all")
        finally:
            self._probe.arm()  # capture the next step whatever happened to this one
        return self._omega_from(rep)

    def _omega_direct(self, cap) -> Tensor:
        """One Elman layer: states from its output, total deltas by the backward recursion."""
        dtype = compute_dtype(self.module)
        batch_first = getattr(self.module, "batch_first", False)
        states = _batched_time_major(cap.output, cap, batch_first, dtype)
        g_out = _batched_time_major(cap.grads.get("output"), cap, batch_first, dtype)
        g_hn = _batched_state(cap.grads.get("h_n"), cap, dtype)
        w = self._matrices[0][1]
        w_const = w.detach().to(dtype)
        slope = NONLINEARITIES[self.nonlinearity].derivative_from_output(states)
        dense = torch.contiguous_format  # time-major rows, so every deltas[t] is one block
        deltas = torch.zeros_like(states, memory_format=dense) if g_out is None else g_out.clone(memory_format=dense)
        if g_hn is not None:
            deltas[-1] += g_hn[0]
        for t in range(states.shape[0] - 1, 0, -1):  # dE/dh_{t-1} += (delta_t * f'(a_t)) W_h  (rows)
            deltas[t - 1].addmm_(deltas[t] * slope[t], w_const)
        return norm_preserving_omega(w, states, deltas, self.nonlinearity, reduction=self.reduction, eps=self.eps)

    def _omega_from(self, rep: Replay) -> Tensor:
        total = 0.0
        for (layer, d), (h, _) in rep.states.items():
            name, w = self._matrices[layer * rep.spec.num_directions + d]
            total = total + norm_preserving_omega(w, h, rep.grads[(layer, d)][0], self.nonlinearity, reduction=self.reduction, eps=self.eps)
        return total

    def add_grad(self) -> Tensor:
        """Add ``weight * dOmega/dW_h`` to the recurrent matrices' ``.grad``; returns Omega (detached)."""
        omega = self.omega()
        params = [w for _, w in self._matrices]
        grads = torch.autograd.grad(omega * self.weight, params, allow_unused=True)
        with torch.no_grad():
            for p, g in zip(params, grads):
                if g is None:
                    continue
                g = g.to(p.dtype)
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad.add_(g)
        return omega.detach()

    def close(self) -> None:
        self._probe.close()

    def __enter__(self) -> NormPreservingPenalty:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- L1, L2 and gradient-norm penalties ------------------------------------------------------


def select_parameters(
    model: ParamsLike, include: str | Sequence[str] = "*", exclude: str | Sequence[str] = ()
) -> list[tuple[str, Tensor]]:
    """(name, parameter) pairs whose name matches an ``include`` pattern and no ``exclude`` one."""
    include = (include,) if isinstance(include, str) else tuple(include)
    exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    for pat in include + exclude:
        if not isinstance(pat, str):
            raise TypeError(f"name patterns must be strings such as '*weight_hh*', got {pat!r}.")
    named = [(n, p) for n, p in named_parameters(model) if p.requires_grad]
    chosen = [
        (n, p)
        for n, p in named
        if any(fnmatch.fnmatchcase(n, pat) for pat in include) and not any(fnmatch.fnmatchcase(n, pat) for pat in exclude)
    ]
    if not chosen:
        names = [n for n, _ in named]
        close = list(dict.fromkeys(c for pat in include for c in difflib.get_close_matches(pat.strip("*"), names, n=3, cutoff=0.4)))
        hint = f" Close names: {', '.join(close)}." if close else ""
        shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
        raise ValueError(
            f"no trainable parameter matches include={list(include)} exclude={list(exclude)}.{hint} "
            f"Parameter names are: {shown or '(none)'}. Patterns use fnmatch syntax, e.g. '*weight*'."
        )
    return chosen


def _sum(values: Iterable[Tensor]) -> Tensor:
    values = list(values)
    device = values[0].device
    return torch.stack([v.to(device) for v in values]).sum()


def _acc(p: Tensor) -> Tensor:
    return p if p.dtype in (torch.float32, torch.float64) else p.float()


def l1_penalty(model: ParamsLike, include: str | Sequence[str] = "*", exclude: str | Sequence[str] = ()) -> Tensor:
    """sum |theta| over the selected parameters (L1, "lasso"); add ``lam * l1_penalty(...)`` to the loss."""
    return _sum(_acc(p).abs().sum() for _, p in select_parameters(model, include, exclude))


def l2_penalty(model: ParamsLike, include: str | Sequence[str] = "*", exclude: str | Sequence[str] = ()) -> Tensor:
    """sum theta^2 over the selected parameters. Plain SGD with weight decay wd equals adding
    ``wd / 2 * l2_penalty(...)``; with Adam the two differ (Loshchilov & Hutter 2019)."""
    return _sum(_acc(p).pow(2).sum() for _, p in select_parameters(model, include, exclude))


def grad_norm_penalty(
    loss: Tensor, model: ParamsLike, include: str | Sequence[str] = "*", exclude: str | Sequence[str] = ()
) -> Tensor:
    """||dL/dtheta||^2 over the selected parameters, differentiable (double backprop).

    Adding ``lam * grad_norm_penalty(loss, model)`` to the loss penalises steep directions
    (Drucker & LeCun 1992, "Improving generalization performance using double
    backpropagation"). ``.grad`` is not touched by this call.
    """
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise TypeError(f"loss must be a scalar tensor, got {getattr(loss, 'shape', type(loss).__name__)}.")
    if not loss.requires_grad:
        raise ValueError("loss does not require a gradient: compute it from the model's outputs with autograd enabled.")
    chosen = select_parameters(model, include, exclude)
    grads = torch.autograd.grad(loss, [p for _, p in chosen], create_graph=True, allow_unused=True)
    return _sum(_acc(g).pow(2).sum() for g in grads if g is not None) if any(g is not None for g in grads) else loss.new_zeros(())
