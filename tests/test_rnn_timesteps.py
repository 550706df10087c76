"""Per-time-step gradient norms of fused nn.RNN/LSTM/GRU against an unrolled torch-cell reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradguard as gg
from gradguard._errors import GradGuardError, GradGuardWarning

T, B, I, H = 6, 3, 3, 4

MODULES = {
    "rnn_tanh": lambda **kw: nn.RNN(I, H, nonlinearity="tanh", **kw),
    "rnn_relu": lambda **kw: nn.RNN(I, H, nonlinearity="relu", **kw),
    "lstm": lambda **kw: nn.LSTM(I, H, **kw),
    "gru": lambda **kw: nn.GRU(I, H, **kw),
}


def make(kind, seed=0, **kw):
    torch.manual_seed(seed)
    module = MODULES[kind](**kw).double()
    with torch.no_grad():  # weights large enough that the tanh/relu steps do not all look alike
        for p in module.parameters():
            p.mul_(2.0)
    return module


def make_input(module, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, I, generator=gen, dtype=torch.float64)
    return x.transpose(0, 1).contiguous() if module.batch_first else x


def _cell(module, layer, sfx):
    in_size = module.input_size if layer == 0 else H * (2 if module.bidirectional else 1)
    if isinstance(module, nn.LSTM):
        cell = nn.LSTMCell(in_size, H)
    elif isinstance(module, nn.GRU):
        cell = nn.GRUCell(in_size, H)
    else:
        cell = nn.RNNCell(in_size, H, nonlinearity=module.nonlinearity)
    cell = cell.double()
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(module, f"{name}_l{layer}{sfx}"))
    return cell


def cell_reference(module, x, loss_fn, state="h", hx=None):
    """Batch-mean total ||dL/dh_t|| of the last layer, from an unrolled RNNCell/LSTMCell/GRUCell stack.

    Every state is a separate tensor with retain_grad(), so its .grad after backward is the total
    derivative (direct plus through every later step).
    """
    lstm = isinstance(module, nn.LSTM)
    dirs = ("", "_reverse") if module.bidirectional else ("",)
    layer_in = x.transpose(0, 1) if module.batch_first else x
    h_n, c_n, last = [], [], None
    h0, c0 = hx if isinstance(hx, tuple) else (hx, None)
    for layer in range(module.num_layers):
        per_dir = []
        for d, sfx in enumerate(dirs):
            cell = _cell(module, layer, sfx)
            idx = layer * len(dirs) + d
            h = torch.zeros(B, H, dtype=torch.float64) if h0 is None else h0[idx]
            c = torch.zeros(B, H, dtype=torch.float64) if c0 is None else c0[idx]
            hs, cs = [None] * T, [None] * T
            for t in reversed(range(T)) if sfx else range(T):
                if lstm:
                    h, c = cell(layer_in[t], (h, c))
                    c.retain_grad()
                else:
                    h = cell(layer_in[t], h)
                h.retain_grad()
                hs[t], cs[t] = h, c
            per_dir.append((hs, cs))
            h_n.append(h)
            c_n.append(c)
        layer_in = torch.stack([torch.cat([hs[t] for hs, _ in per_dir], -1) for t in range(T)])
        last = per_dir
    out = layer_in.transpose(0, 1) if module.batch_first else layer_in
    final = (torch.stack(h_n), torch.stack(c_n)) if lstm else torch.stack(h_n)
    loss_fn(out, final).backward()
    squares = torch.zeros(T, B, dtype=torch.float64)
    for hs, cs in last:
        for t in range(T):
            if "h" in state:
                squares[t] += hs[t].grad.pow(2).sum(-1)
            if "c" in state:
                squares[t] += cs[t].grad.pow(2).sum(-1)
    return squares.sqrt().mean(1)


def _readout(width, seed=2):
    return torch.randn(width, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def loss_last(module):
    w = _readout(H * (2 if module.bidirectional else 1))
    last = (lambda out: out[:, -1]) if module.batch_first else (lambda out: out[-1])
    return lambda out, final: torch.sin(last(out) @ w).sum()


def loss_every(module):
    w = _readout(H * (2 if module.bidirectional else 1))
    return lambda out, final: (torch.tanh(out @ w) ** 2).sum() + 0.1 * out.sum()


def loss_final_state(module):
    def fn(out, final):
        h_n = final[0] if isinstance(final, tuple) else final
        extra = final[1].pow(2).sum() if isinstance(final, tuple) else 0.0
        return h_n[-1].pow(2).sum() + extra

    return fn


LOSSES = {"last": loss_last, "every": loss_every, "final_state": loss_final_state}


def measured(module, x, loss_fn, **kw):
    return gg.rnn.timestep_grad_norms(module, lambda: loss_fn(*module(x)), **kw)


@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("kind", list(MODULES))
def test_fused_modules_match_unrolled_cells(kind, batch_first, layers, loss):
    module = make(kind, num_layers=layers, batch_first=batch_first)
    x = make_input(module)
    fn = LOSSES[loss](module)
    got = measured(module, x, fn)
    want = cell_reference(module, x, fn)
    assert got.shape == (T,)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    if loss == "last" and kind != "rnn_relu":  # relu units may be dead: zero is then right
        # The fused kernel hands only the direct part to its output: zero before T. The total is not.
        assert (got[:-1] > 0).all()


@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("kind", list(MODULES))
def test_bidirectional_concatenates_both_directions(kind, layers, loss):
    module = make(kind, seed=3, num_layers=layers, bidirectional=True)
    x = make_input(module)
    fn = LOSSES[loss](module)
    torch.testing.assert_close(measured(module, x, fn), cell_reference(module, x, fn), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", list(MODULES))
def test_initial_states_of_a_stacked_bidirectional_module(kind):
    module = make(kind, seed=13, num_layers=2, bidirectional=True, batch_first=True)
    x = make_input(module)
    gen = torch.Generator().manual_seed(14)
    h0 = torch.randn(4, B, H, generator=gen, dtype=torch.float64)
    hx = (h0, torch.randn(4, B, H, generator=gen, dtype=torch.float64)) if kind == "lstm" else h0
    fn = loss_every(module)
    got = gg.rnn.timestep_grad_norms(module, lambda: fn(*module(x, hx)))
    torch.testing.assert_close(got, cell_reference(module, x, fn, hx=hx), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("state", ["c", "hc"])
def test_lstm_cell_state(state):
    module = make("lstm", seed=4, num_layers=2)
    x = make_input(module)
    fn = loss_every(module)
    torch.testing.assert_close(measured(module, x, fn, state=state), cell_reference(module, x, fn, state=state), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("nonlinearity", ["tanh", "sigmoid", "relu", "identity"])
def test_simple_rnn_matches_its_own_retained_states(nonlinearity, batch_first):
    torch.manual_seed(5)
    rnn = gg.rnn.SimpleRNN(I, H, nonlinearity=nonlinearity, batch_first=batch_first).double()
    x = make_input(rnn)
    w = _readout(H)
    pick = (lambda out: out[:, -1]) if batch_first else (lambda out: out[-1])
    got = gg.rnn.timestep_grad_norms(rnn, lambda: torch.sin(pick(rnn(x)[0]) @ w).sum())

    # Reference: SimpleRNN's own loop, every state kept with retain_grad().
    xs = x.transpose(0, 1) if batch_first else x
    h, states = torch.zeros(B, H, dtype=torch.float64), []
    for t in range(T):
        h = rnn.step(xs[t] @ rnn.weight_ih.T + rnn.bias, h)
        h.retain_grad()
        states.append(h)
    torch.sin(states[-1] @ w).sum().backward()
    want = torch.stack([s.grad.norm(dim=-1).mean() for s in states])
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_unbatched_input_and_initial_state():
    module = make("lstm", seed=6)
    x = make_input(module)[:, 0]  # (T, I): unbatched
    h0 = (torch.randn(1, H, dtype=torch.float64), torch.randn(1, H, dtype=torch.float64))
    got = gg.rnn.timestep_grad_norms(module, lambda: module(x, h0)[0][-1].pow(2).sum())

    cell = _cell(module, 0, "")
    h, c, hs = h0[0], h0[1], []
    for t in range(T):
        h, c = cell(x[t : t + 1], (h, c))
        h.retain_grad()
        hs.append(h)
    hs[-1].pow(2).sum().backward()
    torch.testing.assert_close(got, torch.stack([s.grad.norm() for s in hs]), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "module",
    [
        nn.LSTM(I, H, num_layers=2, proj_size=2, bidirectional=True),
        nn.GRU(I, H, num_layers=3, bidirectional=True, batch_first=True),
        nn.RNN(I, H, num_layers=2, nonlinearity="relu", bidirectional=True),
    ],
    ids=["lstm_proj", "gru_3_layers", "rnn_relu"],
)
def test_replay_reproduces_the_fused_forward(module):
    """The replayed last-layer states are the module's own outputs (projection, reverse direction included)."""
    from gradguard.rnn._timesteps import Capture, replay

    module = module.double()
    x = make_input(module)
    out, _ = module(x)
    cap = Capture(seen=True, calls=1, input=x, batched=True, grads={"output": torch.ones_like(out)})
    out = out.transpose(0, 1) if module.batch_first else out
    rep = replay(module, cap)
    last = rep.spec.num_layers - 1
    states = torch.cat([rep.states[(last, d)][0] for d in range(2)], -1)
    torch.testing.assert_close(states, out.detach(), rtol=1e-10, atol=1e-12)


