"""The fused norm pass against the one-tensor-at-a-time reference."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import gradguard as gg
from gradguard import _reference as ref
from gradguard._grads import CachedCollector, collect_named
from gradguard._norms import module_of
from tests.conftest import named_with_grads

shapes = st.lists(st.lists(st.integers(1, 7), min_size=0, max_size=3).map(tuple), min_size=1, max_size=6)
norm_types = st.sampled_from([1.0, 2.0, 3.0, 0.5, math.inf])
dtypes = st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16])

# Relative tolerance per gradient dtype: the reference sees the same (rounded) values in float64,
# the fast path accumulates in float32 for low-precision gradients.
RTOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-3}


@settings(max_examples=60, deadline=None)
@given(shapes=shapes, p=norm_types, dtype=dtypes, seed=st.integers(0, 10_000))
def test_fast_path_matches_reference(shapes, p, dtype, seed):
    named = named_with_grads(shapes, dtype=dtype, seed=seed)
    norms = gg.grad_norms(named, p)
    per, total = ref.norms_of(named, p)
    assert list(norms.per_tensor) == list(per)
    for name, value in per.items():
        assert norms.per_tensor[name].item() == pytest.approx(value, rel=RTOL[dtype], abs=1e-30)
    assert norms.total.item() == pytest.approx(total, rel=RTOL[dtype] * 4)
    assert norms.nonfinite == []
    assert bool(norms.finite)


@settings(max_examples=40, deadline=None)
@given(shapes=shapes, seed=st.integers(0, 10_000), bad=st.sampled_from([math.nan, math.inf, -math.inf]), data=st.data())
def test_nonfinite_read_off_the_norms(shapes, seed, bad, data):
    named = named_with_grads(shapes, seed=seed)
    victims = data.draw(st.sets(st.integers(0, len(named) - 1), min_size=1))
    for i in victims:
        g = named[i][1].grad.view(-1)
        g[data.draw(st.integers(0, g.numel() - 1))] = bad
    norms = gg.grad_norms(named, data.draw(norm_types))
    assert sorted(norms.nonfinite) == sorted(named[i][0] for i in victims)
    assert not bool(norms.finite)


def test_mixed_dtypes_keep_parameter_order():
    named = named_with_grads([(3,), (4, 2), (5,), (2, 2)], seed=1)
    named[1] = named_with_grads([(4, 2)], dtype=torch.float64, seed=2, names=["b.weight"])[0]
    named[3] = named_with_grads([(2, 2)], dtype=torch.float16, seed=3, names=["d.weight"])[0]
    norms = gg.grad_norms(named)
    per, total = ref.norms_of(named)
    for name, value in per.items():
        assert norms.per_tensor[name].item() == pytest.approx(value, rel=1e-3)
    assert norms.total.item() == pytest.approx(total, rel=1e-4)


def test_fp16_norm_does_not_overflow():
    # 4096 elements of 2000 have a norm of 128000, above fp16's 65504: an fp16 accumulator says inf.
    p = nn.Parameter(torch.zeros(4096, dtype=torch.float16))
    p.grad = torch.full((4096,), 2000.0, dtype=torch.float16)
    norms = gg.grad_norms([("w", p)])
    assert norms.total.item() == pytest.approx(128000.0, rel=1e-3)
    assert norms.nonfinite == []


def test_groupings_match_reference():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)))
    model(torch.randn(5, 3)).sum().backward()
    named = list(model.named_parameters())
    norms = gg.grad_norms(model)
    per, _ = ref.norms_of(named)
    for depth in (None, 1):
        expected = ref.group_of([n for n, _ in named], lambda n: module_of(n, depth), per, 2.0)
        got = norms.by_module(depth)
        assert list(got) == list(expected)
        for key in expected:
            assert got[key].item() == pytest.approx(expected[key], rel=1e-5)
    patterns = {"weights": "*.weight", "first": "0.*"}
    got = norms.by_pattern(patterns)
    # "first" only catches 0.bias (0.weight matched "weights" first); the other biases fall in "(other)".
    assert set(got) == {"weights", "first", "(other)"}
    assert got["first"].item() == pytest.approx(per["0.bias"], rel=1e-6)


def test_inputs_accepted_and_rejected():
    named = named_with_grads([(3,)])
    p = named[0][1]
    assert gg.grad_norms(p).total.item() == gg.grad_norms([p]).total.item() == gg.grad_norms({"w": p}).total.item()
    with pytest.raises(TypeError, match="named_parameters"):
        gg.grad_norms([("w", p), 3])
    with pytest.raises(ValueError, match="norm_type"):
        gg.grad_norms(named, -1)
    with pytest.raises(TypeError, match="sparse"):
        emb = nn.Embedding(10, 3, sparse=True)
        emb(torch.tensor([1, 2])).sum().backward()
        gg.grad_norms(emb)


def test_no_gradients_gives_zero():
    model = nn.Linear(2, 2)
    norms = gg.grad_norms(model)
    assert norms.total.item() == 0.0 and norms.per_tensor == {} and norms.nonfinite == []


@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.integers(1, 6), min_size=0, max_size=4).map(tuple), seed=st.integers(0, 1000))
def test_unitwise_norm_matches_rows(shape, seed):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    fast = gg.unitwise_norm(x)
    slow = ref.unitwise(x)
    torch.testing.assert_close(fast, slow)


# ---------------------------------------------------------------- Guard's cached collector
_EVENTS = st.sampled_from(["backward", "drop_grad", "freeze_grad_of_bias", "cast_double", "cast_float", "sparse_grad", "duplicate"])


@settings(max_examples=40, deadline=None)
@given(st.lists(_EVENTS, min_size=1, max_size=12), st.integers(0, 2**16))
def test_cached_collector_agrees_with_collect_named_through_changes(events, seed):
    """Whatever happens to the parameters between steps, the cache gives what a fresh collection gives."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    collector = CachedCollector()
    duplicated = []

    def named():
        # A parameter listed twice (tied weights seen under two names) is dropped by collect_named.
        return list(model.named_parameters()) + [("tied", model[0].weight)] * len(duplicated)

    for event in ["backward", *events]:
        if event == "backward":
            model.zero_grad(set_to_none=True)
            dtype = next(model.parameters()).dtype
            model(torch.randn(5, 3, dtype=dtype)).square().sum().backward()
        elif event == "drop_grad":
            model[0].weight.grad = None
        elif event == "freeze_grad_of_bias":
            model[2].bias.grad = None
        elif event == "cast_double":
            model.double()
        elif event == "cast_float":
            model.float()
        elif event == "duplicate":
            duplicated.append(True)
        elif event == "sparse_grad":
            w = model[0].bias
            w.grad = torch.zeros_like(w).to_sparse()
        try:
            want = collect_named(named())
        except TypeError as err:  # a sparse gradient: the cache must raise the same error
            with pytest.raises(TypeError, match="sparse"):
                collector(named())
            assert "sparse" in str(err)
            model[0].bias.grad = None
            continue
        got = collector(named())
        assert got.names == want.names
        assert all(a is b for a, b in zip(got.params, want.params)) and len(got.params) == len(want.params)
        assert all(a is b for a, b in zip(got.grads, want.grads)) and len(got.grads) == len(want.grads)
        assert got.groups == want.groups


def test_cached_collector_reuses_the_plan_between_steps():
    model = torch.nn.Linear(3, 2)
    collector = CachedCollector()
    model(torch.randn(4, 3)).sum().backward()
    first = collector(list(model.named_parameters()))
    model.zero_grad(set_to_none=True)
    model(torch.randn(4, 3)).sum().backward()
    second = collector(list(model.named_parameters()))
    assert second.names is first.names and second.groups is first.groups  # reused, not rebuilt
    assert second.grads[0] is model.weight.grad


def test_cached_collector_does_not_keep_old_gradients_alive():
    """Holding the first step's gradients would keep a second copy of every gradient in memory."""
    import weakref

    model = torch.nn.Linear(3, 2)
    collector = CachedCollector()
    model(torch.randn(4, 3)).sum().backward()
    collector(list(model.named_parameters()))
    first = weakref.ref(model.weight.grad)
    model.zero_grad(set_to_none=True)
    model(torch.randn(4, 3)).sum().backward()
    collector(list(model.named_parameters()))
    assert first() is None
