"""The input check: references on finite steps (nothing read), a report on non-finite ones."""

from __future__ import annotations

import math

import torch
from torch import nn

from gradguard._probes._inputs import InputCheck


def test_finite_steps_read_nothing(monkeypatch):
    model = nn.Linear(3, 1)
    check = InputCheck(model)
    calls = []
    monkeypatch.setattr(torch, "isfinite", lambda t: calls.append(1) or torch.ones((), dtype=torch.bool))
    for step in range(1, 4):
        model(torch.randn(4, 3)).sum().backward()
        assert check.end_step(step, nonfinite=False) is None
    assert calls == []  # no check, hence no read of any input, on finite steps
    assert check.summary()["batch_size"] == 4 and check.summary()["micro_batches"] == 1
    check.close()


def test_nonfinite_input_is_named_on_its_step():
    model = nn.Linear(3, 1)
    check = InputCheck(model)
    x = torch.randn(4, 3)
    x[2, 1] = math.nan
    model(x).sum().backward()
    event = check.end_step(9, nonfinite=True)
    assert event["kind"] == "nonfinite_input" and event["step"] == 9 and event["inputs"] == ["input[0]"]
    model(torch.randn(4, 3)).sum().backward()
    assert check.end_step(10, nonfinite=True) is None  # non-finite gradients from clean inputs: the model's fault
    check.close()


def test_accumulation_counts_micro_batches_and_names_the_bad_one():
    model = nn.Linear(3, 1)
    check = InputCheck(model)
    for i in range(4):
        x = torch.randn(2, 3)
        if i == 2:
            x[0, 0] = math.inf
        model(x).sum().backward()
    event = check.end_step(1, nonfinite=True)
    assert "micro-batch 3 of 4" in event["what"] and check.summary()["micro_batches"] == 4
    check.close()


def test_unknown_on_the_host_until_the_flush():
    model = nn.Linear(3, 1)
    check = InputCheck(model)
    bad = torch.full((2, 3), math.nan)
    for step, x in ((1, torch.randn(2, 3)), (2, bad), (3, torch.randn(2, 3))):
        model(x).sum().backward()
        assert check.end_step(step, nonfinite=None) is None
    events = check.flush([1, 2, 3], [False, True, True])
    assert [e["step"] for e in events] == [2]
    check.close()


def test_eval_passes_and_autocast():
    model = nn.Linear(3, 1)
    check = InputCheck(model)
    with torch.no_grad():
        model(torch.full((2, 3), math.nan))
    assert check.end_step(1, nonfinite=True) is None  # no-grad passes are not training inputs
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(2, 3)).float().sum().backward()
    check.end_step(2, nonfinite=False)
    assert check.summary()["autocast_dtype"] == "bfloat16"
    check.close()
    assert not model._forward_pre_hooks