# -- the probe's life cycle ------------------------------------------------------------------


def test_probe_costs_nothing_while_disarmed_and_matches_the_closure_path():
    module = make("gru", seed=7)
    x = make_input(module)
    fn = loss_every(module)
    probe = gg.rnn.TimestepProbe(module)
    assert not module._forward_hooks and not probe.armed
    probe.arm()
    assert len(module._forward_hooks) == 1
    with torch.no_grad():
        module(x)  # an evaluation pass is ignored
    assert not probe.ready
    fn(*module(x)).backward()
    assert probe.ready
    grads = {n: p.grad.clone() for n, p in module.named_parameters()}
    norms = probe.collect()
    assert not module._forward_hooks and not probe.armed
    for n, p in module.named_parameters():
        assert torch.equal(p.grad, grads[n]), "collect() must not touch .grad"
    module.zero_grad()
    torch.testing.assert_close(norms, measured(module, x, fn))


def test_probe_rearmed_every_step_follows_training():
    module = make("lstm", seed=8, batch_first=True)
    opt = torch.optim.SGD(module.parameters(), lr=0.5)
    x = make_input(module)
    fn = loss_last(module)
    probe = gg.rnn.TimestepProbe(module)
    seen = []
    for _ in range(3):
        probe.arm()
        fn(*module(x)).backward()
        seen.append(probe.collect())
        torch.testing.assert_close(seen[-1], cell_reference(module, x, fn), rtol=1e-9, atol=1e-12)
        opt.step()
        opt.zero_grad()
    probe.close()
    assert not torch.allclose(seen[0], seen[2])


