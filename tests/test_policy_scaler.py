"""The consecutive-skip limit under a GradScaler: calibration (a scale started too high backing
off) never stops a healthy run; a real fault still does, once the scale is at 1 or below."""

import math

import pytest
import torch
from torch import nn

import gradguard as gg


def _amp_run(init_scale: float, steps: int, nan_from: int | None = None, **guard_kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    guard = gg.Guard(model, scaler=scaler, **guard_kwargs)
    data = torch.Generator().manual_seed(1)
    for step in range(1, steps + 1):
        x = torch.randn(64, 16, generator=data)
        y = (x[:, :4].sum(1) > 0).long()
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x).float()
            if nan_from is not None and step >= nan_from:
                out = out * torch.sqrt(-torch.ones(()))  # a real fault: NaN from the model, whatever the scale
            loss = nn.functional.cross_entropy(out, y)
        scaler.scale(loss).backward()
        guard.step(opt, loss=loss.detach())
        opt.zero_grad(set_to_none=True)
    return guard, scaler


def test_a_scale_started_far_too_high_calibrates_without_stopping_the_run():
    guard, scaler = _amp_run(2.0**40, steps=60)  # about 25 overflowing steps before the scale fits fp16
    assert guard.skipped_steps > 10  # more than max_consecutive_skips' default, all calibration
    assert scaler.get_scale() < 2.0**20
    assert math.isfinite(guard.history.norm_before[-1])
    guard.close()


def test_a_real_fault_under_a_scaler_still_stops_the_run_once_the_scale_is_spent():
    with pytest.raises(gg.NonFiniteGradientError) as info:
        _amp_run(2.0**4, steps=40, nan_from=3, max_consecutive_skips=3)
    # Steps 3-6 halve the scale from 2**4 to 1 (calibration); steps 7-9 are the 3 allowed skips at
    # a spent scale; step 10 is the fourth in a row and raises.
    assert str(info.value).startswith("step 10: 4 optimizer steps in a row"), str(info.value)


def test_without_a_scaler_every_skip_counts():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = gg.Guard(model, max_consecutive_skips=2)
    with pytest.raises(gg.NonFiniteGradientError):
        for _ in range(3):
            (model(torch.ones(2, 4)) * float("nan")).sum().backward()
            guard.step(opt)
