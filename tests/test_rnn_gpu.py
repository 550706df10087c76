"""cuDNN-fused recurrent modules: per-step norms by replay, and no host synchronisation while armed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradguard as gg

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

T, B, I, H = 40, 8, 5, 32


def _module(kind, **kw):
    torch.manual_seed(0)
    return {"rnn": lambda: nn.RNN(I, H, **kw), "lstm": lambda: nn.LSTM(I, H, **kw), "gru": lambda: nn.GRU(I, H, **kw)}[kind]()


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_cudnn_modules_match_a_float64_cpu_reference(kind):
    """The same per-step norms from the cuDNN module (float32) and from its float64 copy on the CPU."""
    cpu = _module(kind, num_layers=2, bidirectional=True, batch_first=True).double()
    gpu = _module(kind, num_layers=2, bidirectional=True, batch_first=True).cuda()
    x = torch.randn(B, T, I, dtype=torch.float64)
    w = torch.randn(2 * H, dtype=torch.float64)
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # compare float32 with float64, not TF32
    try:
        got = gg.rnn.timestep_grad_norms(gpu, lambda: torch.sin(gpu(x.float().cuda())[0][:, -1] @ w.float().cuda()).sum())
    finally:
        torch.backends.cudnn.allow_tf32 = old
    want = gg.rnn.timestep_grad_norms(cpu, lambda: torch.sin(cpu(x)[0][:, -1] @ w).sum())
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu().double(), want, rtol=2e-4, atol=1e-7)


def test_armed_probe_never_synchronises_with_the_host():
    module = _module("lstm", num_layers=2).cuda()
    head = nn.Linear(H, 1).cuda()
    x = torch.randn(T, B, I, device="cuda")
    probe = gg.rnn.TimestepProbe(module)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            probe.arm()
            out, _ = module(x)
            head(out[-1]).pow(2).mean().backward()
            norms = probe.collect()  # the replay itself stays on the device too
    finally:
        torch.cuda.set_sync_debug_mode(0)
    probe.close()
    assert norms.shape == (T,) and norms.device.type == "cuda"
    assert bool(torch.isfinite(norms).all())
