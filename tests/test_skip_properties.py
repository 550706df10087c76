"""Property: a skipped step did not happen. NaN/Inf injected into random steps, parameters and
micro-batches, across optimizers (SGD with momentum, Adam, AdamW; for-loop, foreach and fused
kernels on the CPU), a GradScaler, gradient accumulation, param groups and every clipper: after
each skip the parameters, the optimizer state, the clipper state and the LR scheduler state are
bit for bit what they were; and a run with skips ends exactly where a run that never took those
steps ends."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradguard as gg

OPTIMIZERS = {
    "sgd-momentum": lambda groups: torch.optim.SGD(groups, lr=0.05, momentum=0.9, foreach=False),
    "sgd-momentum-foreach": lambda groups: torch.optim.SGD(groups, lr=0.05, momentum=0.9, nesterov=True, foreach=True),
    "sgd-momentum-fused": lambda groups: torch.optim.SGD(groups, lr=0.05, momentum=0.9, fused=True),
    "adam": lambda groups: torch.optim.Adam(groups, lr=1e-2, foreach=False),
    "adam-foreach-amsgrad": lambda groups: torch.optim.Adam(groups, lr=1e-2, amsgrad=True, foreach=True),
    "adam-fused": lambda groups: torch.optim.Adam(groups, lr=1e-2, fused=True),
    "adamw": lambda groups: torch.optim.AdamW(groups, lr=1e-2, weight_decay=0.1, foreach=False),
    "adamw-foreach": lambda groups: torch.optim.AdamW(groups, lr=1e-2, foreach=True),
    "adamw-fused": lambda groups: torch.optim.AdamW(groups, lr=1e-2, fused=True),
}
CLIPPERS = {
    "none": lambda: None,
    "norm": lambda: gg.ClipNorm(0.5),
    "tensor_norm": lambda: gg.ClipTensorNorm(0.3),
    "value": lambda: gg.ClipValue(0.05),
    "agc": lambda: gg.AGC(clipping=0.01),
    "autoclip": lambda: gg.AutoClip(percentile=10.0),
    "zclip": lambda: gg.ZClip(warmup_steps=2),
}
BAD = [math.nan, math.inf, -math.inf]


def bitwise_equal(a, b) -> bool:
    """Nested dicts/lists/tuples of tensors and numbers, equal bit for bit (NaN equals NaN)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(bitwise_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(bitwise_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.dtype != b.dtype or a.shape != b.shape:
            return False
        return torch.equal(a.detach().cpu().reshape(-1).view(torch.uint8), b.detach().cpu().reshape(-1).view(torch.uint8))
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


class Setup:
    def __init__(self, optimizer: str, clipper: str, groups: int, scaler: bool, seed: int):
        torch.manual_seed(seed)
        self.model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
        params = list(self.model.parameters())
        if groups == 1:
            param_groups = [{"params": params}]
        else:
            param_groups = [{"params": params[:2]}, {"params": params[2:], "lr": 3e-3}]
        self.opt = OPTIMIZERS[optimizer](param_groups)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda k: 1.0 / (1 + k))
        self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8) if scaler else None
        self.guard = gg.Guard(self.model, clip=CLIPPERS[clipper](), scaler=self.scaler, max_consecutive_skips=100,
                              probes=None, spike_z=None, locate_nonfinite=False)

    def snapshot(self):
        return {
            "params": [p.detach().clone() for p in self.model.parameters()],
            "optimizer": copy.deepcopy(self.opt.state_dict()),
            "clipper": copy.deepcopy(self.guard.clipper.state_dict()) if self.guard.clipper is not None else {},
            "scheduler": copy.deepcopy(self.sched.state_dict()),
            "lr": [g["lr"] for g in self.opt.param_groups],
        }

    def step(self, data, bad=None):
        """One optimizer step over ``len(data)`` micro-batches; ``bad`` = (micro-batch, parameter, index, value)."""
        self.opt.zero_grad()
        for i, (x, y) in enumerate(data):
            loss = (self.model(x) - y).pow(2).mean() / len(data)
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            if bad is not None and bad[0] == i:
                param = list(self.model.parameters())[bad[1]]
                param.grad.view(-1)[bad[2] % param.numel()] = bad[3]
        info = self.guard.step(self.opt)
        if not info.skipped:
            self.sched.step()  # the loop holds the schedule on a skipped step, as gradguard's integrations do
        return info


