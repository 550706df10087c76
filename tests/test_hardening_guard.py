"""Guard refuses what it cannot do right: arguments checked at construction, state checked on
load, a non-finite "raise" that leaves the gradients alone, an optimizer that does not own the
model's parameters, and ``step(None)``."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import gradguard as gg
from gradguard._errors import GradGuardWarning, NonFiniteGradientError


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))


# ---------------------------------------------------------------------- arguments, at construction
BAD_ARGUMENTS = [
    ({"spike_z": -1}, ValueError, "spike_z must be a finite number > 0"),
    ({"spike_z": 0}, ValueError, "spike_z must be a finite number > 0"),
    ({"spike_z": "3"}, TypeError, "spike_z must be a positive number"),
    ({"spike_z": math.nan}, ValueError, "spike_z"),
    ({"spike_z": math.inf}, ValueError, "or None to turn spike detection off"),
    ({"spike_z": True}, TypeError, "spike_z"),
    ({"max_history": 0}, ValueError, "max_history must be a positive int"),
    ({"max_history": -1}, ValueError, "max_history must be a positive int"),
    ({"max_history": 2.5}, ValueError, "max_history"),
    ({"max_history": "10"}, ValueError, "max_history"),
    ({"forensics_steps": 0}, ValueError, "forensics_steps must be >= 2"),
    ({"forensics_steps": 8.0}, TypeError, "forensics_steps must be an int"),
    ({"log_every": 0}, ValueError, "log_every must be >= 1"),
    ({"log_every": "10"}, TypeError, "log_every must be an int"),
    ({"probe_every": 0}, ValueError, "probe_every must be >= 1"),
    ({"probe_every": {"deltas": 0}}, ValueError, "probe_every\\['deltas'\\] must be >= 1"),
    ({"probe_every": {"delta": 5}}, ValueError, "Did you mean 'deltas'"),
    ({"probes": "ful"}, ValueError, "Did you mean 'full'"),
    ({"locate_nonfinite": 1}, TypeError, "locate_nonfinite must be True or False"),
    ({"loggers": print}, TypeError, "wrap the one logger in a list"),
    ({"loggers": [1]}, TypeError, "loggers\\[0\\] must be callable"),
    ({"name": 3}, TypeError, "name must be a string or None"),
    ({"nonfinite": "skpi"}, ValueError, "Did you mean 'skip'"),
    ({"max_consecutive_skips": -1}, ValueError, "max_consecutive_skips must be >= 0"),
    ({"scaler": object()}, TypeError, "scaler must be a torch.amp.GradScaler"),
    ({"clip": "zclp"}, ValueError, "Did you mean 'zclip'"),
    ({"clip": True}, TypeError, "clip must be None"),
    ({"norm_type": -2}, ValueError, "norm_type"),
    ({"store": 3}, TypeError, "store must be a path or a RunStore"),
    ({"group_by": {"enc": 3}}, TypeError, "group_by maps a label"),
    ({"group_by": {"enc": []}}, TypeError, "group_by maps a label"),
    ({"group_by": -1}, ValueError, "group_by must be >= 1"),
    ({"group_by": 2.5}, TypeError, "group_by must be None"),
]


@pytest.mark.parametrize("kwargs, error, match", BAD_ARGUMENTS, ids=[f"{k}={v!r}" for (d, _, _) in BAD_ARGUMENTS for k, v in d.items()])
def test_every_bad_argument_is_refused_at_construction_with_a_clear_error(kwargs, error, match):
    with pytest.raises(error, match=match):
        gg.Guard(_model(), **kwargs)


def test_the_model_must_be_a_module():
    with pytest.raises(TypeError, match="nn.Module"):
        gg.Guard(torch.zeros(3))


def test_good_edge_arguments_are_accepted():
    gg.Guard(_model(), spike_z=None, max_history=None, loggers=(), name="run", forensics_steps=2)
    gg.Guard(_model(), spike_z=3, max_history=1, probe_every={"deltas": 1})


def test_spike_z_negative_no_longer_makes_false_spikes():
    # spike_z=-1 used to be accepted and flag every step as a GRADIENT_SPIKE
    with pytest.raises(ValueError):
        gg.Guard(_model(), spike_z=-1)


# ---------------------------------------------------------------------- step(None)
@pytest.mark.parametrize("optimizer", [None, "adam", 3])
def test_step_without_an_optimizer_is_a_clear_error_and_counts_nothing(optimizer):
    model = _model()
    guard = gg.Guard(model)
    model(torch.randn(4, 2)).sum().backward()
    with pytest.raises(TypeError, match="guard.step\\(optimizer\\) needs the optimizer.*guard.check\\(\\)"):
        guard.step(optimizer)
    assert guard.steps == 0


# ---------------------------------------------------------------------- nonfinite="raise"
def bitwise_equal(a, b) -> bool:
    """Nested dicts/lists/tuples of tensors and numbers, equal bit for bit (NaN equals NaN)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(bitwise_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(bitwise_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.dtype != b.dtype or a.shape != b.shape:
            return False
        return torch.equal(a.detach().cpu().reshape(-1).view(torch.uint8), b.detach().cpu().reshape(-1).view(torch.uint8))
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


CLIPPERS = [None, 1.0, gg.ClipTensorNorm(1.0), gg.ClipValue(0.5), "agc", "autoclip", "zclip"]


@pytest.mark.parametrize("clip", CLIPPERS, ids=[repr(c) for c in CLIPPERS])
def test_raise_leaves_the_gradients_exactly_as_they_were(clip):
    model = torch.nn.Linear(2, 1)
    guard = gg.Guard(model, clip=clip, nonfinite="raise")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.weight.grad = torch.tensor([[math.inf, 1.0]])
    model.bias.grad = torch.tensor([3.0])
    state = guard.state_dict()
    with pytest.raises(NonFiniteGradientError, match="weight") as err:
        guard.step(opt)
    assert err.value.parameters == ["weight"]
    assert torch.equal(model.weight.grad, torch.tensor([[math.inf, 1.0]]))  # was [[nan, 0.0]]: clipped, then raised
    assert torch.equal(model.bias.grad, torch.tensor([3.0]))
    after = guard.state_dict()
    after["step"] -= 1  # the step was counted
    assert bitwise_equal(after, state)


def test_raise_on_finite_steps_still_steps():
    model = torch.nn.Linear(2, 1)
    guard = gg.Guard(model, clip=0.5, nonfinite="raise")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.weight.detach().clone()
    model(torch.randn(4, 2)).pow(2).sum().backward()
    info = guard.step(opt)
    assert not info.skipped and not torch.equal(before, model.weight)


# ---------------------------------------------------------------------- an optimizer that does not own the model
def _step_warnings(guard, model, opt, steps=3):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            opt.zero_grad()
            model(torch.randn(4, 2)).sum().backward()
            guard.step(opt)
    return [str(w.message) for w in caught if issubclass(w.category, GradGuardWarning)]


def test_an_optimizer_over_another_model_is_warned_once_naming_the_parameters():
    model, other = _model(), _model()
    guard = gg.Guard(model)
    found = _step_warnings(guard, model, torch.optim.SGD(other.parameters(), lr=0.1))
    assert len(found) == 1
    assert "does not own 4 of the 4 trainable parameters" in found[0] and "0.weight" in found[0] and "1.bias" in found[0]


def test_an_optimizer_owning_part_of_the_model_is_warned_once_naming_the_rest():
    model = _model()
    guard = gg.Guard(model)
    found = _step_warnings(guard, model, torch.optim.Adam(model[0].parameters(), lr=0.1))
    assert len(found) == 1 and "2 of the 4" in found[0] and "1.weight, 1.bias" in found[0] and "0.weight" not in found[0]


def test_an_optimizer_owning_everything_and_frozen_parameters_say_nothing():
    model = _model()
    model[1].bias.requires_grad_(False)
    guard = gg.Guard(model)
    opt = torch.optim.AdamW([{"params": [model[0].weight, model[0].bias]}, {"params": [model[1].weight], "lr": 1e-3}])
    assert _step_warnings(guard, model, opt) == []


# ---------------------------------------------------------------------- load_state_dict
def _state(**over):
    base = {"step": 5, "consecutive": 0, "skips": 1, "clipper_type": None, "clipper": {}}
    base.update(over)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()

BAD_STATES = [
    ({}, ValueError, "lacks 'step', 'consecutive', 'skips'"),
    ([1, 2], TypeError, "needs the dict from guard.state_dict"),
    (_state(step=_DROP), ValueError, "lacks 'step'"),
    (_state(step="5"), ValueError, "'step' must be an int >= 0, got '5'"),
    (_state(step=-1), ValueError, "'step' must be an int >= 0"),
    (_state(step=2.0), ValueError, "'step' must be an int"),
    (_state(skips=True), ValueError, "'skips' must be an int"),
    (_state(skips=9), ValueError, "inconsistent counters"),
    (_state(consecutive=2), ValueError, "inconsistent counters"),
    (_state(stepp=3), ValueError, "unknown key 'stepp'. Did you mean 'step'"),
    (_state(clipper=[1]), TypeError, "'clipper' must be the clipper's state dict"),
    (_state(clipper_type="ZClip", clipper={"mean": 1.0}), ValueError, "holds the state of a ZClip clipper, but this Guard has no clipper"),
    (_state(clipper_type=_DROP, clipper={"mean": 1.0}), ValueError, "this Guard has no clipper"),
]


@pytest.mark.parametrize("state, error, match", BAD_STATES, ids=[str(i) for i in range(len(BAD_STATES))])
def test_a_bad_guard_state_is_refused_naming_what_is_wrong_and_changes_nothing(state, error, match):
    guard = gg.Guard(_model())
    with pytest.raises(error, match=match):
        guard.load_state_dict(state)
    assert guard.steps == 0 and guard.skipped_steps == 0


def test_a_clipper_state_loaded_into_a_guard_without_that_clipper_is_an_error():
    zclip = gg.Guard(_model(), clip="zclip")
    with pytest.raises(ValueError, match="ZClip clipper, but this Guard has no clipper"):
        gg.Guard(_model()).load_state_dict(zclip.state_dict())
    with pytest.raises(ValueError, match="clipper ZClip, but this Guard's clipper is AutoClip"):
        gg.Guard(_model(), clip="autoclip").load_state_dict(zclip.state_dict())


def test_a_guard_with_a_stateful_clipper_given_a_state_without_one_is_an_error():
    plain = gg.Guard(_model()).state_dict()
    with pytest.raises(ValueError, match="clipper None, but this Guard's clipper is ZClip"):
        gg.Guard(_model(), clip="zclip").load_state_dict(plain)
    old = {k: v for k, v in plain.items() if k != "clipper_type"}  # a checkpoint from before clipper_type
    with pytest.raises(ValueError, match="this Guard's clipper is ZClip"):
        gg.Guard(_model(), clip="zclip").load_state_dict(old)


def test_state_round_trips_and_stateless_clippers_accept_old_checkpoints():
    model = _model()
    guard = gg.Guard(model, clip="zclip")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(4):
        opt.zero_grad()
        model(torch.randn(4, 2)).sum().backward()
        guard.step(opt)
    again = gg.Guard(_model(), clip="zclip")
    again.load_state_dict(guard.state_dict())
    assert again.steps == 4
    gg.Guard(_model(), clip=1.0).load_state_dict({"step": 3, "consecutive": 0, "skips": 0, "clipper": {}})
    gg.Guard(_model()).load_state_dict({"step": 3, "consecutive": 0, "skips": 0, "clipper": {}})
