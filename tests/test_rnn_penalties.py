"""Pascanu's norm-preserving regulariser against a brute-force reference; L1, L2 and ||grad||^2 penalties."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradguard as gg
from gradguard.rnn import NormPreservingPenalty, SimpleRNN, grad_norm_penalty, l1_penalty, l2_penalty, norm_preserving_omega

T, B, I, H = 5, 3, 2, 3
DERIV = {"tanh": lambda h: 1 - h**2, "relu": lambda h: (h > 0).double(), "sigmoid": lambda h: h * (1 - h)}


def _x(seed=0):
    return torch.randn(T, B, I, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _loss(out):
    w = torch.linspace(-1.0, 1.5, out.shape[-1], dtype=torch.float64)
    return torch.sin(out[-1] @ w).sum() + 0.3 * (out[1] ** 2).sum()


def brute_force_omega(w_hh, states, deltas, nonlinearity, eps=1e-20, reduction="mean"):
    """Eq. 9-10 one (step, sequence) at a time: J_t = diag(f'(a_t)) W_h built as a matrix,
    the carried signal delta_t^T J_t, its squared norm over ||delta_t||^2; terms with a vanishing
    denominator dropped; mean over the valid terms (official code) or sum over steps of the batch mean."""
    total, valid, per_step = 0.0, 0, []
    for t in range(states.shape[0]):
        step = 0.0
        for b in range(states.shape[1]):
            delta = deltas[t, b]
            den = float(delta @ delta)
            if den < eps:
                continue
            jac = torch.diag(DERIV[nonlinearity](states[t, b])) @ w_hh
            carried = delta @ jac
            term = ((carried @ carried) / den - 1) ** 2
            total, valid, step = total + term, valid + 1, step + term
        per_step.append(step / states.shape[1])
    return total / max(valid, 1) if reduction == "mean" else sum(per_step)


def retained_simple_rnn(rnn, x):
    """States of a SimpleRNN as separate tensors, and their total dL/dh_t from autograd."""
    drive = x @ rnn.weight_ih.T + rnn.bias
    h, states = torch.zeros(B, H, dtype=torch.float64), []
    for t in range(T):
        h = rnn.step(drive[t], h)
        h.retain_grad()
        states.append(h)
    _loss(torch.stack(states)).backward()
    return torch.stack(states).detach(), torch.stack([s.grad for s in states])


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu", "sigmoid"])
def test_gradient_matches_brute_force_reference(nonlinearity, reduction):
    torch.manual_seed(1)
    rnn = SimpleRNN(I, H, nonlinearity=nonlinearity, init="normal", spectral_radius=1.2, dtype=torch.float64)
    x = _x()
    states, deltas = retained_simple_rnn(rnn, x)
    w = rnn.weight_hh.detach().clone().requires_grad_()
    want = brute_force_omega(w, states, deltas, nonlinearity, reduction=reduction)
    (want_grad,) = torch.autograd.grad(want, w)

    rnn.zero_grad()
    penalty = NormPreservingPenalty(rnn, weight=1.0, reduction=reduction)
    _loss(rnn(x)[0]).backward()
    loss_grad = rnn.weight_hh.grad.clone()
    omega = penalty.add_grad()
    penalty.close()
    assert omega.item() == pytest.approx(want.item(), rel=1e-10)
    torch.testing.assert_close(rnn.weight_hh.grad - loss_grad, want_grad, rtol=1e-9, atol=1e-12)
    assert rnn.weight_ih.grad is not None  # only W_h gets the extra term; the rest is the loss's gradient


def test_functional_omega_passes_gradcheck():
    gen = torch.Generator().manual_seed(2)
    states = torch.tanh(torch.randn(T, B, H, generator=gen, dtype=torch.float64))
    deltas = torch.randn(T, B, H, generator=gen, dtype=torch.float64)
    w = torch.randn(H, H, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w: norm_preserving_omega(w, states, deltas, "tanh"), (w,))


def test_vanishing_denominators_are_dropped():
    gen = torch.Generator().manual_seed(3)
    states = torch.tanh(torch.randn(T, B, H, generator=gen, dtype=torch.float64))
    deltas = torch.randn(T, B, H, generator=gen, dtype=torch.float64)
    deltas[:2] = 0.0  # a loss on late steps only: no signal has reached the first steps
    w = torch.eye(H, dtype=torch.float64) * 0.5
    got = norm_preserving_omega(w, states, deltas, "tanh")
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(float(brute_force_omega(w, states, deltas, "tanh")), rel=1e-12)
    assert got.item() == pytest.approx(norm_preserving_omega(w, states[2:], deltas[2:], "tanh").item(), rel=1e-12)
    assert norm_preserving_omega(w, states, torch.zeros_like(deltas), "tanh").item() == 0.0


def test_identity_linear_rnn_with_orthogonal_matrix_has_zero_omega():
    """A linear RNN with orthogonal W_h carries every error signal back with its norm intact."""
    rnn = SimpleRNN(I, H, nonlinearity="identity", init="orthogonal", dtype=torch.float64)
    with NormPreservingPenalty(rnn) as penalty:
        _loss(rnn(_x())[0]).backward()
        assert penalty.omega().item() == pytest.approx(0.0, abs=1e-20)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_nn_rnn_gives_the_same_penalty_as_simple_rnn(nonlinearity):
    torch.manual_seed(4)
    fused = nn.RNN(I, H, nonlinearity=nonlinearity).double()
    simple = SimpleRNN(I, H, nonlinearity=nonlinearity, dtype=torch.float64)
    with torch.no_grad():
        simple.weight_ih.copy_(fused.weight_ih_l0)
        simple.weight_hh.copy_(fused.weight_hh_l0)
        simple.bias.copy_(fused.bias_ih_l0 + fused.bias_hh_l0)
    x = _x(5)
    results = []
    for module, name in ((fused, "weight_hh_l0"), (simple, "weight_hh")):
        penalty = NormPreservingPenalty(module, weight=3.0)
        _loss(module(x)[0]).backward()
        before = getattr(module, name).grad.clone()
        omega = penalty.add_grad()
        results.append((omega, getattr(module, name).grad - before))
        penalty.close()
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-10, atol=0)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-9, atol=1e-12)
    assert results[0][1].abs().sum() > 0


def test_multi_layer_bidirectional_nn_rnn_sums_every_matrix():
    """Reference: the stack unrolled with nn.RNNCell, every state retained, Omega per matrix."""
    torch.manual_seed(6)
    fused = nn.RNN(I, H, num_layers=2, bidirectional=True).double()
    x = _x(7)
    layer_in, states = x, {}
    for layer in range(2):
        outs = []
        for d, sfx in enumerate(("", "_reverse")):
            cell = nn.RNNCell(layer_in.shape[-1], H).double()
            with torch.no_grad():
                for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(cell, k).copy_(getattr(fused, f"{k}_l{layer}{sfx}"))
            h, seq = torch.zeros(B, H, dtype=torch.float64), [None] * T
            for t in reversed(range(T)) if d else range(T):
                h = cell(layer_in[t], h)
                h.retain_grad()
                seq[t] = h
            states[f"weight_hh_l{layer}{sfx}"] = seq
            outs.append(torch.stack(seq))
        layer_in = torch.cat(outs, -1)
    _loss(layer_in).backward()
    want = sum(
        brute_force_omega(getattr(fused, name).detach(), torch.stack(seq).detach(), torch.stack([s.grad for s in seq]), "tanh")
        for name, seq in states.items()
    )
    penalty = NormPreservingPenalty(fused)
    _loss(fused(x)[0]).backward()
    assert penalty.omega().item() == pytest.approx(want.item(), rel=1e-10)
    penalty.close()


def _omega_and_grad(module, x, loss_fn, *, direct):
    """Omega and its W_h gradient from one forward/backward, by the direct path or the replay."""
    module.zero_grad()
    penalty = NormPreservingPenalty(module, weight=1.0)
    penalty._direct = direct  # False: the replay reference every stacked module takes
    loss_fn(*module(x)).backward()
    w = next(p for n, p in module.named_parameters() if n.startswith("weight_hh"))
    before = w.grad.clone()
    omega = penalty.add_grad()
    penalty.close()
    return omega, w.grad - before


@pytest.mark.parametrize(
    "case",
    ["time-major", "batch-first", "h_n loss", "unbatched", "relu", "simple-sigmoid", "float32"],
)
def test_direct_path_agrees_with_the_replay(case):
    """One layer, one direction: states read off the output, deltas by the backward recursion."""
    torch.manual_seed(10)
    dtype = torch.float32 if case == "float32" else torch.float64
    batch_first = case == "batch-first"
    if case == "simple-sigmoid":
        module = SimpleRNN(I, H, nonlinearity="sigmoid", init="normal", spectral_radius=1.5, dtype=dtype)
    else:
        module = nn.RNN(I, H, nonlinearity="relu" if case == "relu" else "tanh", batch_first=batch_first).to(dtype)
    x = _x(11).to(dtype)
    if batch_first:
        x = x.transpose(0, 1).contiguous()
    if case == "unbatched":
        x = x[:, 0]

    def loss_fn(out, h_n):
        seq = out.transpose(0, 1) if batch_first else out
        seq = seq.unsqueeze(1) if case == "unbatched" else seq
        extra = (h_n**3).sum() if case == "h_n loss" else 0.0
        return _loss(seq.double()) + extra

    got, got_grad = _omega_and_grad(module, x, loss_fn, direct=True)
    want, want_grad = _omega_and_grad(module, x, loss_fn, direct=False)
    tol = {"rtol": 1e-4, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    torch.testing.assert_close(got, want, **tol)
    torch.testing.assert_close(got_grad, want_grad, **tol)
    assert want.item() > 0 and want_grad.abs().sum() > 0


def test_penalty_rearms_for_every_step_and_cleans_up():
    torch.manual_seed(8)
    rnn = nn.RNN(I, H).double()
    opt = torch.optim.SGD(rnn.parameters(), lr=0.1)
    penalty = NormPreservingPenalty(rnn, weight=2.0)
    omegas = []
    for step in range(3):
        _loss(rnn(_x(step))[0]).backward()
        omegas.append(penalty.add_grad())
        gg.ClipNorm(1.0)(rnn.named_parameters())  # clipping comes after adding the penalty's gradient
        opt.step()
        opt.zero_grad()
    assert len({o.item() for o in omegas}) == 3
    penalty.close()
    assert not rnn._forward_hooks


def test_penalty_arguments():
    with pytest.raises(TypeError, match="stacks the gates"):
        NormPreservingPenalty(nn.LSTM(2, 3))
    with pytest.raises(ValueError, match="'mean', 'sum'"):
        NormPreservingPenalty(nn.RNN(2, 3), reduction="avg")
    with pytest.raises(ValueError, match="weight must be >= 0"):
        NormPreservingPenalty(nn.RNN(2, 3), weight=-1.0)
    penalty = NormPreservingPenalty(nn.RNN(2, 3))
    with pytest.raises(gg.GradGuardError, match="not called with gradients enabled"):
        penalty.add_grad()
    penalty.close()


# -- L1, L2, gradient-norm penalties ---------------------------------------------------------


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(9)
        self.rnn = nn.RNN(2, 3)
        self.head = nn.Linear(3, 1)


def test_l1_and_l2_select_by_name_pattern():
    net = Net()
    hh = [net.rnn.weight_hh_l0]
    assert l1_penalty(net, "*weight_hh*").item() == pytest.approx(sum(p.abs().sum() for p in hh).item())
    assert l2_penalty(net, "*weight_hh*").item() == pytest.approx(sum(p.pow(2).sum() for p in hh).item())
    weights = [p for n, p in net.named_parameters() if "bias" not in n]
    assert l2_penalty(net, exclude="*bias*").item() == pytest.approx(sum(p.pow(2).sum() for p in weights).item())
    assert l1_penalty(net, ["rnn.*", "head.bias"]).item() == pytest.approx(
        sum(p.abs().sum() for n, p in net.named_parameters() if n.startswith("rnn.") or n == "head.bias").item()
    )
    penalty = l2_penalty(net, "head.*")
    penalty.backward()
    torch.testing.assert_close(net.head.weight.grad, 2 * net.head.weight.detach())
    assert net.rnn.weight_hh_l0.grad is None


def test_frozen_parameters_are_left_out():
    net = Net()
    net.head.weight.requires_grad_(False)
    assert l1_penalty(net, "head.*").item() == pytest.approx(net.head.bias.abs().sum().item())


def test_grad_norm_penalty_is_double_backprop():
    """L = 1/2 theta^T A theta: ||grad L||^2 = ||A theta||^2, whose gradient is 2 A^T A theta."""
    gen = torch.Generator().manual_seed(10)
    a = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    a = a @ a.T
    theta = nn.Parameter(torch.randn(4, generator=gen, dtype=torch.float64))
    loss = 0.5 * theta @ a @ theta
    penalty = grad_norm_penalty(loss, [("theta", theta)])
    assert penalty.item() == pytest.approx((a @ theta).pow(2).sum().item())
    assert theta.grad is None  # the penalty itself does not write .grad
    penalty.backward()
    torch.testing.assert_close(theta.grad, 2 * a.T @ a @ theta.detach())


def test_penalty_selection_errors():
    net = Net()
    with pytest.raises(ValueError, match="no trainable parameter matches.*Close names: rnn.weight_hh_l0"):
        l2_penalty(net, "rnn.weight_hh")
    with pytest.raises(TypeError, match="name patterns must be strings"):
        l1_penalty(net, [3])
    with pytest.raises(ValueError, match="does not require a gradient"):
        grad_norm_penalty(torch.tensor(1.0), net)
    with pytest.raises(TypeError, match="scalar tensor"):
        grad_norm_penalty(torch.ones(2, requires_grad=True), net)