def _batches(seed, steps, micro):
    g = torch.Generator().manual_seed(seed)
    return [[(torch.randn(4, 3, generator=g), torch.randn(4, 2, generator=g)) for _ in range(micro)] for _ in range(steps)]


injection = st.tuples(st.integers(0, 1), st.integers(0, 3), st.integers(0, 14), st.sampled_from(BAD))


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(
    optimizer=st.sampled_from(sorted(OPTIMIZERS)),
    clipper=st.sampled_from(sorted(CLIPPERS)),
    groups=st.sampled_from([1, 2]),
    micro=st.sampled_from([1, 2]),
    scaler=st.booleans(),
    plan=st.lists(st.one_of(st.none(), injection), min_size=2, max_size=6),
    seed=st.integers(0, 2**16),
)
def test_a_skipped_step_leaves_every_state_bitwise_and_the_run_ends_as_if_it_never_happened(optimizer, clipper, groups, micro, scaler, plan, seed):
    run = Setup(optimizer, clipper, groups, scaler, seed)
    data = _batches(seed, len(plan), micro)
    skips = 0
    for batch, bad in zip(data, plan):
        bad = None if bad is None else (min(bad[0], micro - 1), *bad[1:])
        before = run.snapshot()
        scale = run.scaler.get_scale() if scaler else None
        info = run.step(batch, bad)
        assert bool(info.skipped) == (bad is not None)
        if bad is None:
            continue
        skips += 1
        after = run.snapshot()
        for key in ("params", "optimizer", "clipper", "scheduler", "lr"):
            assert bitwise_equal(after[key], before[key]), f"{key} changed on a skipped step"
        if scaler:  # the scaler backs off as after any overflow, and its growth count restarts
            assert run.scaler.get_scale() == scale * 0.5 and run.scaler._growth_tracker.item() == 0
    assert run.guard.skipped_steps == skips

    if scaler:
        return  # a scale that backed off unscales to other roundings: the replay below is exact without one
    clean = Setup(optimizer, clipper, groups, False, seed)
    for batch, bad in zip(data, plan):
        if bad is None:
            assert not clean.step(batch).skipped
    end, reference = run.snapshot(), clean.snapshot()
    for key in ("params", "optimizer", "clipper", "scheduler", "lr"):
        assert bitwise_equal(end[key], reference[key]), f"{key} differs from a run that never took the skipped steps"


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_every_optimizer_kind_builds_on_this_torch(optimizer):
    opt = OPTIMIZERS[optimizer]([torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(opt, torch.optim.Optimizer)


@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(
    optimizer=st.sampled_from(sorted(OPTIMIZERS)),
    clipper=st.sampled_from(sorted(CLIPPERS)),
    plan=st.lists(st.one_of(st.none(), injection), min_size=2, max_size=5),
    seed=st.integers(0, 2**16),
)
def test_check_then_the_callers_own_optimizer_step_leaves_every_state_bitwise(optimizer, clipper, plan, seed):
    """``guard.check()`` (Lightning, the HF Trainer): the caller steps; a skip leaves it nothing to do."""
    run = Setup(optimizer, clipper, 2, False, seed)
    for batch, bad in zip(_batches(seed, len(plan), 1), plan):
        run.opt.zero_grad()
        x, y = batch[0]
        (run.model(x) - y).pow(2).mean().backward()
        if bad is not None:
            param = list(run.model.parameters())[bad[1]]
            param.grad.view(-1)[bad[2] % param.numel()] = bad[3]
        before = run.snapshot()
        info = run.guard.check()
        run.opt.step()  # the caller's step, always
        assert bool(info.skipped) == (bad is not None)
        if bad is not None:
            after = run.snapshot()
            for key in ("params", "optimizer", "clipper"):
                assert bitwise_equal(after[key], before[key]), f"{key} changed on a skipped step"
