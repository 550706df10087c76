"""A GradScaler's calibration is healthy: a scale started too high overflows for its first steps
and backs off, and later overflows once in a while as it grows. The rules must stay quiet about
that and still name a real non-finite fault under a scaler (NaN from the model or the data, a
scaler that collapses)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import gradguard as gg
from gradguard._rules import diagnose
from gradguard._rules._evidence import scaler_backoff
from tests.test_rules import STABLE, run

SCALER = {"scaler": True, "inputs": {"autocast_dtype": "float16", "param_dtypes": ["float32"], "scaler": True}}
# What the locator records on a step whose scaled gradients overflowed: Inf arriving at the last
# layer's output in the backward pass, from outside any module.
OVERFLOW_AT_HEAD = {"kind": "nonfinite_location", "where": ["head"], "direction": "backward", "produced": False, "value": "Inf",
                    "message": "Inf first seen in the backward pass at 'head'", "remedy": "..."}


def calibration(opening=5, later=(8, 40)):
    """``opening`` skipped steps from step 1, then single skips at the indices ``later``."""
    norms = [math.inf] * opening + STABLE
    for i in later:
        norms[i] = math.inf
    return norms


def urgent(findings):
    return [f for f in findings if f.severity != "info"]


def test_calibration_alone_is_healthy():
    data = run(calibration(), meta=SCALER, events=[{**OVERFLOW_AT_HEAD, "step": 2}])
    assert scaler_backoff(data).sum() == 7
    assert urgent(diagnose(data)) == []


def test_calibration_without_the_scaler_is_a_fault():
    data = run(calibration(), meta={"inputs": SCALER["inputs"] | {"scaler": False}})
    assert {f.code for f in urgent(diagnose(data))} >= {"NONFINITE"}


@pytest.mark.parametrize("case, norms, loss, events", [
    ("the loss went NaN: the model made it", calibration(opening=0, later=(20, 30)), "nan_on_bad", []),
    ("a module produced NaN in its forward pass", calibration(opening=0, later=(20,)), None,
     [{**OVERFLOW_AT_HEAD, "step": 21, "direction": "forward", "produced": True, "where": ["fault"], "value": "NaN"}]),
    ("a batch held NaN", calibration(opening=0, later=(20,)), None, [{"step": 21, "kind": "nonfinite_input", "what": "input[0]", "inputs": ["input[0]"]}]),
    ("the opening skips never end", [math.inf] * 30 + STABLE, None, []),
    ("later skips come in long runs", calibration(later=(20, 21, 22, 23)), None, []),
    ("later skips are frequent", calibration(later=tuple(range(10, 60, 5))), None, []),
])
def test_a_real_fault_under_a_scaler_is_still_named(case, norms, loss, events):
    if loss == "nan_on_bad":
        loss = [math.nan if not math.isfinite(v) else 1.0 for v in norms]
    found = urgent(diagnose(run(norms, loss=loss, meta=SCALER, events=events)))
    assert {f.code for f in found} & {"NONFINITE", "NONFINITE_INPUT", "SCALER_COLLAPSE"}, case


def test_only_the_faulty_steps_are_counted_beside_calibration():
    norms = calibration(later=(30,))
    loss = [1.0] * len(norms)
    loss[30] = math.nan  # step 31: the model's NaN, among calibration skips at steps 1-5
    found = {f.code: f for f in diagnose(run(norms, loss=loss, meta=SCALER))}
    assert found["NONFINITE"].evidence["nonfinite_steps"] == 1 and found["NONFINITE"].step == 31
    assert "FP16_OVERFLOW" not in found


def test_collapse_is_not_calibration():
    data = run([math.inf] * 12, meta=SCALER)
    assert not scaler_backoff(data).any()
    assert diagnose(data)[0].code == "SCALER_COLLAPSE"


def test_healthy_amp_run_with_a_large_init_scale_gets_no_warning():
    """The reported false alarm, end to end: float16 autocast on the CPU, GradScaler(init_scale=2**24)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)
    guard = gg.Guard(model, scaler=scaler)
    data = torch.Generator().manual_seed(1)
    for _ in range(60):
        x = torch.randn(64, 16, generator=data)
        y = (x[:, :4].sum(1) > 0).long()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        scaler.scale(loss).backward()
        guard.step(opt, loss=loss.detach())
        opt.zero_grad(set_to_none=True)
    guard.close()
    assert guard.skipped_steps >= 3 and scaler.get_scale() < 2.0**24  # it did calibrate
    assert np.isfinite(guard.history.norm_before[-10:]).all()
    assert urgent(guard.findings()) == [], [str(f) for f in guard.findings()]
