"""The diagnosis end to end through a Guard: what a user sees in ``guard.findings()``."""

from __future__ import annotations

import math

import torch
from torch import nn

import gradguard as gg


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


def _train(model, guard, opt, steps, bad_step=None):
    gen = torch.Generator().manual_seed(0)
    for step in range(1, steps + 1):
        x, y = torch.randn(32, 16, generator=gen), torch.randint(0, 4, (32,), generator=gen)
        if step == bad_step:
            x[3, 5] = math.nan
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        try:
            guard.step(opt, loss=loss)
        except gg.NonFiniteGradientError:
            break
    return guard.findings()


def test_clipping_on_every_step_is_said_after_16_steps():
    model = _mlp()
    found = _train(model, gg.Guard(model, clip=1e-4), torch.optim.SGD(model.parameters(), lr=0.1), 16)
    assert any(f.code == "CLIPPING_ALWAYS" for f in found)


def test_nan_in_one_batch_is_named_as_the_batch():
    model = _mlp()
    found = _train(model, gg.Guard(model), torch.optim.Adam(model.parameters(), lr=1e-3), 30, bad_step=12)
    assert found[0].code == "NONFINITE_INPUT" and found[0].step == 12
    assert "non-finite input in the batch at step 12" in found[0].message.lower() and "one-off" in found[0].message.lower()
    nonfinite = next(f for f in found if f.code == "NONFINITE")
    assert nonfinite.caused_by == "NONFINITE_INPUT" and len(nonfinite.where) < 6  # not every parameter


def test_nan_under_ignore_is_checked_at_the_flush():
    model = _mlp()
    found = _train(model, gg.Guard(model, nonfinite="ignore"), torch.optim.Adam(model.parameters(), lr=1e-3), 30, bad_step=12)
    assert found[0].code == "NONFINITE_INPUT" and found[0].fix == {"nonfinite": "skip"}


def test_sgd_blowup_names_the_learning_rate_on_the_spot():
    model = _mlp()
    found = _train(model, gg.Guard(model), torch.optim.SGD(model.parameters(), lr=200.0), 40)
    top = found[0]
    assert top.code == "LR_TOO_HIGH", [str(f) for f in found]
    assert 0 < top.fix["lr"] < 200.0 and "torch.optim.SGD(model.parameters(), lr=" in top.remedy
    assert all(f.caused_by == "LR_TOO_HIGH" for f in found[1:] if f.code in ("NONFINITE", "EXPLODING_GRADIENT"))


def test_run_record_carries_what_the_rules_need():
    model = _mlp()
    guard = gg.Guard(model)
    _train(model, guard, torch.optim.AdamW(model.parameters(), lr=1e-3), 12)
    data = guard.run_data()
    assert data.meta["optimizer"] == "AdamW" and data.meta["scaler"] is False
    assert data.meta["inputs"]["batch_size"] == 32 and data.meta["inputs"]["micro_batches"] == 1
    assert data.scalars["lr"][0] == 1e-3
    guard.close()
    assert not model._forward_pre_hooks  # close() removes the input check's hook too


def test_nan_under_ignore_on_a_flush_step():
    model = _mlp()  # log_every=10: the bad batch is the last step of a chunk, flushed right after it
    found = _train(model, gg.Guard(model, nonfinite="ignore"), torch.optim.Adam(model.parameters(), lr=1e-3), 30, bad_step=20)
    assert found[0].code == "NONFINITE_INPUT" and found[0].step == 20
