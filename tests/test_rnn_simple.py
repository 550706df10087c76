"""SimpleRNN against nn.RNN, the initialisation schemes, and argument errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradguard as gg
from gradguard.rnn import SimpleRNN, init_rnn, largest_singular_value, spectral_radius


def copy_into_simple(rnn: nn.RNN) -> SimpleRNN:
    simple = SimpleRNN(rnn.input_size, rnn.hidden_size, nonlinearity=rnn.nonlinearity, batch_first=rnn.batch_first).double()
    with torch.no_grad():
        simple.weight_ih.copy_(rnn.weight_ih_l0)
        simple.weight_hh.copy_(rnn.weight_hh_l0)
        simple.bias.copy_(rnn.bias_ih_l0 + rnn.bias_hh_l0)
    return simple


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_forward_matches_nn_rnn(nonlinearity, batch_first):
    torch.manual_seed(0)
    rnn = nn.RNN(3, 5, nonlinearity=nonlinearity, batch_first=batch_first).double()
    simple = copy_into_simple(rnn)
    x = torch.randn(4, 7, 3, dtype=torch.float64)
    h0 = torch.randn(1, 4 if batch_first else 7, 5, dtype=torch.float64)
    for args in ((x,), (x, h0)):
        want_out, want_h = rnn(*args)
        got_out, got_h = simple(*args)
        torch.testing.assert_close(got_out, want_out)
        torch.testing.assert_close(got_h, want_h)
    # Unbatched input, as nn.RNN takes it.
    want_out, want_h = rnn(x[0])
    got_out, got_h = simple(x[0])
    torch.testing.assert_close(got_out, want_out)
    torch.testing.assert_close(got_h, want_h)


@pytest.mark.parametrize("nonlinearity", ["sigmoid", "identity"])
def test_other_nonlinearities_follow_the_equation(nonlinearity):
    torch.manual_seed(1)
    simple = SimpleRNN(2, 3, nonlinearity=nonlinearity).double()
    x = torch.randn(5, 2, 2, dtype=torch.float64)
    f = torch.sigmoid if nonlinearity == "sigmoid" else (lambda a: a)
    h = torch.zeros(2, 3, dtype=torch.float64)
    for t in range(5):
        h = f(h @ simple.weight_hh.T + x[t] @ simple.weight_ih.T + simple.bias)
    torch.testing.assert_close(simple(x)[1][0], h)
    assert simple.gamma == (0.25 if nonlinearity == "sigmoid" else 1.0)


def test_default_init_has_pytorch_bounds():
    gen = torch.Generator().manual_seed(2)
    simple = SimpleRNN(4, 16, generator=gen)
    bound = 16**-0.5
    for p in simple.parameters():
        assert p.abs().max() <= bound
        assert p.abs().max() > 0.5 * bound


def test_orthogonal_and_rescaled_inits():
    gen = torch.Generator().manual_seed(3)
    simple = SimpleRNN(3, 12, init="orthogonal", generator=gen).double()
    w = simple.weight_hh.detach()
    torch.testing.assert_close(w @ w.T, torch.eye(12, dtype=torch.float64))
    assert torch.count_nonzero(simple.bias) == 0
    scaled = SimpleRNN(3, 12, init="orthogonal", spectral_radius=0.7, generator=gen).double()
    s = torch.linalg.svdvals(scaled.weight_hh.detach())
    torch.testing.assert_close(s, torch.full_like(s, 0.7))
    normal = SimpleRNN(3, 30, init="normal", spectral_radius=1.3, generator=gen)
    assert spectral_radius(normal.weight_hh) == pytest.approx(1.3, rel=1e-5)
    assert largest_singular_value(normal.weight_hh) > 1.3  # a Gaussian matrix is not normal
    capped = SimpleRNN(3, 30, init="normal", max_singular_value=0.9, generator=gen)
    assert largest_singular_value(capped.weight_hh) == pytest.approx(0.9, rel=1e-5)


def test_identity_init_is_irnn():
    simple = SimpleRNN(2, 6, nonlinearity="relu", init="identity", generator=torch.Generator().manual_seed(4))
    assert torch.equal(simple.weight_hh.detach(), torch.eye(6))
    assert torch.count_nonzero(simple.bias) == 0
    assert 0 < simple.weight_ih.abs().max() < 0.01  # N(0, 0.001^2)
    # With no input an IRNN keeps its state (Le et al. 2015).
    h0 = torch.rand(1, 1, 6)
    _, h = simple(torch.zeros(50, 1, 2), h0)
    torch.testing.assert_close(h, h0)


def test_smart_tanh_is_sparse_with_radius_095():
    simple = SimpleRNN(6, 50, init="smart_tanh", generator=torch.Generator().manual_seed(5))
    w = simple.weight_hh.detach()
    assert (torch.count_nonzero(w, dim=1) == 15).all()  # 15 incoming weights per unit
    assert spectral_radius(w) == pytest.approx(0.95, rel=1e-5)
    assert simple.weight_ih.std().item() == pytest.approx(0.01, rel=0.3)
    small = SimpleRNN(2, 10, init="smart_tanh", generator=torch.Generator().manual_seed(5))
    assert torch.count_nonzero(small.weight_hh) == 100  # fewer than 15 units: dense


@pytest.mark.parametrize("scheme, std", [("basic_tanh", 0.1), ("basic_sigmoid", 0.01)])
def test_pascanu_normal_inits(scheme, std):
    simple = SimpleRNN(40, 60, init=scheme, generator=torch.Generator().manual_seed(6))
    for w in (simple.weight_hh, simple.weight_ih):
        assert w.std().item() == pytest.approx(std, rel=0.05)
    assert torch.count_nonzero(simple.bias) == 0


def test_init_rnn_covers_every_layer_of_nn_rnn():
    rnn = nn.RNN(3, 8, num_layers=2, bidirectional=True)
    init_rnn(rnn, "orthogonal", spectral_radius=0.5, generator=torch.Generator().manual_seed(7))
    names = [n for n, _ in rnn.named_parameters() if n.startswith("weight_hh")]
    assert len(names) == 4
    for n in names:
        s = torch.linalg.svdvals(getattr(rnn, n).detach().double())
        torch.testing.assert_close(s, torch.full_like(s, 0.5), rtol=1e-5, atol=1e-6)
    for n, p in rnn.named_parameters():
        if n.startswith("bias"):
            assert torch.count_nonzero(p) == 0, n


def test_generator_makes_inits_reproducible():
    a = SimpleRNN(3, 9, init="smart_tanh", generator=torch.Generator().manual_seed(8))
    b = SimpleRNN(3, 9, init="smart_tanh", generator=torch.Generator().manual_seed(8))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown nonlinearity 'tahn'. Did you mean 'tanh'"):
        SimpleRNN(2, 3, nonlinearity="tahn")
    with pytest.raises(ValueError, match="Did you mean 'orthogonal'"):
        SimpleRNN(2, 3, init="orthogonl")
    with pytest.raises(ValueError, match="Known initialisation schemes: basic_sigmoid"):
        SimpleRNN(2, 3, init="xavier")
    with pytest.raises(ValueError, match="not both"):
        SimpleRNN(2, 3, spectral_radius=1.0, max_singular_value=1.0)
    with pytest.raises(ValueError, match="spectral_radius must be > 0"):
        SimpleRNN(2, 3, spectral_radius=-1.0)
    with pytest.raises(ValueError, match="hidden_size must be >= 1"):
        SimpleRNN(2, 0)
    with pytest.raises(TypeError, match="stacks the gates"):
        init_rnn(nn.LSTM(2, 3), "orthogonal")
    with pytest.raises(TypeError, match="SimpleRNN or a torch.nn.RNN"):
        init_rnn(nn.Linear(2, 3))
    simple = SimpleRNN(2, 3)
    with pytest.raises(ValueError, match="last dimension 5"):
        simple(torch.zeros(4, 1, 5))
    with pytest.raises(ValueError, match=r"hx of shape \(1, 1, 3\)"):
        simple(torch.zeros(4, 1, 2), torch.zeros(2, 1, 3))
    with pytest.raises(ValueError, match="expects input of shape"):
        simple(torch.zeros(4))


def test_public_names():
    assert "rnn" in gg.__all__
    for name in gg.rnn.__all__:
        assert hasattr(gg.rnn, name), name
    assert gg.rnn.SimpleRNN(2, 3).weight_hh.shape == (3, 3)
