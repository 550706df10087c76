"""Guard.step: order of operations, the non-finite policies, history, and awkward training set-ups."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import gradguard as gg
from gradguard import _reference as ref
from tests.conftest import mlp


def backward(model, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 8, generator=gen)
    (model(x).pow(2).mean() * scale).backward()


def poison(model, name="2.weight", value=math.nan):
    dict(model.named_parameters())[name].grad.view(-1)[0] = value


def snapshot(model, optimizer):
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = copy.deepcopy(optimizer.state_dict())
    return params, state


def assert_same(model, optimizer, snap):
    params, state = snap
    for n, p in model.named_parameters():
        assert torch.equal(p, params[n]), n
    now = optimizer.state_dict()
    for key, entry in state["state"].items():
        for field, value in entry.items():
            assert torch.equal(torch.as_tensor(now["state"][key][field]), torch.as_tensor(value)), (key, field)


@pytest.mark.parametrize("clip", [None, 1.0, "autoclip", gg.ZClip(warmup_steps=2), gg.AGC()])
def test_skip_leaves_parameters_optimizer_and_clipper_bitwise_unchanged(clip):
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    guard = gg.Guard(model, clip=clip)
    for s in range(4):  # build up Adam moments and clipper statistics
        backward(model, s)
        guard.step(opt)
        opt.zero_grad()
    snap = snapshot(model, opt)
    clipper_state = copy.deepcopy(guard.clipper.state_dict()) if guard.clipper else {}
    backward(model, 9)
    poison(model)
    info = guard.step(opt)
    assert bool(info.skipped)
    assert_same(model, opt, snap)
    if guard.clipper:
        for key, value in clipper_state.items():
            now = guard.clipper.state_dict()[key]
            if isinstance(value, dict):
                assert all(torch.equal(torch.as_tensor(now[k]), torch.as_tensor(v)) for k, v in value.items())
            else:
                assert torch.equal(now, value)
    assert all(p.grad is None or p.grad.count_nonzero() == 0 for p in model.parameters())  # zeroed
    assert guard.skipped_steps == 1
    # A later finite step trains normally.
    opt.zero_grad()
    backward(model, 10)
    assert not bool(guard.step(opt).skipped)
    assert not torch.equal(dict(model.named_parameters())["0.weight"], snap[0]["0.weight"])


def test_consecutive_skips_raise_with_parameter_names():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = gg.Guard(model, max_consecutive_skips=2)
    for _ in range(2):
        backward(model)
        poison(model, "4.bias", math.inf)
        assert bool(guard.step(opt).skipped)
        opt.zero_grad()
    backward(model)
    poison(model, "4.bias", math.inf)
    with pytest.raises(gg.NonFiniteGradientError, match=r"3 optimizer steps in a row.*4\.bias") as err:
        guard.step(opt)
    assert err.value.parameters == ["4.bias"]


def test_a_finite_step_resets_the_consecutive_count():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    guard = gg.Guard(model, max_consecutive_skips=1)
    for s in range(5):
        backward(model, s)
        if s % 2 == 0:
            poison(model)
        guard.step(opt)
        opt.zero_grad()
    assert guard.skipped_steps == 3


def test_raise_policy_names_the_parameter():
    model = mlp()
    guard = gg.Guard(model, nonfinite="raise")
    backward(model)
    poison(model, "0.weight")
    with pytest.raises(gg.NonFiniteGradientError, match="0.weight"):
        guard.step(torch.optim.SGD(model.parameters(), lr=0.1))


def test_ignore_policy_steps_anyway():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = gg.Guard(model, nonfinite="ignore")
    backward(model)
    poison(model, "0.weight")
    assert not bool(guard.step(opt).skipped)
    assert torch.isnan(model[0].weight).any()


def test_device_side_skip_with_a_fused_optimizer():
    # On accelerators Guard hands the verdict to fused optimizers through `found_inf`. The same
    # mechanism runs on the CPU's fused Adam, so the logic is tested here with the decision forced.
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    guard = gg.Guard(model, clip=1.0, max_consecutive_skips=1, log_every=1)
    guard._policy._decides_on_device = lambda optimizer, batch: True
    backward(model)
    guard.step(opt)
    opt.zero_grad()
    snap = snapshot(model, opt)
    backward(model, 1)
    poison(model)
    assert bool(guard.step(opt).skipped)
    assert_same(model, opt, snap)
    opt.zero_grad()
    backward(model, 2)
    poison(model)
    with pytest.raises(gg.NonFiniteGradientError, match="2.weight"):
        guard.step(opt)


def test_history_matches_step_info_and_reference():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    guard = gg.Guard(model, clip=0.5, log_every=3)
    infos, expected_modules = [], []
    for s in range(7):
        backward(model, s)
        per, _ = ref.norms_of(list(model.named_parameters()))
        expected_modules.append(ref.group_of(list(per), gg._norms.module_of, per, 2.0))
        infos.append(guard.step(opt, loss=float(s)).as_floats())
        opt.zero_grad()
    assert len(guard.history) == 6  # two flushes of three; the seventh is pending
    guard.flush()
    h = guard.history
    assert h.step.tolist() == list(range(1, 8))
    assert h.norm_before.tolist() == pytest.approx([i["norm_before"] for i in infos])
    assert h.norm_after.tolist() == pytest.approx([i["norm_after"] for i in infos])
    assert h.clipped.tolist() == [i["clipped"] for i in infos]
    assert h.loss.tolist() == list(map(float, range(7)))
    assert guard.module_names == ["0", "2", "4", "6"]
    for row, expected in zip(h.module_norms, expected_modules):
        assert row.tolist() == pytest.approx([expected[m] for m in guard.module_names], rel=1e-5)


def test_loggers_receive_every_step_once():
    model = mlp()
    seen = []
    guard = gg.Guard(model, log_every=4, loggers=[lambda chunk: seen.extend(chunk.records())])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for s in range(10):
        backward(model, s)
        guard.step(opt)
        opt.zero_grad()
    guard.close()
    assert [r["step"] for r in seen] == list(range(1, 11))
    assert "grad_norm/0" in seen[0] and "norm_before" in seen[0]


def test_grad_scaler_unscaled_once_and_steps_scaler():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    guard = gg.Guard(model, scaler=scaler)
    reference = mlp()
    backward(reference)
    true_norm = gg.grad_norms(reference).total.item()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 8, generator=gen)
    scaler.scale(model(x).pow(2).mean()).backward()
    info = guard.step(opt)
    assert info.norm_before.item() == pytest.approx(true_norm, rel=1e-5)
    # Already unscaled by the user: Guard must not divide by the scale a second time.
    opt.zero_grad()
    scaler.scale(model(x).pow(2).mean()).backward()
    scaler.unscale_(opt)
    manual = gg.grad_norms(model).total.item()
    assert guard.step(opt).norm_before.item() == pytest.approx(manual, rel=1e-6)


def test_grad_scaler_overflow_is_skipped_and_backs_off():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    guard = gg.Guard(model, scaler=scaler)
    snap = snapshot(model, opt)
    scaler.scale(model(torch.randn(4, 8)).sum()).backward()
    poison(model, "0.bias", math.inf)
    assert bool(guard.step(opt).skipped)
    assert scaler.get_scale() == 512.0
    assert_same(model, opt, snap)


def test_gradient_accumulation_frozen_and_missing_grads():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = mlp()
            self.unused = nn.Linear(3, 3)  # registered but never called: no gradient

        def forward(self, x):
            return self.body(x)

    model = Net()
    model.body[0].weight.requires_grad_(False)  # frozen
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    guard = gg.Guard(model)
    backward(model, 0)
    backward(model, 1)  # two micro-batches accumulate
    expected = ref.norms_of(list(model.named_parameters()))[1]
    info = guard.step(opt)
    assert info.norm_before.item() == pytest.approx(expected, rel=1e-5)
    names = guard.module_names
    assert "unused" in names
    assert math.isnan(info.module_norms[names.index("unused")].item())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_gradients(dtype):
    model = mlp().to(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    guard = gg.Guard(model, clip=0.1)
    x = torch.randn(16, 8).to(dtype)
    model(x).float().pow(2).mean().backward()
    info = guard.step(opt)
    assert info.norm_before.dtype == torch.float32
    assert gg.grad_norms(model).total.item() <= 0.1 * 1.01


def test_parameter_groups():
    model = mlp()
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1}, {"params": [p for n, p in model.named_parameters() if not n.startswith("0.")], "lr": 0.01}])
    guard = gg.Guard(model, clip=0.5)
    backward(model)
    guard.step(opt)
    assert gg.grad_norms(model).total.item() <= 0.5


def test_bad_guard_arguments():
    model = mlp()
    with pytest.raises(ValueError, match="Did you mean 'skip'"):
        gg.Guard(model, nonfinite="skp")
    with pytest.raises(TypeError, match="nn.Module"):
        gg.Guard([1, 2])
    with pytest.raises(TypeError, match="clip must be"):
        gg.Guard(model, clip=[1.0])
    with pytest.raises(ValueError, match="conflicts with the clipper"):
        gg.Guard(model, clip=gg.ClipNorm(1.0, norm_type=1), norm_type=2)
    with pytest.raises(ValueError, match="max_consecutive_skips must be >= 0"):
        gg.Guard(model, max_consecutive_skips=-1)


def test_guard_state_dict_round_trip():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    guard = gg.Guard(model, clip="autoclip")
    for s in range(3):
        backward(model, s)
        guard.step(opt)
        opt.zero_grad()
    other = gg.Guard(mlp(), clip="autoclip")
    other.load_state_dict(guard.state_dict())
    assert other.steps == 3
    assert torch.equal(other.clipper.quantile_now(), guard.clipper.quantile_now())


def test_context_manager_flushes():
    model = mlp()
    with gg.Guard(model, log_every=100) as guard:
        backward(model)
        guard.step(torch.optim.SGD(model.parameters(), lr=0.01))
    assert len(guard.history) == 1
    with pytest.raises(RuntimeError, match="closed"):
        guard.step(torch.optim.SGD(model.parameters(), lr=0.01))


def test_check_leaves_stepping_to_the_caller():
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    guard = gg.Guard(model, clip=0.5)
    backward(model)
    guard.check()
    assert gg.grad_norms(model).total.item() <= 0.5
    opt.step()
    opt.zero_grad()
    snap = snapshot(model, opt)
    backward(model, 1)
    poison(model)
    assert bool(guard.check().skipped)
    opt.step()  # the caller's step is a no-op: no parameter has a gradient
    assert_same(model, opt, snap)


@pytest.mark.parametrize("probes", [None, "norms", "full"])
def test_guard_keeps_no_gradient_alive_after_the_step(probes):
    """Nothing Guard caches between steps (collector plan, probes, statistics) may pin a step's
    gradients: with zero_grad(set_to_none=True) that would be a second copy of every gradient."""
    import weakref

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    guard = gg.Guard(model, clip=1.0, probes=probes, probe_every=1)
    refs = []
    for _ in range(3):
        model(torch.randn(16, 4)).square().mean().backward()
        refs.extend(weakref.ref(p.grad) for p in model.parameters())
        guard.step(opt)
        opt.zero_grad(set_to_none=True)
    assert all(r() is None for r in refs)
