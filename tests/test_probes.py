"""The activation probe's statistics against a slow reference (autograd derivatives, one unit at a time)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gradguard import _reference as ref
from gradguard._probes._activations import ActivationProbe, measure, unit_extreme

BOUNDED = [nn.Tanh(), nn.Sigmoid(), nn.Softsign(), nn.Hardtanh(), nn.Hardtanh(-2.0, 0.5), nn.Hardsigmoid()]
RELU = [nn.ReLU(), nn.ReLU6(), nn.LeakyReLU(0.1), nn.ELU(), nn.GELU(), nn.SiLU()]
SHAPES = st.sampled_from([(7,), (5, 6), (4, 3, 9), (3, 4, 5, 5), (2, 6, 1, 1), (2, 3, 2, 2, 2)])


def _input(shape, seed, scale, shift):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * scale + shift
    # Some units always off, some values exactly on the hard functions' corners.
    if len(shape) >= 2:
        x.select(1 if len(shape) >= 4 else len(shape) - 1, 0).fill_(-1.0)
    x.view(-1)[:3] = torch.tensor([-3.0, 3.0, 6.0])[: x.numel()]
    return x


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(BOUNDED + RELU), SHAPES, st.integers(0, 2**16), st.sampled_from([0.5, 2.0, 5.0]), st.sampled_from([0.0, 1.5, -4.0]))
def test_statistics_match_the_reference(module, shape, seed, scale, shift):
    x = _input(shape, seed, scale, shift)
    got = {k: v.item() for k, v in measure(module, x, module(x)).items()}
    want = ref.activation_stats(module, x)
    assert got.keys() == want.keys()
    assert got["preact_mean"] == pytest.approx(want["preact_mean"], rel=1e-5, abs=1e-6)
    assert got["preact_std"] == pytest.approx(want["preact_std"], rel=1e-5, abs=1e-6)
    # Saturation may differ by an element sitting on the threshold (float32 against float64).
    tolerance = 1.0 / x.numel() + 1e-9
    for key in ("saturation", "dead_fraction"):
        if key in want:
            assert abs(got[key] - want[key]) <= (tolerance if key == "saturation" else 1e-6), (key, got[key], want[key])


@settings(max_examples=40, deadline=None)
@given(SHAPES, st.integers(0, 2**16), st.booleans())
def test_unit_extreme_reduces_every_dim_but_the_unit(shape, seed, largest):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    unit = 1 if x.ndim >= 4 else x.ndim - 1
    if x.ndim == 1:
        want = x
    else:
        moved = x.movedim(unit, 0).reshape(x.shape[unit], -1)
        want = moved.amax(1) if largest else moved.amin(1)
    assert torch.equal(unit_extreme(x, largest), want)


@pytest.mark.parametrize(
    "make",
    [lambda ip: nn.ReLU(inplace=ip), lambda ip: nn.LeakyReLU(0.2, inplace=ip), lambda ip: nn.ReLU6(inplace=ip),
     lambda ip: nn.Hardtanh(inplace=ip), lambda ip: nn.Hardsigmoid(inplace=ip), lambda ip: nn.ELU(inplace=ip), lambda ip: nn.SiLU(inplace=ip)],
)  # fmt: skip
def test_in_place_activations_report_what_their_out_of_place_twins_report(make):
    """An in-place activation overwrites its input before the forward hook runs; the probe must not
    report the output's statistics as the pre-activation's."""
    x = torch.randn(8, 4, 3, 3) * 4 + 0.5
    x[:, 0] = -1.0  # a dead channel
    results = []
    for in_place in (False, True):
        model = nn.Sequential(nn.Conv2d(4, 4, 1), make(in_place))
        with torch.no_grad():
            model[0].weight.copy_(torch.eye(4).reshape(4, 4, 1, 1))
            model[0].bias.zero_()
        probe = ActivationProbe(model)
        probe.arm()
        model(x)
        results.append({k: v["1"].item() for k, v in probe.values().items()})
        probe.disarm()
    plain, in_place = results
    assert plain.keys() == in_place.keys()
    for key in plain:
        assert in_place[key] == pytest.approx(plain[key], rel=1e-6, abs=1e-7), key
    assert plain["preact_mean"] == pytest.approx(x.mean().item(), rel=1e-5)


def test_the_probe_averages_a_module_called_twice():
    act = nn.Tanh()
    model = nn.Sequential(nn.Linear(3, 3), act)
    probe = ActivationProbe(model)
    probe.arm()
    a, b = torch.full((4, 3), 10.0), torch.zeros(4, 3)
    act(a), act(b)  # fully saturated, then not at all
    stats = probe.values()
    probe.disarm()
    assert stats["saturation"]["1"].item() == pytest.approx(0.5)
    assert not math.isnan(stats["preact_std"]["1"].item())


def test_float64_models_keep_errors_float32_would_round_to_zero():
    """A deep sigmoid net in float64 is how one sees errors of 1e-40; float32 statistics read 0."""
    from gradguard._probes._deltas import DeltaProbe

    layers = []
    for _ in range(40):
        layers += [nn.Linear(8, 8), nn.Sigmoid()]
    model = nn.Sequential(*layers).double()
    torch.manual_seed(0)
    probe = DeltaProbe(model)
    probe.arm()
    model(torch.randn(16, 8, dtype=torch.float64)).sum().backward()
    errors = {k: v.item() for k, v in probe.values()["error_norm"].items()}
    probe.disarm()
    first = errors[probe.forward_order[0]]
    assert 0.0 < first < 1e-24  # the squares (below 1e-48) underflow in float32
    assert errors[probe.forward_order[-1]] > 1e-3


@pytest.mark.parametrize("in_place", [False, True])
def test_float64_activations_keep_their_precision(in_place):
    model = nn.Sequential(nn.Identity(), nn.ReLU(inplace=in_place))
    probe = ActivationProbe(model)
    probe.arm()
    model(torch.full((4, 3), 1e-50, dtype=torch.float64))
    stats = probe.values()
    probe.disarm()
    assert stats["preact_mean"]["1"].dtype == torch.float64
    assert stats["preact_mean"]["1"].item() == pytest.approx(1e-50)


def test_a_probe_given_to_guard_gets_every_hook_and_a_nonfinite_step_arms_it():
    """The protocol seen from a probe: armed on step 1, its period and after a non-finite step
    (which it hears of through on_nonfinite), collected, disarmed, closed."""
    import gradguard as gg
    from gradguard._probes import Probe

    calls = []

    class Spy(Probe):
        name, period = "spy", 4

        def arm(self):
            calls.append(("arm",))

        def before_optimizer(self, ctx):
            calls.append(("before", ctx.step))

        def collect(self, ctx):
            calls.append(("collect", ctx.step))
            return {"spy_metric": (tuple(ctx.module_names), torch.ones(len(ctx.module_names)))}

        def on_nonfinite(self, ctx):
            calls.append(("nonfinite", ctx.step, tuple(ctx.nonfinite)))
            return True

        def close(self):
            calls.append(("close",))

    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    guard = gg.Guard(model, probes=["norms", Spy()], log_every=2, spike_z=None)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(1, 7):
        opt.zero_grad()
        model(torch.randn(8, 4)).pow(2).mean().backward()
        if step == 2:
            model[1].weight.grad.fill_(float("nan"))
        guard.step(opt)
    guard.close()
    collected = [c[1] for c in calls if c[0] == "collect"]
    assert collected == [1, 3, 4]  # step 1, the step after the skip (2 -> 3), and the period
    assert ("nonfinite", 2, ("1.weight",)) in calls and calls[-1] == ("close",)
    assert [s for s, _ in guard.recorder.records["spy_metric"]] == [1, 3, 4]
