"""Clipper invariants, equality with torch, and the naive references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import gradguard as gg
from gradguard import _reference as ref
from gradguard._clipping import CLIPPERS
from tests.conftest import clone_grads, named_with_grads

shapes = st.lists(st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple), min_size=1, max_size=5)


def grads_of(named):
    return [p.grad for _, p in named]


# ---------------------------------------------------------------- ClipNorm
@pytest.mark.parametrize("norm_type", [1.0, 2.0, 4.0, math.inf])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("max_norm", [0.05, 1.0, 1e3])
def test_clipnorm_equals_torch_bit_for_bit(norm_type, dtype, max_norm):
    ours = named_with_grads([(4, 3), (7,), (2, 2, 2)], dtype=dtype, seed=3)
    theirs = named_with_grads([(4, 3), (7,), (2, 2, 2)], dtype=dtype, seed=3)
    stats = gg.ClipNorm(max_norm, norm_type)(ours)
    total = torch.nn.utils.clip_grad_norm_([p for _, p in theirs], max_norm, norm_type)
    assert torch.equal(stats.norm_before, total)
    for (_, a), (_, b) in zip(ours, theirs):
        assert torch.equal(a.grad, b.grad)


@settings(max_examples=50, deadline=None)
@given(shapes=shapes, scale=st.floats(1e-3, 1e3), max_norm=st.floats(1e-2, 10.0), p=st.sampled_from([1.0, 2.0, math.inf]), seed=st.integers(0, 999))
def test_global_clipping_invariants(shapes, scale, max_norm, p, seed):
    named = named_with_grads(shapes, scale=scale, seed=seed, dtype=torch.float64)
    before = clone_grads(named)
    stats = gg.ClipNorm(max_norm, p)(named)
    after_norm = gg.grad_norms(named, p).total.item()
    # The post-clip norm is at most the threshold, and equal to it (up to the 1e-6 guard) when active.
    assert after_norm <= max_norm * (1 + 1e-12)
    assert after_norm == pytest.approx(stats.norm_after.item(), rel=1e-9)
    if bool(stats.clipped):
        t = stats.norm_before.item()
        assert after_norm == pytest.approx(max_norm * t / (t + 1e-6), rel=1e-9)
        assert after_norm == pytest.approx(max_norm, rel=1e-6 / max_norm)
        # One factor for every tensor: the direction is kept.
        ratios = torch.cat([(named_p.grad / before[n]).flatten() for n, named_p in named if before[n].abs().min() > 0])
        assert torch.allclose(ratios, ratios[0].expand_as(ratios), rtol=1e-12)
    else:
        for n, param in named:
            assert torch.equal(param.grad, before[n])  # untouched bit for bit below the threshold
    # Idempotent up to torch's 1e-6 guard: a clipped norm is M t / (t + 1e-6), a hair under M, and
    # a second pass scales by M / (that + 1e-6), within 1e-6 / M of 1. Unclipped stays bit-exact.
    snapshot = clone_grads(named)
    gg.ClipNorm(max_norm, p)(named)
    for n, param in named:
        torch.testing.assert_close(param.grad, snapshot[n], rtol=2e-6 / max_norm, atol=0)
        if not bool(stats.clipped):
            assert torch.equal(param.grad, snapshot[n])


def test_clipnorm_single_tensor_and_list_agree():
    a = named_with_grads([(5,)], seed=1)[0][1]
    b = named_with_grads([(5,)], seed=1)[0][1]
    gg.ClipNorm(0.1)(a)
    gg.ClipNorm(0.1)([b])
    assert torch.equal(a.grad, b.grad)


# ---------------------------------------------------------------- ClipTensorNorm
@settings(max_examples=40, deadline=None)
@given(shapes=shapes, scale=st.floats(1e-3, 1e3), max_norm=st.floats(1e-2, 10.0), seed=st.integers(0, 999))
def test_tensor_norm_matches_tf_clip_by_norm(shapes, scale, max_norm, seed):
    named = named_with_grads(shapes, scale=scale, seed=seed, dtype=torch.float64)
    before = clone_grads(named)
    stats = gg.ClipTensorNorm(max_norm)(named)
    for n, p in named:
        g = before[n]
        expected = g * max_norm / max(g.norm().item(), max_norm)  # tf.clip_by_norm
        torch.testing.assert_close(p.grad, expected, rtol=1e-12, atol=0)
        assert p.grad.norm().item() <= max_norm * (1 + 1e-12)
        if g.norm().item() <= max_norm:
            assert torch.equal(p.grad, g)
    assert stats.norm_after.item() == pytest.approx(gg.grad_norms(named).total.item(), rel=1e-9)
    assert bool(stats.clipped) == any(before[n].norm().item() > max_norm for n, _ in named)


# ---------------------------------------------------------------- ClipValue
@settings(max_examples=40, deadline=None)
@given(shapes=shapes, clip=st.floats(1e-2, 3.0), seed=st.integers(0, 999))
def test_value_matches_torch(shapes, clip, seed):
    ours = named_with_grads(shapes, seed=seed)
    theirs = named_with_grads(shapes, seed=seed)
    max_abs = max(p.grad.abs().max().item() for _, p in ours)
    stats = gg.ClipValue(clip)(ours)
    torch.nn.utils.clip_grad_value_([p for _, p in theirs], clip)
    for (_, a), (_, b) in zip(ours, theirs):
        assert torch.equal(a.grad, b.grad)
    assert bool(stats.clipped) == (max_abs > clip)
    assert stats.norm_after.item() == pytest.approx(gg.grad_norms(ours).total.item(), rel=1e-6)


# ---------------------------------------------------------------- AGC
def test_agc_matches_reference_and_excludes_head():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 6), nn.ReLU(), nn.Linear(6, 3))
    model(torch.randn(5, 2, 6, 6)).pow(2).sum().mul(100).backward()
    named = list(model.named_parameters())
    expected = ref.agc(named, 0.01, 1e-3, exclude=["4.*"])
    stats = gg.AGC()(model)  # default: the head (module "4") is left alone
    for n, p in named:
        torch.testing.assert_close(p.grad.double(), expected[n], rtol=1e-5, atol=1e-9)
    assert bool(stats.clipped)
    assert stats.norm_after.item() == pytest.approx(gg.grad_norms(model).total.item(), rel=1e-5)


def test_agc_exclude_patterns_and_zero_weights():
    p = nn.Parameter(torch.zeros(3, 4))  # zero-initialised: eps keeps its gradient from vanishing
    p.grad = torch.ones(3, 4)
    gg.AGC(clipping=0.5, eps=1e-3, exclude=())([("w", p)])
    torch.testing.assert_close(p.grad.norm(dim=1), torch.full((3,), 0.5e-3))
    q = nn.Parameter(torch.ones(3, 4))
    q.grad = torch.full((3, 4), 10.0)
    gg.AGC(exclude=["w*"])([("w", q)])
    assert torch.equal(q.grad, torch.full((3, 4), 10.0))


# ---------------------------------------------------------------- AutoClip
@settings(max_examples=40, deadline=None)
@given(norms=st.lists(st.floats(1e-6, 1e6), min_size=1, max_size=60), percentile=st.floats(0, 100))
def test_autoclip_threshold_within_one_bin_of_np_percentile(norms, percentile):
    clip = gg.AutoClip(percentile)
    p = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    factor = 10 ** (1 / 200)
    for i, g in enumerate(norms):
        p.grad = torch.tensor([g], dtype=torch.float64)
        stats = clip([("w", p)])
        history = np.sort(np.array(norms[: i + 1]))
        r = percentile / 100 * (len(history) - 1)
        lo, hi = history[math.floor(r)], history[math.ceil(r)]
        assert lo / factor * (1 - 1e-9) <= stats.threshold.item() <= hi * factor * (1 + 1e-9)


def test_autoclip_state_is_constant_size():
    clip = gg.AutoClip()
    p = nn.Parameter(torch.zeros(1))
    for g in torch.logspace(-3, 3, 500):
        p.grad = g.reshape(1).clone()
        clip([("w", p)])
    assert clip.state_dict()["histogram"]["counts"].shape == (4800,)
    assert clip.state_dict()["histogram"]["counts"].sum().item() == 500


# ---------------------------------------------------------------- ZClip
@pytest.mark.parametrize(
    "kwargs",
    [{"max_grad_norm": None}, {"warmup_steps": 5, "max_grad_norm": 3.0}, {"mode": "percentile", "warmup_steps": 4, "max_grad_norm": None}, {"clip_option": "mean", "clip_factor": 0.7, "warmup_steps": 6, "max_grad_norm": None}],
)
def test_zclip_matches_reference(kwargs):
    rng = np.random.default_rng(0)
    sequence = np.abs(rng.normal(1.0, 0.2, 120))
    sequence[[40, 41, 80]] = [9.0, 30.0, 6.0]  # spikes
    sequence[60] = np.nan  # must not enter the statistics
    ours, theirs = gg.ZClip(**kwargs), ref.ZClipReference(**kwargs)
    p = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    for g in sequence:
        p.grad = torch.tensor([g], dtype=torch.float64)
        after = ours([("w", p)]).norm_after.item()
        expected = theirs.step(float(g))
        if math.isfinite(expected):
            assert after == pytest.approx(expected, rel=1e-9)


# ---------------------------------------------------------------- all clippers
def make(name):
    needs = {"norm": {"max_norm": 1.0}, "tensor_norm": {"max_norm": 1.0}, "value": {"clip_value": 0.5}}
    extra = {"zclip": {"warmup_steps": 3}}
    return gg.make_clipper(name, **needs.get(name, {}), **extra.get(name, {}))


@pytest.mark.parametrize("name", sorted(CLIPPERS))
def test_nonfinite_norm_leaves_statistics_unchanged(name):
    clip = make(name)
    named = named_with_grads([(3, 2), (4,)], seed=0)
    for step in range(6):
        for _, p in named:
            p.grad = torch.randn_like(p) * (1 + step)
        clip(named)
    before = clip.state_dict()
    named[1][1].grad[0] = math.nan
    clip(named)
    after = clip.state_dict()
    assert _state_equal(before, after)


@pytest.mark.parametrize("name", sorted(CLIPPERS))
def test_state_dict_round_trip_continues_identically(name):
    a, b = make(name), make(name)
    gen = torch.Generator().manual_seed(1)
    sequence = [torch.randn(5, generator=gen) * s for s in (1, 2, 0.5, 8, 1, 1, 30, 0.1, 2, 3)]
    p = nn.Parameter(torch.zeros(5))
    for g in sequence[:5]:
        p.grad = g.clone()
        a([("w", p)])
    b.load_state_dict(a.state_dict())
    for g in sequence[5:]:
        p.grad = g.clone()
        sa = a([("w", p)]).norm_after
        p.grad = g.clone()
        sb = b([("w", p)]).norm_after
        assert torch.equal(sa, sb)


def _state_equal(x, y):
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(_state_equal(x[k], y[k]) for k in x)
    if isinstance(x, torch.Tensor):
        return torch.equal(x, y)
    return x == y


# ---------------------------------------------------------------- registry and arguments
def test_registry_names_aliases_and_typos():
    assert isinstance(gg.make_clipper("autoclip"), gg.AutoClip)
    assert isinstance(gg.make_clipper("ZClip"), gg.ZClip)
    assert isinstance(gg.make_clipper("global-norm", max_norm=2.0), gg.ClipNorm)
    with pytest.raises(ValueError, match="Did you mean 'autoclip'"):
        gg.make_clipper("autoclp")
    with pytest.raises(ValueError, match="needs 'max_norm'"):
        gg.make_clipper("norm")
    with pytest.raises(ValueError, match="does not take 'threshold'"):
        gg.make_clipper("zclip", threshold=3)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: gg.ClipNorm(-1), "max_norm must be > 0, got -1"),
        (lambda: gg.ClipNorm(1.0, norm_type=0), "norm_type"),
        (lambda: gg.ClipValue(float("nan")), "clip_value must be a finite number"),
        (lambda: gg.AutoClip(percentile=150), r"percentile must lie in \[0.0, 100.0\], got 150"),
        (lambda: gg.ZClip(alpha=1.5), r"alpha must lie in \(0.0, 1.0\)"),
        (lambda: gg.ZClip(mode="zscor"), "Did you mean 'zscore'"),
        (lambda: gg.AGC(clipping=0), "clipping must be > 0"),
    ],
)
def test_bad_arguments_say_what_was_received(build, match):
    with pytest.raises(ValueError, match=match):
        build()
