"""Clippers in every dtype and at extreme scales: against a naive float64 reference, and
``norm_after`` against a re-measurement of the clipped gradients.

Tolerances are the dtype's rounding and nothing more: a relative error of a few ulps of the
gradient's dtype (the clipped value is rounded into it once), an absolute error of its smallest
subnormal per element, and for norms the float32 (float64) floor sqrt(n * tiny) below which the
squares of the norm pass underflow, as in torch.linalg.vector_norm.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import gradguard as gg
from gradguard._grads import stat_dtype

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}
# Element scales per dtype, up to where the float32 statistics of a few hundred elements stay
# finite: 3e4 is near fp16's largest value (65504), 1e-30 is far below fp16's range but a normal
# float32, whose squares underflow.
SCALES = {
    torch.float16: [1e-4, 1.0, 3e4],
    torch.bfloat16: [1e-30, 1.0, 3e4, 1e15],
    torch.float32: [1e-30, 1e-8, 1.0, 3e4, 1e15],
    torch.float64: [1e-30, 1.0, 1e15, 1e100],
}

shapes = st.lists(st.lists(st.integers(1, 8), min_size=1, max_size=3).map(tuple), min_size=1, max_size=4)


@st.composite
def cases(draw):
    dtype = DTYPES[draw(st.sampled_from(sorted(DTYPES)))]
    scale = draw(st.sampled_from(SCALES[dtype]))
    return dtype, scale, draw(shapes), draw(st.integers(0, 10_000))


def make(dtype, scale, shape_list, seed, weight_scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i, shape in enumerate(shape_list):
        p = nn.Parameter((torch.randn(shape, generator=gen, dtype=torch.float64) * weight_scale).to(dtype))
        # uniform in [-scale, scale]: 3e4-scale fp16 never overflows to inf by itself
        p.grad = ((torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * scale).to(dtype)
        out.append((f"layer{i}.weight", p))
    return out


def ulp(dtype) -> float:
    return torch.finfo(dtype).eps


def subnormal(dtype) -> float:
    return torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps


def norm_floor(n: int, dtype) -> float:
    """Below this the squares in the norm pass underflow (in the statistics' dtype)."""
    return math.sqrt(n * torch.finfo(stat_dtype(dtype)).tiny)


def f64_norm(tensors, p: float = 2.0) -> float:
    if math.isinf(p):
        return max((float(t.double().abs().max()) for t in tensors if t.numel()), default=0.0)
    return sum(float(t.double().abs().pow(p).sum()) for t in tensors) ** (1.0 / p)


def assert_close_to_reference(named, reference, dtype):
    for (name, p), want in zip(named, reference):
        got = p.grad.double()
        tol = 4 * ulp(dtype) * want.abs() + subnormal(dtype)
        bad = (got - want).abs() > tol
        assert not bad.any(), f"{name} ({dtype}): got {got[bad][:3].tolist()}, reference {want[bad][:3].tolist()}"


def assert_norm_after_is_measured(named, stats, dtype, norm_type=2.0):
    n = sum(p.numel() for _, p in named)
    measured = f64_norm([p.grad for _, p in named], norm_type)
    reported = float(stats.norm_after)
    assert math.isfinite(reported)
    # each element was rounded once into the gradient's dtype; the norm is kept in float32 or wider
    tol = 4 * ulp(dtype) * measured + math.sqrt(n) * subnormal(dtype) + norm_floor(n, dtype) + 1e-6 * measured * (dtype != torch.float64)
    assert abs(reported - measured) <= tol, f"norm_after {reported} but the clipped gradients measure {measured} ({dtype})"


def assert_norm_before(named_ref, stats, dtype, norm_type=2.0):
    n = sum(t.numel() for t in named_ref)
    want = f64_norm(named_ref, norm_type)
    rel = 1e-12 if dtype == torch.float64 else 1e-5
    assert abs(float(stats.norm_before) - want) <= rel * want + norm_floor(n, dtype)


@settings(max_examples=80, deadline=None)
@given(case=cases(), ratio=st.sampled_from([0.01, 0.5, 2.0]), p=st.sampled_from([1.0, 2.0, math.inf]))
def test_clipnorm_matches_float64_reference(case, ratio, p):
    dtype, scale, shape_list, seed = case
    named = make(dtype, scale, shape_list, seed)
    originals = [p_.grad.double().clone() for _, p_ in named]
    total = f64_norm(originals, p)
    max_norm = max(ratio * total, 1e-300)
    stats = gg.ClipNorm(max_norm, p)(named)
    coef = min(1.0, max_norm / (total + 1e-6))
    assert_norm_before(originals, stats, dtype, p)
    assert_close_to_reference(named, [g * coef for g in originals], dtype)
    assert_norm_after_is_measured(named, stats, dtype, p)


@settings(max_examples=80, deadline=None)
@given(case=cases(), ratio=st.sampled_from([0.01, 0.5, 2.0]), p=st.sampled_from([1.0, 2.0, math.inf]))
def test_clip_tensor_norm_matches_float64_reference(case, ratio, p):
    dtype, scale, shape_list, seed = case
    named = make(dtype, scale, shape_list, seed)
    originals = [p_.grad.double().clone() for _, p_ in named]
    # A bound below the statistics' underflow floor cannot be told apart from a zero norm in
    # that dtype (ClipTensorNorm documents it); bounds are drawn above it.
    floor = norm_floor(max(g.numel() for g in originals), dtype)
    max_norm = ratio * max(f64_norm(originals, p), floor)
    stats = gg.ClipTensorNorm(max_norm, p)(named)
    reference = [g * min(1.0, max_norm / f64_norm([g], p)) if f64_norm([g], p) > 0 else g for g in originals]
    assert_norm_before(originals, stats, dtype, p)
    assert_close_to_reference(named, reference, dtype)
    assert_norm_after_is_measured(named, stats, dtype, p)


@settings(max_examples=80, deadline=None)
@given(case=cases(), ratio=st.sampled_from([0.01, 0.5, 2.0]))
def test_clip_value_matches_float64_reference(case, ratio):
    dtype, scale, shape_list, seed = case
    named = make(dtype, scale, shape_list, seed)
    originals = [p.grad.double().clone() for _, p in named]
    clip = ratio * scale
    stats = gg.ClipValue(clip)(named)
    assert_close_to_reference(named, [g.clamp(-clip, clip) for g in originals], dtype)
    assert_norm_after_is_measured(named, stats, dtype)


@settings(max_examples=80, deadline=None)
@given(case=cases(), clipping=st.sampled_from([1e-3, 0.01, 0.5]), eps=st.sampled_from([0.0, 1e-3]), weight_scale=st.sampled_from([1e-3, 1.0]))
def test_agc_matches_float64_reference(case, clipping, eps, weight_scale):
    dtype, scale, shape_list, seed = case
    named = make(dtype, scale, shape_list, seed, weight_scale)
    originals = [p.grad.double().clone() for _, p in named]
    reference = []
    for (_, p), g in zip(named, originals):
        w = p.detach().double()
        dims = tuple(range(1, g.ndim))
        g_norm = g.norm() if g.ndim <= 1 else g.norm(dim=dims, keepdim=True)
        w_norm = w.norm() if w.ndim <= 1 else w.norm(dim=dims, keepdim=True)
        bound = clipping * w_norm.clamp(min=eps)
        reference.append(torch.where(g_norm > bound, g * bound / g_norm.clamp(min=1e-6), g))
    stats = gg.AGC(clipping, eps=eps, exclude=())(named)
    assert_close_to_reference(named, reference, dtype)
    assert_norm_after_is_measured(named, stats, dtype)


# ------------------------------------------------------------ the defects, one by one
def test_agc_does_not_zero_3e4_scale_fp16_gradients():
    # factor 0.01 * 0.08 / 2.4e5 = 3.3e-9: 0 in fp16; the clipped elements, 1e-4, are normal fp16
    p = nn.Parameter(torch.full((4, 64), 1e-2, dtype=torch.float16))
    p.grad = torch.full((4, 64), 3e4, dtype=torch.float16)
    stats = gg.AGC(0.01, exclude=())([("w", p)])
    assert p.grad.abs().min() > 0, "every row became 0"
    assert float(stats.norm_after) == pytest.approx(float(p.grad.float().norm()), rel=1e-3)


def test_clip_tensor_norm_after_is_the_bound_for_large_fp16():
    p = nn.Parameter(torch.zeros(1000, dtype=torch.float16))
    p.grad = ((torch.rand(1000, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 3e4).half()
    stats = gg.ClipTensorNorm(1.0)([("w", p)])
    assert float(p.grad.double().norm()) == pytest.approx(1.0, rel=2e-3)
    assert float(stats.norm_after) == pytest.approx(float(p.grad.double().norm()), rel=2e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_tiny_factor_is_applied_in_float32_on_cuda(dtype):
    """A 0-dim float32 factor 2e-9 would be rounded to fp16 (to 0) by CUDA's mul_ of an fp16
    tensor; applied in float32 it survives. (CPU kernels read a 0-dim factor in float32 anyway.)"""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    p = nn.Parameter(torch.zeros(4, dtype=dtype, device="cuda"))
    p.grad = torch.full((4,), 3e4, dtype=dtype, device="cuda")
    g0 = float(p.grad[0])  # 3e4 rounded into the dtype
    gg.ClipNorm(1.2e-4)([("w", p)])
    want = g0 * 1.2e-4 / (2 * g0 + 1e-6)
    assert float(p.grad[0]) == pytest.approx(want, rel=ulp(dtype))


def test_agc_with_eps_zero_on_all_zero_gradients_is_not_clipped():
    p = nn.Parameter(torch.zeros(3, 4))
    p.grad = torch.zeros(3, 4)
    assert not bool(gg.AGC(eps=0.0, exclude=())([("w", p)]).clipped)


def test_clipnorm_on_all_zero_gradients_is_not_clipped():
    p = nn.Parameter(torch.zeros(3))
    p.grad = torch.zeros(3)
    assert not bool(gg.ClipNorm(1e-9)([("w", p)]).clipped)


@pytest.mark.parametrize("call", [lambda ps: gg.ClipNorm(1.0)(ps), lambda ps: gg.AGC()(ps), lambda ps: gg.ClipValue(1.0)(ps), lambda ps: gg.grad_norms(ps)])
def test_an_exhausted_generator_warns_as_torch_does(call):
    model = nn.Linear(2, 2)
    model(torch.randn(1, 2)).sum().backward()
    params = model.parameters()
    list(params)  # used up
    with pytest.warns(gg.GradGuardWarning, match="empty generator"):
        call(params)


def test_an_empty_list_is_taken_at_its_word():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert float(gg.ClipNorm(1.0)([]).norm_before) == 0.0


@pytest.mark.parametrize(
    "grad, error, match",
    [
        (torch.randn(3, dtype=torch.complex64), TypeError, "parameter 'w' has a complex gradient"),
        (torch.empty(3, device="meta"), ValueError, "parameter 'w' has a gradient on the meta device"),
    ],
)
@pytest.mark.parametrize("call", [lambda ps: gg.ClipNorm(1.0)(ps), lambda ps: gg.AGC(exclude=())(ps), lambda ps: gg.grad_norms(ps)])
def test_complex_and_meta_gradients_are_refused_clearly(grad, error, match, call):
    p = nn.Parameter(torch.empty_like(grad))
    p.grad = grad
    with pytest.raises(error, match=match):
        call([("w", p)])


@pytest.mark.parametrize("shape, per_row", [((37, 5), False), ((37, 5), True), ((200,), False)])
def test_wide_multiply_in_slices_equals_one_pass(monkeypatch, shape, per_row):
    """Large low-precision tensors are multiplied in float32 slices; the result is the same."""
    from gradguard._clipping import _base

    g = ((torch.rand(shape, generator=torch.Generator().manual_seed(1)) * 2 - 1) * 3e4).half()
    coef = torch.rand((shape[0],) + (1,) * (len(shape) - 1)) * 1e-6 if per_row else torch.tensor(3e-9)
    whole = g.clone()
    _base.mul_wide_(whole, coef)
    monkeypatch.setattr(_base, "WIDE_CHUNK", 16)
    sliced = g.clone()
    _base.mul_wide_(sliced, coef)
    assert torch.equal(whole, sliced)
    assert torch.equal(whole, (g.float() * coef).half())
