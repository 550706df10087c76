"""How the hidden state at the end depends on the state at step t: ||dh_T/dh_t||, and W_h's spectrum.

dh_T/dh_t is the product of the step Jacobians J_s = dh_s/dh_{s-1} for s = t+1..T. Its spectral
norm is the largest factor by which any perturbation of h_t (or, transposed, any error signal at
h_T) can be amplified on its way: Pascanu et al. (2013, arXiv:1211.5063, section 2.1) bound it
by (sigma_max(W_h) * gamma)^(T-t).

Three paths compute it for every t at once:

- ``"power"``: power iteration on J^T J, one vector per start step t, applied with autograd's
  Jacobian-vector and vector-Jacobian products (``torch.func``); no T x H x H
  matrix is ever formed, so it scales to large hidden sizes.
- ``"lanczos"``: the same products, with Lanczos in place of plain power iteration: far fewer
  sweeps when the top singular values are close.
- ``"dense"``: build every step Jacobian, multiply them out, take exact spectral norms. O(T H^3):
  the reference for small H.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from gradguard._errors import check_choice, check_int, check_positive
from gradguard.rnn._cells import check_recurrent, spec_of
from gradguard.rnn._init import elman_layers
from gradguard.rnn._simple import NONLINEARITIES, SimpleRNN

METHODS = ("auto", "lanczos", "power", "dense")
DENSE_UP_TO = 64  # state sizes up to this use the exact dense path under method="auto"


def spectral_radius(weight: Tensor) -> float:
    """max |eigenvalue| of a square matrix (computed in float64 on the host)."""
    return torch.linalg.eigvals(weight.detach().to("cpu", torch.float64)).abs().max().item()


def largest_singular_value(weight: Tensor) -> float:
    """The spectral norm ||W||_2, the largest singular value (float64, on the host)."""
    return torch.linalg.matrix_norm(weight.detach().to("cpu", torch.float64), ord=2).item()


# -- the trajectory and its step maps --------------------------------------------------------


def _trajectory(module: nn.Module, input: Tensor, hx, dtype: torch.dtype):
    """(step map (state, drive_t) -> next state, the drives (T, B, gates), the T states, batched?).

    The state is h, or [h, c] concatenated for the LSTM. Only one layer and one direction: the
    state of a stack is not a single recurrence.
    """
    check_recurrent(module)
    spec = spec_of(module, dtype)
    if spec.num_layers != 1 or spec.num_directions != 1:
        raise ValueError(
            f"Jacobian norms need a single-layer, unidirectional module; got num_layers={spec.num_layers}, "
            f"bidirectional={spec.num_directions == 2}. Measure one layer as its own module."
        )
    if not isinstance(input, Tensor) or input.dim() not in (2, 3):
        raise ValueError(f"input must be a (T, B, features) or (T, features) tensor, got {getattr(input, 'shape', type(input).__name__)}.")
    batched = input.dim() == 3
    x = input if batched else input.unsqueeze(1)
    if batched and spec.batch_first:
        x = x.transpose(0, 1)
    x = x.detach().to(dtype)
    cell, batch, out = spec.layers[0][0], x.shape[1], spec.out_size
    lstm = spec.kind == "lstm"
    h0, c0 = hx if isinstance(hx, tuple) else (hx, None)

    def initial(t, size):
        if t is None:
            return x.new_zeros(batch, size)
        t = t.detach().to(dtype)
        return t.reshape(batch, size)

    s = torch.cat([initial(h0, out), initial(c0, spec.hidden_size)], -1) if lstm else initial(h0, out)

    def step(state: Tensor, drive: Tensor) -> Tensor:
        if not lstm:
            return cell.step(drive, state)
        h, c = cell.step(drive, (state[..., :out], state[..., out:]))
        return torch.cat([h, c], -1)

    drives = cell.drive(x)
    states = []
    with torch.no_grad():
        for t in range(x.shape[0]):
            s = step(s, drives[t])
            states.append(s)
    return step, drives, states, batched


def _step_maps(step, drive, state):
    """u -> J^T u and v -> J v for the step Jacobian J at ``state``, batched over a leading axis.

    J v is the vector-Jacobian product of the linear map u -> J^T u (reverse mode twice), which
    avoids forward-mode AD and its one-off decomposition loading.
    """
    _, vjp_fn = torch.func.vjp(lambda s: step(s, drive), state)

    def transpose(u):
        return vjp_fn(u)[0]

    _, jvp_fn = torch.func.vjp(transpose, torch.zeros_like(state))
    return torch.func.vmap(transpose), torch.func.vmap(lambda v: jvp_fn(v)[0])


def _dense_norms(step, drives, states) -> Tensor:
    """Exact ||dh_{T-1}/dh_t||_2 for every output index t, by multiplying dense step Jacobians."""
    steps, (batch, size) = len(states), states[0].shape
    basis = torch.eye(size, dtype=states[0].dtype, device=states[0].device).unsqueeze(1).expand(size, batch, size)
    product = torch.eye(size, dtype=states[0].dtype, device=states[0].device).expand(batch, size, size)
    norms = [torch.ones(batch, dtype=states[0].dtype, device=states[0].device)]
    for s in range(steps - 1, 0, -1):
        rows = _step_maps(step, drives[s], states[s - 1])[0](basis)  # rows[i, b] = e_i^T J_s[b]
        product = product @ rows.transpose(0, 1)
        norms.append(torch.linalg.matrix_norm(product, ord=2))
    return torch.stack(norms[::-1], dim=1)


class _Sweeps:
    """Products with the suffix Jacobians P_k = dh_{T-1}/dh_k = J_{T-1} ... J_{k+1}, all k at once.

    Row k of a (K, B, S) block is a vector that starts at output index k. A forward sweep applies
    J_s to the rows that have started (P_k v_k for every k); a backward sweep applies J_s^T and
    retires row k once it is back at step k (P_k^T u_k). One ``gram`` call is one of each.
    """

    def __init__(self, step, drives, states):
        self.steps = len(states)
        maps = [None] + [_step_maps(step, drives[s], states[s - 1]) for s in range(1, self.steps)]
        self.bwd = [m and m[0] for m in maps]
        self.fwd = [m and m[1] for m in maps]

    def gram(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """(P_k^T P_k v_k, P_k v_k) for every row k."""
        z = torch.zeros_like(v)
        for s in range(1, self.steps):
            z[s - 1] = v[s - 1]
            z[:s] = self.fwd[s](z[:s])
        pv = z.clone()
        out = torch.empty_like(v)
        for s in range(self.steps - 1, 0, -1):
            z[:s] = self.bwd[s](z[:s])
            out[s - 1] = z[s - 1]
        return out, pv


def _unit(v: Tensor) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)


def _converged(now: Tensor, before: Tensor | None, tol: float) -> bool:
    return before is not None and bool(((now - before).abs() <= tol * now.abs()).all())


def _power_norms(sweeps: _Sweeps, v: Tensor, iters: int, tol: float) -> Tensor:
    """Power iteration on P_k^T P_k: the estimate ||P_k v|| for a unit v never exceeds ||P_k||
    and converges to it, by a factor (sigma_2 / sigma_1)^2 per sweep."""
    previous = None
    for _ in range(iters):
        w, pv = sweeps.gram(v)
        sigma = pv.norm(dim=-1)
        v = _unit(w)
        if _converged(sigma, previous, tol):
            break
        previous = sigma
    return sigma


def _lanczos_norms(sweeps: _Sweeps, v: Tensor, iters: int, tol: float) -> Tensor:
    """Lanczos on P_k^T P_k with full reorthogonalisation, batched over (k, b).

    The same sweeps as power iteration, but the estimate is the top eigenvalue of the tridiagonal
    matrix built from all the vectors so far (a Ritz value): still a lower bound of ||P_k||^2,
    and it converges in far fewer sweeps when the top singular values are close (Golub & Van
    Loan, "Matrix Computations", section 10.1). P^T P is divided by ||P v_1||^2 from the first
    sweep so that its entries stay near 1 whatever the scale of the products.
    """
    tiny = torch.finfo(v.dtype).tiny
    q, basis, alphas, betas = _unit(v), [], [], []
    scale, previous, theta = None, None, None
    for j in range(min(iters, v.shape[-1])):
        w, pv = sweeps.gram(q)
        if scale is None:
            scale = pv.pow(2).sum(-1, keepdim=True).clamp_min(tiny)
        w = w / scale
        alphas.append((w * q).sum(-1))
        basis.append(q)
        for b in basis:  # full reorthogonalisation: also removes the alpha and beta terms
            w = w - (w * b).sum(-1, keepdim=True) * b
        tri = torch.diag_embed(torch.stack(alphas, -1))
        if betas:
            off = torch.diag_embed(torch.stack(betas, -1), offset=1)
            tri = tri + off + off.transpose(-1, -2)
        theta = torch.linalg.eigvalsh(tri)[..., -1]
        if _converged(theta, previous, tol):
            break
        previous = theta
        beta = w.norm(dim=-1)
        betas.append(beta)
        q = torch.where(beta.unsqueeze(-1) > tiny, w / beta.unsqueeze(-1).clamp_min(tiny), torch.zeros_like(w))
    return (theta.clamp_min(0) * scale.squeeze(-1)).sqrt()


def hidden_jacobian_norms(
    module: nn.Module,
    input: Tensor,
    hx: Tensor | tuple[Tensor, Tensor] | None = None,
    *,
    method: str = "auto",
    iters: int = 100,
    tol: float = 1e-7,
    dtype: torch.dtype = torch.float64,
    generator: torch.Generator | None = None,
) -> Tensor:
    """||dh_T/dh_t||_2 for every time step t, on the trajectory the module follows on ``input``.

    Entry t refers to the module's output at step t (0-based), so the last entry is
    ||dh_T/dh_T|| = 1. For the linear ``SimpleRNN`` with W_h = r Q (Q orthogonal), entry t is
    r^(T-1-t) exactly. Returns (B, T), or (T,) for an unbatched input.

    Args:
        module: a single-layer, unidirectional ``SimpleRNN``, ``nn.RNN``, ``nn.GRU`` or
            ``nn.LSTM`` (whose state is taken as (h, c) concatenated).
        input, hx: as the module takes them (``batch_first`` is respected).
        method: ``"power"`` (autograd JVP/VJP power iteration, memory O(T B H) per vector
            set), ``"lanczos"`` (the same products, Lanczos; memory grows with the sweeps),
            ``"dense"`` (exact, O(T H^3)), or ``"auto"``: dense for states up to 64 wide, else
            Lanczos.
        iters, tol: the iterative methods stop after ``iters`` sweeps or when no estimate moved
            by more than ``tol`` relative (that check reads one boolean from the device per
            sweep). Power iteration shrinks the error by (sigma_2 / sigma_1)^2 per sweep, so close
            top singular values converge slowly; both estimates are lower bounds of the true norm.
        dtype: the precision of the computation (float64 by default: products of many
            Jacobians underflow and overflow quickly).

    References:
        Pascanu, Mikolov, Bengio 2013, arXiv:1211.5063, section 2.1, eqs. 5-7.
    """
    check_choice("method", method, METHODS)
    check_int("iters", iters, minimum=1)
    check_positive("tol", tol)
    step, drives, states, batched = _trajectory(module, input, hx, dtype)
    if not states:
        raise ValueError("input has no time steps.")
    if method == "auto":
        method = "dense" if states[0].shape[-1] <= DENSE_UP_TO else "lanczos"
    if method == "dense":
        norms = _dense_norms(step, drives, states)
    elif len(states) == 1:
        norms = torch.ones(states[0].shape[0], 1, dtype=dtype, device=states[0].device)
    else:
        like = states[0]
        start = torch.randn(len(states) - 1, *like.shape, generator=generator, dtype=torch.float64).to(like)
        solve = _power_norms if method == "power" else _lanczos_norms
        sigma = solve(_Sweeps(step, drives, states), start, iters, tol)  # (T - 1, B)
        norms = torch.cat([sigma.transpose(0, 1), torch.ones_like(sigma[:1]).transpose(0, 1)], dim=1)
    return norms if batched else norms[0]


# -- Pascanu's spectral condition ------------------------------------------------------------


@dataclass(frozen=True)
class SpectralCondition:
    """Where one recurrent matrix sits relative to Pascanu et al.'s bound 1/gamma.

    Nonlinear f with |f'| <= gamma: sigma_max(W_h) < 1/gamma is *sufficient* for the long-term
    gradient components to vanish; sigma_max > 1/gamma is *necessary* (not sufficient) for them
    to explode. For the linear RNN the same holds with the spectral radius rho in place of
    sigma_max and gamma = 1. ``side`` is ``"below"`` (vanishing guaranteed), ``"above"``
    (explosion possible) or ``"at"`` (on the bound, within 1e-6 relative).

    Being above the bound does not mean the gradients explode: a saturated tanh RNN with
    spectral radius above 1 can still vanish, because tanh' is far below 1 where it saturates.
    Judge from the measured ||dL/dh_t|| (``timestep_grad_norms``), with this as the explanation.
    """

    parameter: str  # name of the recurrent matrix, e.g. "weight_hh_l0"
    nonlinearity: str
    sigma_max: float
    spectral_radius: float
    gamma: float
    bound: float  # 1 / gamma
    statistic: str  # "sigma_max", or "spectral_radius" for the linear RNN
    value: float  # the statistic compared with the bound
    side: str  # "below", "at" or "above"

    @property
    def vanishing_guaranteed(self) -> bool:
        return self.side == "below"

    @property
    def explosion_possible(self) -> bool:
        return self.side == "above"

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        name = "largest singular value" if self.statistic == "sigma_max" else "spectral radius"
        head = f"{self.parameter}: {name} {self.value:.4g} vs 1/gamma = {self.bound:.4g} ({self.nonlinearity}, gamma = {self.gamma:g})"
        if self.side == "below":
            return head + ": below the bound, so long-term gradient components must vanish (Pascanu et al. 2013)."
        if self.side == "above":
            return head + ": above the bound, so exploding gradients are possible but not certain; check the measured per-step gradient norms."
        return head + ": on the bound."


def pascanu_condition(module: nn.Module) -> list[SpectralCondition]:
    """Pascanu et al.'s spectral condition for every recurrent matrix of a ``SimpleRNN`` or ``nn.RNN``.

    One entry per layer and direction (a ``SimpleRNN`` has one). Reads the weights (one host
    transfer per matrix); numbers are computed in float64.

    References:
        Pascanu, Mikolov, Bengio 2013, "On the difficulty of training recurrent neural networks",
        arXiv:1211.5063, section 2.1: gamma = 1 for tanh, 1/4 for sigmoid.
    """
    layers = elman_layers(module)  # raises a clear TypeError for LSTM/GRU and other modules
    act = module.nonlinearity if isinstance(module, SimpleRNN) else module.mode.split("_")[1].lower()
    gamma = NONLINEARITIES[act].gamma
    out = []
    for name, _, w_hh, _ in layers:
        sigma, rho = largest_singular_value(w_hh), spectral_radius(w_hh)
        statistic, value = ("spectral_radius", rho) if act == "identity" else ("sigma_max", sigma)
        bound = 1.0 / gamma
        side = "at" if math.isclose(value, bound, rel_tol=1e-6) else ("below" if value < bound else "above")
        out.append(SpectralCondition(name, act, sigma, rho, gamma, bound, statistic, value, side))
    return out
