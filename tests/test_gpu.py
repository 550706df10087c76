"""On a CUDA device: no host sync on steps that log nothing, the device-side skip, fused norms.

Skipped where no GPU is present (CI has none); run on a GPU machine with
``PYTHONPATH=src python -m pytest tests/test_gpu.py``.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradguard as gg
from gradguard import _reference as ref

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def model_on_gpu(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)).cuda()


def batch(seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(32, 64, device="cuda", generator=gen), torch.randint(0, 10, (32,), device="cuda", generator=gen)


def step(model, guard, opt, seed, poison=False):
    x, y = batch(seed)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    if poison:
        model[2].weight.grad.view(-1)[0] = math.nan
    info = guard.step(opt, loss=loss)
    opt.zero_grad(set_to_none=True)
    return info


@pytest.mark.parametrize("clip", [None, 1.0, "autoclip", "zclip", gg.ClipTensorNorm(0.5)])
@pytest.mark.parametrize("nonfinite, fused", [("skip", True), ("ignore", False), ("ignore", True)])
def test_no_host_sync_on_steps_that_log_nothing(clip, nonfinite, fused):
    model = model_on_gpu()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused, foreach=None if fused else True)
    guard = gg.Guard(model, clip=clip, nonfinite=nonfinite, log_every=10, probe_every=10)
    for s in range(1, 13):  # warm up: caches, lazily created state, the first probe and flush steps
        step(model, guard, opt, s)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for s in range(13, 20):  # neither a flush (every 10) nor a probe step
            step(model, guard, opt, s)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    guard.close()
    assert len(guard.history) == 19


def test_device_side_skip_leaves_parameters_and_state_unchanged():
    model = model_on_gpu()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    guard = gg.Guard(model, clip=1.0, log_every=4, max_consecutive_skips=2)
    for s in range(1, 4):
        step(model, guard, opt, s)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = {k: {f: v.clone() for f, v in st.items()} for k, st in opt.state.items()}
    info = step(model, guard, opt, 4, poison=True)
    assert bool(info.skipped)
    for n, p in model.named_parameters():
        assert torch.equal(p, params[n]), n
    for k, st in opt.state.items():
        for f, v in st.items():
            assert torch.equal(v, state[k][f]), (f,)
    assert guard.skipped_steps == 1
    step(model, guard, opt, 5, poison=True)
    with pytest.raises(gg.NonFiniteGradientError, match=r"2\.weight"):
        for s in range(6, 10):
            step(model, guard, opt, s, poison=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("norm_type", [1.0, 2.0, math.inf])
def test_fused_norms_match_reference_on_cuda(dtype, norm_type):
    gen = torch.Generator(device="cuda").manual_seed(0)
    named = []
    for i, shape in enumerate([(33, 17), (1024,), (8, 3, 3, 3), (1,)]):
        p = nn.Parameter(torch.randn(shape, device="cuda", generator=gen).to(dtype))
        p.grad = torch.randn(shape, device="cuda", generator=gen).to(dtype)
        named.append((f"p{i}", p))
    norms = gg.grad_norms(named, norm_type)
    per, total = ref.norms_of(named, norm_type)
    for name, value in per.items():
        assert norms.per_tensor[name].item() == pytest.approx(value, rel=1e-3 if dtype != torch.float32 else 1e-5)
    assert norms.total.item() == pytest.approx(total, rel=1e-3 if dtype != torch.float32 else 1e-5)


def test_clipnorm_equals_torch_on_cuda():
    a, b = model_on_gpu(), model_on_gpu()
    x, y = batch(0)
    for m in (a, b):
        (nn.functional.cross_entropy(m(x), y) * 50).backward()
    stats = gg.ClipNorm(0.3)(a.parameters())
    total = torch.nn.utils.clip_grad_norm_(b.parameters(), 0.3)
    assert torch.equal(stats.norm_before, total)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa.grad, pb.grad)
