"""AutoClip and ZClip: true to their papers and packages, host and device paths agree, state checked."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import gradguard as gg
from gradguard._clipping import _adaptive

norm_lists = st.lists(st.floats(1e-6, 1e6), min_size=1, max_size=60)


@pytest.fixture(params=["host", "device"])
def path(request, monkeypatch):
    """Run a test on both paths: on CPU the device path is the one accelerators take."""
    if request.param == "device":
        monkeypatch.setattr(_adaptive, "_on_host", lambda total: False)
    return request.param


def feed(clip, norms, dtype=torch.float64):
    p = nn.Parameter(torch.zeros(1, dtype=dtype))
    out = []
    for g in norms:
        p.grad = torch.tensor([g], dtype=dtype)
        out.append(clip([("w", p)]))
    return out


# ---------------------------------------------------------------- AutoClip
@settings(max_examples=30, deadline=None)
@given(norms=norm_lists, percentile=st.floats(0, 100))
def test_autoclip_is_np_percentile_over_the_first_norms(norms, percentile):
    for force_device in (False, True):
        with pytest.MonkeyPatch.context() as mp:
            if force_device:
                mp.setattr(_adaptive, "_on_host", lambda total: False)
            stats = feed(gg.AutoClip(percentile), norms)
        for i, s in enumerate(stats):
            expected = np.percentile(np.array(norms[: i + 1]), percentile)
            assert s.threshold.item() == pytest.approx(expected, rel=1e-12), (force_device, i)


def test_autoclip_two_norms_exactly():
    (_, second) = feed(gg.AutoClip(50), [1.0, 10.0])
    assert second.threshold.item() == pytest.approx(5.5)


@settings(max_examples=20, deadline=None)
@given(norms=st.lists(st.floats(1e-3, 1e3), min_size=25, max_size=80), percentile=st.floats(0, 100))
def test_autoclip_after_the_exact_buffer_is_within_one_bin(norms, percentile):
    factor = 10 ** (1 / 200)
    stats = feed(gg.AutoClip(percentile, exact_samples=20), norms)
    for i, s in enumerate(stats):
        history = np.sort(np.array(norms[: i + 1]))
        r = percentile / 100 * (len(history) - 1)
        lo, hi = history[math.floor(r)], history[math.ceil(r)]
        if i < 20:
            assert s.threshold.item() == pytest.approx(np.percentile(history, percentile), rel=1e-12)
        else:
            assert lo / factor * (1 - 1e-9) <= s.threshold.item() <= hi * factor * (1 + 1e-9)


def test_autoclip_host_and_device_paths_agree_and_share_state(monkeypatch):
    rng = np.random.default_rng(0)
    norms = list(np.exp(rng.normal(0, 1, 40)))
    norms[7] = math.nan
    host = feed(gg.AutoClip(25, exact_samples=15), norms)
    monkeypatch.setattr(_adaptive, "_on_host", lambda total: False)
    device = feed(gg.AutoClip(25, exact_samples=15), norms)
    for h, d in zip(host, device):
        assert h.threshold.item() == pytest.approx(d.threshold.item(), rel=1e-12)
        assert bool(h.clipped) == bool(d.clipped)
    # a state written by one path continues identically on the other
    a = gg.AutoClip(25, exact_samples=15)
    monkeypatch.setattr(_adaptive, "_on_host", lambda total: True)
    feed(a, norms[:10])
    b = gg.AutoClip(25, exact_samples=15)
    b.load_state_dict(a.state_dict())
    monkeypatch.setattr(_adaptive, "_on_host", lambda total: False)
    rest_b = feed(b, norms[10:])
    assert [s.threshold.item() for s in rest_b] == pytest.approx([s.threshold.item() for s in host[10:]], rel=1e-12)


def test_autoclip_all_zero_gradients_are_not_clipped(path):
    clip = gg.AutoClip()
    p = nn.Parameter(torch.zeros(3))
    p.grad = torch.zeros(3)
    stats = clip([("w", p)])
    assert not bool(stats.clipped)
    assert torch.equal(p.grad, torch.zeros(3))


def test_autoclip_clips_gradients_to_the_threshold(path):
    clip = gg.AutoClip(0)
    feed(clip, [1.0])
    p = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    p.grad = torch.tensor([30.0, 40.0], dtype=torch.float64)
    stats = clip([("w", p)])
    assert bool(stats.clipped) and stats.norm_after.item() == pytest.approx(1.0, rel=1e-5)
    assert p.grad.norm().item() == pytest.approx(stats.norm_after.item(), rel=1e-12)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s["histogram"]["counts"].__setitem__(3, math.nan), "finite and >= 0; bin 3 holds nan"),
        (lambda s: s["histogram"]["counts"].__setitem__(5, -2.0), "bin 5 holds -2.0"),
        (lambda s: s.update(exact=torch.tensor([3.0, 1.0], dtype=torch.float64)), "ascending order"),
        (lambda s: s.update(exact=s["exact"][:1]), "holds 1 norms, but the histogram counts 2"),
        (lambda s: s.pop("exact"), "Missing keys: \\['exact'\\]"),
        (lambda s: s["histogram"].update(counts=torch.zeros(10)), "different histogram layout"),
    ],
)
def test_autoclip_load_state_dict_names_what_is_wrong(edit, message):
    clip = gg.AutoClip()
    feed(clip, [1.0, 2.0])
    state = clip.state_dict()
    edit(state)
    with pytest.raises(ValueError, match=message):
        gg.AutoClip().load_state_dict(state)


# ---------------------------------------------------------------- ZClip
def _package_zclip():
    return pytest.importorskip("zclip").ZClip


@pytest.mark.parametrize("kwargs", [{}, {"max_grad_norm": None}, {"max_grad_norm": 3.0, "warmup_steps": 5}, {"mode": "percentile", "max_grad_norm": None}])
def test_zclip_matches_the_zclip_package(kwargs, path):
    """Against the authors' package on a real model: defaults and clip-to-max_grad_norm warm-up included."""
    PackageZClip = _package_zclip()
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    scales = np.abs(rng.normal(1.0, 0.3, 80))
    scales[[35, 36, 60]] = [8.0, 25.0, 5.0]
    ours_model, their_model = nn.Linear(4, 3).double(), nn.Linear(4, 3).double()
    ours, theirs = gg.ZClip(**kwargs), PackageZClip(**kwargs)
    base = [torch.randn_like(p) for p in ours_model.parameters()]
    for s in scales:
        for m in (ours_model, their_model):
            for p, b in zip(m.parameters(), base):
                p.grad = b * float(s)
        ours(ours_model.named_parameters())
        theirs.step(their_model)
        for p, q in zip(ours_model.parameters(), their_model.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=0)


