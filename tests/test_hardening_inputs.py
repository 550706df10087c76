"""Bad input to every public clipper and norm function: a clear error that says what was received,
what was expected, and how to fix it (never an AttributeError from deep inside)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import gradguard as gg


def _param():
    p = nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    return [("w", p)]


BAD = [
    # constructors
    (lambda: gg.ClipNorm(None), TypeError, "max_norm must be a number, got None"),
    (lambda: gg.ClipNorm("1"), TypeError, "max_norm must be a number, got '1'"),
    (lambda: gg.ClipNorm(math.inf), ValueError, "max_norm must be a finite number"),
    (lambda: gg.ClipNorm(0), ValueError, "max_norm must be > 0"),
    (lambda: gg.ClipNorm(1.0, "l2"), TypeError, "norm_type must be a number > 0 or 'inf', got 'l2'"),
    (lambda: gg.ClipNorm(1.0, -math.inf), ValueError, "norm_type must be a number > 0"),
    (lambda: gg.ClipTensorNorm(-1), ValueError, "max_norm must be > 0, got -1"),
    (lambda: gg.ClipTensorNorm(1.0, math.nan), ValueError, "norm_type must be a number > 0"),
    (lambda: gg.ClipValue(0), ValueError, "clip_value must be > 0"),
    (lambda: gg.ClipValue(True), TypeError, "clip_value must be a number, got True"),
    (lambda: gg.ClipValue(math.inf), ValueError, "clip_value must be a finite number"),
    (lambda: gg.AGC(clipping=-1), ValueError, "clipping must be > 0"),
    (lambda: gg.AGC(eps=-1), ValueError, "eps must be >= 0"),
    (lambda: gg.AGC(eps=math.nan), ValueError, "eps must be a finite number"),
    (lambda: gg.AGC(exclude=None), TypeError, "exclude must be a sequence of glob patterns.*got None.*exclude=\\(\\)"),
    (lambda: gg.AGC(exclude=[1]), TypeError, "exclude must be a sequence of glob patterns"),
    (lambda: gg.make_clipper(3), TypeError, "clipper name must be a string"),
    (lambda: gg.make_clipper("nrom", max_norm=1), ValueError, "Did you mean 'norm'"),
    (lambda: gg.make_clipper("norm"), ValueError, "needs 'max_norm'"),
    (lambda: gg.make_clipper("norm", max_norm=1, x=1), ValueError, "does not take 'x'"),
    # state
    (lambda: gg.ClipNorm(1).load_state_dict(None), TypeError, "ClipNorm.load_state_dict expects a dict"),
    (lambda: gg.ClipNorm(1).load_state_dict({"mean": 1.0}), ValueError, "ClipNorm has no state, but load_state_dict got keys \\['mean'\\]"),
    (lambda: gg.ClipValue(1).load_state_dict("abc"), TypeError, "ClipValue.load_state_dict expects a dict"),
    (lambda: gg.ClipTensorNorm(1).load_state_dict([("a", 1)]), TypeError, "expects a dict"),
    (lambda: gg.AGC().load_state_dict({1: 2}), TypeError, "state keys must be strings"),
    # what they are called on
    (lambda: gg.ClipNorm(1)([1, 2]), TypeError, "expected tensors or \\(name, tensor\\) pairs"),
    (lambda: gg.ClipNorm(1)(None), TypeError, "expected a module, a tensor.*got NoneType"),
    (lambda: gg.AGC()(3), TypeError, "got int"),
    (lambda: gg.grad_norms(None), TypeError, "got NoneType"),
    (lambda: gg.grad_norms(_param(), "x"), TypeError, "norm_type must be a number > 0 or 'inf', got 'x'"),
    (lambda: gg.unitwise_norm(3), TypeError, "unitwise_norm expects a tensor"),
]


@pytest.mark.parametrize("call, error, match", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_input_gets_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("value", [np.float32(0.5), np.float64(0.5), np.int64(2)])
def test_numpy_numbers_are_numbers(value):
    assert gg.ClipNorm(value).max_norm == float(value)
    assert gg.AGC(clipping=value).clipping == float(value)


def test_a_clipper_state_round_trips_through_the_validation():
    for clipper in (gg.ClipNorm(1.0), gg.ClipTensorNorm(1.0), gg.ClipValue(1.0), gg.AGC()):
        clipper.load_state_dict(clipper.state_dict())