def test_probe_errors_and_warnings():
    module = make("rnn_tanh", seed=9)
    x = make_input(module)
    probe = gg.rnn.TimestepProbe(module)
    with pytest.raises(GradGuardError, match="not armed"):
        probe.collect()
    probe.arm()
    with pytest.raises(GradGuardError, match="not called with gradients enabled"):
        probe.collect()
    probe.arm()
    module(x)
    with pytest.raises(GradGuardError, match="after loss.backward"):
        probe.collect()
    probe.arm()
    a, _ = module(x)
    b, _ = module(x)
    (a.sum() + b.sum()).backward()
    with pytest.warns(GradGuardWarning, match="ran 2 times"):
        probe.collect()
    with pytest.raises(ValueError, match="needs an nn.LSTM"):
        gg.rnn.TimestepProbe(module, state="c")
    with pytest.raises(ValueError, match="'h', 'c', 'hc'"):
        gg.rnn.TimestepProbe(make("lstm"), state="cell")
    with pytest.raises(TypeError, match="SimpleRNN, torch.nn.RNN"):
        gg.rnn.TimestepProbe(nn.Linear(2, 2))


def test_dropout_between_layers_is_flagged():
    module = make("lstm", seed=10, num_layers=2, dropout=0.5)
    x = make_input(module)
    with pytest.warns(GradGuardWarning, match="dropout"):
        measured(module, x, loss_every(module))
    module.eval()
    measured(module, x, loss_every(module))  # no dropout at evaluation: no warning