def test_zclip_clips_to_max_grad_norm_during_warm_up(path):
    stats = feed(gg.ZClip(), [5.0, 0.5])
    assert stats[0].norm_after.item() == pytest.approx(1.0, rel=1e-5) and bool(stats[0].clipped)
    assert not bool(stats[1].clipped) and stats[1].threshold.item() == 1.0


def test_zclip_host_and_device_paths_agree(monkeypatch):
    rng = np.random.default_rng(2)
    norms = list(np.abs(rng.normal(1.0, 0.2, 60)))
    norms[30], norms[31], norms[40] = 9.0, math.nan, 20.0
    kwargs = {"warmup_steps": 5, "max_grad_norm": None}
    host = feed(gg.ZClip(**kwargs), norms)
    monkeypatch.setattr(_adaptive, "_on_host", lambda total: False)
    device = feed(gg.ZClip(**kwargs), norms)
    for h, d in zip(host, device):
        for field in ("norm_after", "threshold"):
            a, b = getattr(h, field).item(), getattr(d, field).item()
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12)
        assert bool(h.clipped) == bool(d.clipped)


def test_zclip_state_moves_between_paths(monkeypatch):
    norms = [1.0, 1.1, 0.9, 1.05, 0.95, 1.0, 7.0, 1.0]
    a = gg.ZClip(warmup_steps=4, max_grad_norm=None)
    feed(a, norms[:5])
    b = gg.ZClip(warmup_steps=4, max_grad_norm=None)
    b.load_state_dict(a.state_dict())
    expected = [s.norm_after.item() for s in feed(a, norms[5:])]
    monkeypatch.setattr(_adaptive, "_on_host", lambda total: False)
    assert [s.norm_after.item() for s in feed(b, norms[5:])] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.update(mean=torch.tensor(math.nan)), r"state\['mean'\] must be finite and >= 0, got nan"),
        (lambda s: s.update(mean=torch.zeros(3)), r"state\['mean'\] must have shape \(\), got \(3,\)"),
        (lambda s: s.update(var=torch.tensor(-1.0)), r"state\['var'\] must be finite and >= 0, got -1.0"),
        (lambda s: s.update(count=torch.tensor(2.5)), r"state\['count'\] must be an integer tensor"),
        (lambda s: s.update(count=torch.tensor(-1)), r"state\['count'\] must be finite and >= 0"),
        (lambda s: s.update(count=torch.tensor(99)), "more than this ZClip's warmup_steps=25"),
        (lambda s: s.update(buffer=torch.zeros(4)), "warm-up buffer of \\(4,\\)"),
        (lambda s: s.update(mean=1.0), r"state\['mean'\] must be a tensor, got float"),
        (lambda s: s.pop("var"), "Missing keys: \\['var'\\]"),
    ],
)
def test_zclip_load_state_dict_names_what_is_wrong(edit, message):
    clip = gg.ZClip()
    feed(clip, [1.0] * 30)
    state = clip.state_dict()
    edit(state)
    with pytest.raises(ValueError, match=message):
        gg.ZClip().load_state_dict(state)
