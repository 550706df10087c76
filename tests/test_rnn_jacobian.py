"""||dh_T/dh_t||: power iteration against the dense product, the linear case exactly, Pascanu's bound."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import gradguard as gg
from gradguard.rnn import SimpleRNN, hidden_jacobian_norms, init_rnn, pascanu_condition


def _x(steps, batch, size, seed=0, scale=1.0):
    return torch.randn(steps, batch, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


@pytest.mark.parametrize("r", [0.5, 0.9, 1.0, 1.1])
@pytest.mark.parametrize("method", ["dense", "power", "lanczos"])
def test_linear_rnn_with_scaled_orthogonal_matrix_is_exact(r, method):
    """Identity f and W_h = r Q: dh_T/dh_t = (r Q)^(T-t), whose norm is r^(T-t) whatever the input."""
    torch.manual_seed(0)
    rnn = SimpleRNN(3, 10, nonlinearity="identity", init="orthogonal", spectral_radius=r, dtype=torch.float64)
    steps = 12
    norms = hidden_jacobian_norms(rnn, _x(steps, 2, 3), method=method)
    expected = torch.tensor([r ** (steps - 1 - t) for t in range(steps)], dtype=torch.float64).expand(2, steps)
    torch.testing.assert_close(norms, expected, rtol=1e-10, atol=0)


def _modules():
    torch.manual_seed(1)
    simple = SimpleRNN(3, 6, init="normal", spectral_radius=1.4).double()
    rnn = nn.RNN(3, 6, nonlinearity="relu").double()
    init_rnn(rnn, "normal", spectral_radius=1.2)
    gru = nn.GRU(3, 5, batch_first=True).double()
    lstm = nn.LSTM(3, 4).double()
    with torch.no_grad():
        for m in (gru, lstm):
            for p in m.parameters():
                p.mul_(3.0)
    return {"simple_tanh": simple, "rnn_relu": rnn, "gru": gru, "lstm": lstm}


@pytest.mark.parametrize("method, iters", [("power", 2000), ("lanczos", 40)])
@pytest.mark.parametrize("name", ["simple_tanh", "rnn_relu", "gru", "lstm"])
def test_iterative_methods_agree_with_dense(name, method, iters):
    module = _modules()[name]
    x = _x(9, 3, 3, seed=2)
    if getattr(module, "batch_first", False):
        x = x.transpose(0, 1)
    dense = hidden_jacobian_norms(module, x, method="dense")
    got = hidden_jacobian_norms(module, x, method=method, iters=iters, tol=1e-12, generator=torch.Generator().manual_seed(3))
    assert dense.shape == got.shape == (3, 9)
    assert (got <= dense * (1 + 1e-9)).all()  # both are lower bounds of ||J||
    torch.testing.assert_close(got, dense, rtol=1e-5, atol=1e-12)


def test_lanczos_needs_fewer_sweeps_than_power_iteration():
    """Close top singular values: a few Lanczos sweeps beat many more power sweeps."""
    module = _modules()["gru"]
    x = _x(9, 3, 3, seed=2).transpose(0, 1)
    dense = hidden_jacobian_norms(module, x, method="dense")
    err = {
        m: ((hidden_jacobian_norms(module, x, method=m, iters=n, tol=1e-15, generator=torch.Generator().manual_seed(3)) - dense) / dense).abs().max()
        for m, n in (("power", 40), ("lanczos", 5))
    }
    assert err["lanczos"] < err["power"]


def test_dense_matches_a_brute_force_jacobian():
    """Independent reference: torch.autograd.functional.jacobian of h_T with respect to h_t."""
    torch.manual_seed(4)
    rnn = SimpleRNN(2, 4, nonlinearity="tanh").double()
    x = _x(5, 1, 2, seed=5)
    norms = hidden_jacobian_norms(rnn, x[:, 0], method="dense")  # unbatched input gives (T,)
    drive = x[:, 0] @ rnn.weight_ih.T + rnn.bias
    states = [torch.zeros(4, dtype=torch.float64)]
    for t in range(5):
        states.append(torch.tanh(rnn.weight_hh @ states[-1] + drive[t]).detach())

    def run_from(t):
        def fn(h):
            for s in range(t + 1, 5):
                h = torch.tanh(rnn.weight_hh @ h + drive[s])
            return h

        return fn

    for t in range(5):
        jac = torch.autograd.functional.jacobian(run_from(t), states[t + 1])
        assert norms[t].item() == pytest.approx(torch.linalg.matrix_norm(jac, ord=2).item(), rel=1e-10)


@settings(max_examples=25, deadline=None)
@given(
    nonlinearity=st.sampled_from(["tanh", "sigmoid"]),
    c=st.floats(0.05, 0.99),
    hidden=st.integers(1, 6),
    steps=st.integers(2, 7),
    input_scale=st.floats(0.0, 3.0),
    seed=st.integers(0, 10_000),
)
def test_below_the_bound_gradients_vanish_geometrically(nonlinearity, c, hidden, steps, input_scale, seed):
    """Pascanu et al. 2013, eqs. 6-7: sigma_max < 1/gamma implies ||dh_t/dh_k|| <= (sigma_max * gamma)^(t-k)."""
    gen = torch.Generator().manual_seed(seed)
    rnn = SimpleRNN(2, hidden, nonlinearity=nonlinearity, init="normal", generator=gen).double()
    gamma = rnn.gamma
    init_rnn(rnn, "normal", max_singular_value=c / gamma, generator=gen)
    with torch.no_grad():
        rnn.bias.normal_(generator=gen)
    sigma = gg.rnn.largest_singular_value(rnn.weight_hh)
    assert sigma * gamma < 1
    x = _x(steps, 2, 2, seed=seed, scale=input_scale)
    for t in range(1, steps):
        norms = hidden_jacobian_norms(rnn, x[: t + 1], method="dense")  # ||dh_t/dh_k|| for k <= t
        for k in range(t + 1):
            bound = (sigma * gamma) ** (t - k)
            assert (norms[:, k] <= bound * (1 + 1e-9) + 1e-300).all(), (t, k, norms[:, k], bound)


def test_pascanu_condition_reports_the_numbers():
    torch.manual_seed(6)
    tanh = SimpleRNN(2, 8, init="orthogonal", max_singular_value=0.8)
    (cond,) = pascanu_condition(tanh)
    assert cond.parameter == "weight_hh" and cond.nonlinearity == "tanh"
    assert cond.sigma_max == pytest.approx(0.8, rel=1e-6)
    assert cond.spectral_radius == pytest.approx(0.8, rel=1e-6)
    assert (cond.gamma, cond.bound, cond.statistic, cond.side) == (1.0, 1.0, "sigma_max", "below")
    assert cond.vanishing_guaranteed and not cond.explosion_possible
    assert "must vanish" in cond.describe()

    sigmoid = SimpleRNN(2, 8, nonlinearity="sigmoid", init="orthogonal", max_singular_value=3.0)
    (cond,) = pascanu_condition(sigmoid)
    assert (cond.gamma, cond.bound, cond.side) == (0.25, 4.0, "below")  # 3 < 1/gamma = 4

    big = SimpleRNN(2, 8, nonlinearity="sigmoid", init="orthogonal", max_singular_value=5.0)
    (cond,) = pascanu_condition(big)
    assert cond.side == "above" and cond.explosion_possible
    assert set(cond.as_dict()) >= {"sigma_max", "spectral_radius", "gamma", "bound", "side", "parameter"}


def test_linear_rnn_uses_the_spectral_radius():
    """A non-normal matrix with rho < 1 < sigma_max: the linear case is decided by rho."""
    rnn = SimpleRNN(1, 2, nonlinearity="identity")
    with torch.no_grad():
        rnn.weight_hh.copy_(torch.tensor([[0.5, 3.0], [0.0, 0.5]]))
    (cond,) = pascanu_condition(rnn)
    assert cond.statistic == "spectral_radius" and cond.value == pytest.approx(0.5)
    assert cond.sigma_max > 1 and cond.side == "below"


def test_pascanu_condition_on_nn_rnn_lists_every_matrix():
    rnn = nn.RNN(2, 4, num_layers=2, bidirectional=True, nonlinearity="relu")
    conds = pascanu_condition(rnn)
    assert [c.parameter for c in conds] == ["weight_hh_l0", "weight_hh_l0_reverse", "weight_hh_l1", "weight_hh_l1_reverse"]
    for c in conds:
        assert c.nonlinearity == "relu" and c.gamma == 1.0
        assert c.sigma_max == pytest.approx(gg.rnn.largest_singular_value(getattr(rnn, c.parameter)))
        assert c.side == ("below" if c.sigma_max < 1 else "above")


def test_jacobian_errors():
    with pytest.raises(TypeError, match="stacks the gates"):
        pascanu_condition(nn.LSTM(2, 3))
    with pytest.raises(ValueError, match="single-layer, unidirectional"):
        hidden_jacobian_norms(nn.GRU(2, 3, num_layers=2), torch.zeros(4, 1, 2))
    with pytest.raises(ValueError, match="Did you mean 'dense'"):
        hidden_jacobian_norms(SimpleRNN(2, 3), torch.zeros(4, 1, 2), method="dens")
    with pytest.raises(ValueError, match="input must be"):
        hidden_jacobian_norms(SimpleRNN(2, 3), torch.zeros(4))
    assert math.isclose(hidden_jacobian_norms(SimpleRNN(2, 3), torch.zeros(1, 2, 2))[0, 0].item(), 1.0)