def test_packed_sequences_are_refused_clearly():
    module = make("gru", seed=11)
    x = make_input(module)
    packed = nn.utils.rnn.pack_padded_sequence(x, [T, T - 1, 2], enforce_sorted=False)
    with pytest.raises(TypeError, match="PackedSequence"):
        gg.rnn.timestep_grad_norms(module, lambda: module(packed)[1].sum())


# -- timestep_grad_norms leaves the model as it was -----------------------------------------


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(I, I)
        self.norm = nn.BatchNorm1d(I)
        self.rnn = nn.LSTM(I, H, batch_first=True)
        self.head = nn.Linear(H, 2)

    def forward(self, x):
        z = self.norm(self.embed(x).transpose(1, 2)).transpose(1, 2)
        out, _ = self.rnn(z)
        return self.head(out[:, -1])


@pytest.mark.parametrize("closure_calls_backward", [False, True])
def test_model_state_is_left_as_it_was(closure_calls_backward):
    torch.manual_seed(12)
    model = Tagger().double()
    x = torch.randn(B, T, I, dtype=torch.float64)
    y = torch.tensor([0, 1, 1])
    nn.functional.cross_entropy(model(x), y).backward()  # pre-existing gradients
    before_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    before_bufs = {n: b.clone() for n, b in model.named_buffers()}
    before_params = {n: p.detach().clone() for n, p in model.named_parameters()}

    def closure():
        loss = nn.functional.cross_entropy(model(x), y)
        if closure_calls_backward:
            loss.backward()
        return loss

    norms = gg.rnn.timestep_grad_norms(model, closure)
    assert norms.shape == (T,) and bool(torch.isfinite(norms).all()) and (norms > 0).all()
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, before_grads[n]), n
        assert torch.equal(p.detach(), before_params[n]), n
    for n, b in model.named_buffers():
        assert torch.equal(b, before_bufs[n]), n
    assert not model.rnn._forward_hooks
    # Both ways to get the output gradient give the same numbers.
    other = gg.rnn.timestep_grad_norms(model, lambda: nn.functional.cross_entropy(model(x), y), module="rnn")
    torch.testing.assert_close(norms, other)


def test_module_lookup_errors():
    model = Tagger()
    with pytest.raises(ValueError, match="Did you mean 'rnn'"):
        gg.rnn.timestep_grad_norms(model, lambda: model(torch.randn(2, T, I)).sum(), module="rn")
    with pytest.raises(TypeError, match="SimpleRNN, torch.nn.RNN"):
        gg.rnn.timestep_grad_norms(model, lambda: model(torch.randn(2, T, I)).sum(), module="head")
    with pytest.raises(ValueError, match="no recurrent module"):
        gg.rnn.timestep_grad_norms(nn.Linear(2, 2), lambda: torch.zeros(()))
    with pytest.raises(TypeError, match="scalar loss"):
        gg.rnn.timestep_grad_norms(model, lambda: model(torch.randn(2, T, I)))
