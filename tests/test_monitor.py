"""The monitor inside Guard: probe schedule, spike forensics, the run store, rules on training runs."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from torch import nn

import gradguard as gg
from tests.conftest import mlp

X = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
Y = X[:, :2].sum(1, keepdim=True)


def train(model, guard, steps, lr=0.05, opt=None, hook=None, seed=0, batch=32):
    opt = opt or torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(X), (batch,), generator=gen)
        out = model(X[idx])
        loss = nn.functional.mse_loss(out[:, :1], Y[idx])
        loss.backward()
        if hook is not None:
            hook(step, model)
        guard.step(opt, loss=loss)
        opt.zero_grad(set_to_none=True)
    guard.flush()
    return guard


def codes(guard):
    return {f.code for f in guard.findings()}


# ---------------------------------------------------------------- probes and schedule
def hook_count(model):
    return sum(len(m._forward_hooks) for m in model.modules())


def test_probes_run_only_on_their_schedule():
    model = mlp(depth=3)
    guard = gg.Guard(model, probes="business", probe_every=5, log_every=5, spike_z=None)
    armed = []
    train(model, guard, 11, hook=lambda step, m: armed.append(hook_count(m) > 0))
    # The hooks were in place for the forward of steps 1, 5 and 10 only.
    assert armed == [s in (1, 5, 10) for s in range(1, 12)]
    steps = [s for s, _ in guard.recorder.records["error_norm"]]
    assert steps == [1, 5, 10]
    assert [s for s, _ in guard.recorder.records["update_ratio"]] == [1, 5, 10]
    assert set(guard.recorder.records["saturation"][0][1]) == {"1", "3", "5"}  # the Tanh modules
    guard.close()
    assert hook_count(model) == 0  # close removes every hook


def test_probe_periods():
    from gradguard._probes import resolve_periods

    assert resolve_periods(10) == {"norms": 10, "activations": 10, "deltas": 10, "timesteps": 100}
    assert resolve_periods({"deltas": 50})["deltas"] == 50
    with pytest.raises(ValueError, match="Did you mean 'deltas'"):
        resolve_periods({"delta": 5})
    model = mlp(depth=2)
    guard = gg.Guard(model, probes="business", probe_every={"deltas": 4, "activations": 3}, log_every=4, spike_z=None)
    train(model, guard, 9)
    assert [s for s, _ in guard.recorder.records["error_norm"]] == [1, 4, 8]
    assert [s for s, _ in guard.recorder.records["saturation"]] == [1, 3, 6, 9]
    assert [s for s, _ in guard.recorder.records["update_ratio"]] == [1]


def test_update_ratio_matches_a_direct_measurement():
    model = mlp(depth=2)
    guard = gg.Guard(model, probes="norms", probe_every=1, spike_z=None)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, guard, 1, lr=0.1)
    _, ratios = guard.recorder.records["update_ratio"][0]
    for module in ("0", "2", "4"):
        delta = math.sqrt(sum((p.detach() - before[n]).pow(2).sum().item() for n, p in model.named_parameters() if n.startswith(module + ".")))
        norm = math.sqrt(sum(p.detach().pow(2).sum().item() for n, p in model.named_parameters() if n.startswith(module + ".")))
        assert ratios[module] == pytest.approx(delta / norm, rel=1e-4)


def test_update_ratio_leaves_out_modules_without_a_gradient_and_keeps_the_others_aligned():
    model = mlp(depth=3)
    guard = gg.Guard(model, probes="norms", probe_every=1, spike_z=None)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    nn.functional.mse_loss(model(X[:32])[:, :1], Y[:32]).backward()
    model[2].weight.grad = model[2].bias.grad = None  # the middle layer got no gradient this step
    guard.step(opt)
    guard.flush()
    _, ratios = guard.recorder.records["update_ratio"][0]
    _, norms = guard.recorder.records["param_norm"][0]
    assert set(ratios) == set(norms) == {"0", "4", "6"}
    for module in ratios:
        params = [(n, p) for n, p in model.named_parameters() if n.startswith(module + ".")]
        delta = math.sqrt(sum((p.detach() - before[n]).pow(2).sum().item() for n, p in params))
        norm = math.sqrt(sum(p.detach().pow(2).sum().item() for _, p in params))
        assert norms[module] == pytest.approx(norm, rel=1e-5)
        assert ratios[module] == pytest.approx(delta / norm, rel=1e-4)


def test_timesteps_probe_records_per_step_norms_for_a_recurrent_model():
    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = gg.rnn.SimpleRNN(2, 16, batch_first=True)
            self.head = nn.Linear(16, 1)

        def forward(self, x):
            out, _ = self.rnn(x)
            return self.head(out[:, -1])

    torch.manual_seed(0)
    model = Seq()
    with torch.no_grad():
        model.rnn.weight_hh.mul_(0.2)  # small recurrent weights: gradients vanish back in time
    guard = gg.Guard(model, probes="full", probe_every={"timesteps": 2}, spike_z=None)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(3):
        x = torch.randn(8, 30, 2)
        model(x).pow(2).mean().backward()
        guard.step(opt)
        opt.zero_grad()
    guard.flush()
    vectors = guard.recorder.vectors["timestep_grad_norm"]
    assert [(s, m) for s, m, _ in vectors] == [(1, "rnn"), (2, "rnn")]
    assert vectors[0][2].shape == (30,)
    found = {f.code: f for f in guard.findings()}
    assert found["VANISHING_GRADIENT"].where == ["rnn"]
    assert found["VANISHING_GRADIENT"].evidence["spectrum"]["side"] == "below"


def test_probe_values_reach_the_host_in_one_copy_per_device_not_one_per_value():
    """On an accelerator each device-to-host copy is a synchronisation; a probe step of a deep model
    yields hundreds of values. The copies made at a flush must not grow with their number."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountCopies(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.copies = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.__name__.startswith(("_to_copy", "copy_")):
                self.copies += 1
            return func(*args, **(kwargs or {}))

    model = mlp(depth=6)
    guard = gg.Guard(model, probes="business", probe_every=1, log_every=1000, spike_z=None)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(2):  # every step probes; the values wait in the monitor until the flush
        nn.functional.mse_loss(model(X[:32])[:, :1], Y[:32]).backward()
        guard.step(opt)
        opt.zero_grad()
    pending = sum(len(names) for _, _, names, _ in guard.monitor._pending)  # values waiting
    assert pending > 40
    with CountCopies() as counter:
        guard.monitor.flush(_empty_chunk(guard))
    assert counter.copies <= 4, f"{counter.copies} copies for {pending} values"
    assert all(len(entry) for _, entry in guard.recorder.records["error_norm"])


def _empty_chunk(guard):
    from gradguard._history import SCALARS, Chunk

    return Chunk(np.zeros(0, dtype=np.int64), {k: np.zeros(0) for k in SCALARS}, guard.module_names, np.zeros((0, len(guard.module_names))))


# ---------------------------------------------------------------- spikes
@pytest.mark.slow  # a training run of seconds: make test, not make test-fast
def test_spike_forensics_names_the_first_module_to_deviate():
    model = mlp(depth=3)
    guard = gg.Guard(model, log_every=10, spike_z=6.0)

    def inject(step, m):
        if step == 60:
            m[2].weight.grad.mul_(1e4)  # the spike starts in layer "2"

    train(model, guard, 80, hook=inject)
    spikes = [e for e in guard.recorder.events if e["kind"] == "spike"]
    assert spikes and spikes[0]["step"] == 60 and spikes[0]["trigger"] == "grad_norm"
    assert spikes[0]["first_module"] == "2"
    dump = next(e for e in guard.recorder.events if e["kind"] == "forensics")
    assert 60 in dump["steps"] and len(dump["module_norms"]) == len(dump["steps"])
    finding = next(f for f in guard.findings() if f.code == "GRADIENT_SPIKE")
    assert finding.where == ["2"]
    # The step after the spike was probed.
    assert 61 in [s for s, _ in guard.recorder.records["update_ratio"]]


@pytest.mark.slow  # a training run of seconds: make test, not make test-fast
def test_no_spike_on_a_steady_run():
    model = mlp(depth=3)
    guard = train(model, gg.Guard(model, log_every=10), 120)
    assert not [e for e in guard.recorder.events if e["kind"] == "spike"]
    assert "GRADIENT_SPIKE" not in codes(guard)


# ---------------------------------------------------------------- rules on training runs
@pytest.mark.slow  # a training run of seconds: make test, not make test-fast
def test_nonfinite_rule_with_the_located_module():
    class Fragile(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = mlp(depth=2, out=1)
            self.step = 0

        def forward(self, x):
            self.step += 1
            h = self.body(x)
            return torch.log(h - 100.0) if self.step in (31, 32) else h  # NaN on two consecutive steps

    torch.manual_seed(0)
    model = Fragile()
    guard = train(model, gg.Guard(model), 40)
    assert guard.skipped_steps == 2
    finding = next(f for f in guard.findings() if f.code == "NONFINITE")
    assert finding.severity == "error"
    assert finding.evidence["skipped_steps"] == 2 and finding.evidence["first_step"] == 31
    # Armed after the skip at step 31, the locator saw step 32's NaN appear in the model's own forward.
    assert "(model)" in finding.where
    healthy = mlp(depth=2, out=1)
    assert "NONFINITE" not in codes(train(healthy, gg.Guard(healthy), 40))


def test_exploding_growth_on_a_diverging_run_and_silent_on_a_stable_one():
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    guard = train(model, gg.Guard(model, max_consecutive_skips=1000, spike_z=None), 60, lr=1.3)
    assert "EXPLODING_GRADIENT" in codes(guard)
    stable = nn.Linear(8, 1)
    assert "EXPLODING_GRADIENT" not in codes(train(stable, gg.Guard(stable), 60, lr=0.05))


@pytest.mark.slow  # a training run of seconds: make test, not make test-fast
def test_clipping_always_never_and_the_recommended_threshold():
    always = mlp(depth=2, out=1)
    g1 = train(always, gg.Guard(always, clip=1e-4), 60)
    found = {f.code: f for f in g1.findings()}
    assert "CLIPPING_ALWAYS" in found
    norms = g1.history.norm_before
    assert found["CLIP_THRESHOLD"].evidence["recommended_max_norm"] == pytest.approx(np.percentile(norms, 90), rel=0.05)
    never = mlp(depth=2, out=1)
    g2 = train(never, gg.Guard(never, clip=1e6), 210)
    assert "CLIPPING_NEVER" in codes(g2) and "CLIPPING_ALWAYS" not in codes(g2)
    moderate = mlp(depth=2, out=1)
    g3 = train(moderate, gg.Guard(moderate, clip=float(np.percentile(norms, 90))), 60)
    assert not {"CLIPPING_ALWAYS", "CLIPPING_NEVER"} & codes(g3)
    short = mlp(depth=2, out=1)
    assert "CLIP_THRESHOLD" not in codes(train(short, gg.Guard(short), 10))


@pytest.mark.slow  # a training run of seconds: make test, not make test-fast
def test_update_ratio_rule():
    fast = mlp(depth=2, out=1)
    g = train(fast, gg.Guard(fast, probe_every=5), 20, opt=torch.optim.Adam(fast.parameters(), lr=1.0))
    assert "UPDATE_RATIO" in codes(g)
    slow = mlp(depth=2, out=1)
    assert "UPDATE_RATIO" not in codes(train(slow, gg.Guard(slow, probe_every=5), 20, opt=torch.optim.Adam(slow.parameters(), lr=1e-3)))


@pytest.mark.slow  # a training run of seconds: make test, not make test-fast
def test_vanishing_plateau_on_a_deep_sigmoid_net():
    def deep_sigmoid(seed=0):
        torch.manual_seed(seed)
        return nn.Sequential(*[m for _ in range(12) for m in (nn.Linear(8, 8), nn.Sigmoid())], nn.Linear(8, 1))

    model = deep_sigmoid()
    guard = train(model, gg.Guard(model, probe_every=5, spike_z=None), 120, lr=0.05, batch=128)
    finding = next(f for f in guard.findings() if f.code == "VANISHING_GRADIENT")
    assert finding.where == ["0"] and finding.evidence["update_ratio_first_layer"] < 1e-5
    shallow = mlp(depth=1, out=1)
    assert "VANISHING_GRADIENT" not in codes(train(shallow, gg.Guard(shallow, probe_every=5), 120, lr=0.05, batch=128))


@pytest.mark.slow  # a training run of seconds: make test, not make test-fast
def test_loss_oscillation_on_digits_with_a_too_high_adam_rate():
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16
    y = torch.tensor(digits.target)

    def run(lr):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        guard = gg.Guard(model, probes=None, spike_z=None)
        for _ in range(400):
            idx = torch.randint(0, len(x), (64,))
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            guard.step(opt, loss=loss)
            opt.zero_grad()
        return codes(guard)

    assert "LOSS_OSCILLATION" in run(0.1)
    assert "LOSS_OSCILLATION" not in run(0.003)


# ---------------------------------------------------------------- the run store
def test_store_holds_what_guard_measured(tmp_path):
    model = mlp(depth=2)
    path = tmp_path / "run.sqlite"
    guard = train(model, gg.Guard(model, store=path, probes="business", probe_every=5, name="unit"), 23)
    guard.close()
    with gg.RunStore(path) as store:
        steps = store.steps()
        assert steps["step"].tolist() == list(range(1, 24))
        np.testing.assert_allclose(steps["norm_before"], guard.history.norm_before)
        assert store.meta["name"] == "unit" and store.meta["module_names"] == guard.module_names
        at, names, grad = store.module_metric("grad_norm")
        np.testing.assert_allclose(grad, guard.history.module_norms)
        assert set(store.metrics()) >= {"grad_norm", "param_norm", "update_ratio", "error_norm", "saturation"}
        assert [f.code for f in store.findings()] == [f.code for f in guard.findings()]
        data = gg._rundata.RunData.from_store(store)
        assert [f.code for f in gg._rules.diagnose(data)] == [f.code for f in guard.findings()]


WRITER = textwrap.dedent(
    """
    import sys, time, torch, gradguard as gg
    from torch import nn
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    guard = gg.Guard(model, store=sys.argv[1], log_every=5)
    step = 0
    while True:
        step += 1
        model(torch.randn(8, 4)).pow(2).mean().backward()
        guard.step(opt)
        opt.zero_grad()
        if step % 5 == 0:
            print(step, flush=True)
        time.sleep(0.002)
    """
)


@pytest.mark.slow  # a training run of seconds: make test, not make test-fast
def test_store_survives_a_sigkill_of_the_writer(tmp_path):
    path = tmp_path / "killed.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        flushed = 0
        deadline = time.monotonic() + 120
        while flushed < 40 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line:
                flushed = int(line)
        assert flushed >= 40, "writer did not get going"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    with gg.RunStore(path) as store:
        steps = store.steps()["step"].tolist()
    # Every chunk committed before the kill is there, in order; at most the unflushed interval is lost.
    assert steps == list(range(1, len(steps) + 1))
    assert len(steps) >= flushed - 5


class Recurrent(nn.Module):
    """A linear or tanh SimpleRNN whose loss sits on the last step only."""

    def __init__(self, nonlinearity: str, radius: float, hidden: int = 16):
        super().__init__()
        torch.manual_seed(0)
        self.rnn = gg.rnn.SimpleRNN(2, hidden, nonlinearity=nonlinearity, batch_first=True)
        with torch.no_grad():
            self.rnn.weight_hh.copy_(radius * gg.rnn.random_orthogonal(hidden, generator=torch.Generator().manual_seed(1)))
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def recurrent_codes(nonlinearity, radius, probes="full"):
    model = Recurrent(nonlinearity, radius)
    guard = gg.Guard(model, probes=probes, spike_z=None)
    model(torch.randn(8, 40, 2, generator=torch.Generator().manual_seed(2))).pow(2).mean().backward()
    guard.step(torch.optim.SGD(model.parameters(), lr=0.0))
    return {f.code: f for f in guard.findings()}


def test_recurrent_timesteps_rule_on_linear_rnns():
    # ||dh_T/dh_t|| = r^(T-t) for an orthogonal matrix scaled by r: 1.25^39 ~ 6e3, 0.8^39 ~ 2e-4.
    assert recurrent_codes("identity", 1.25)["EXPLODING_GRADIENT"].where == ["rnn"]
    assert recurrent_codes("identity", 0.8)["VANISHING_GRADIENT"].where == ["rnn"]
    healthy = recurrent_codes("identity", 1.0)
    assert not {"EXPLODING_GRADIENT", "VANISHING_GRADIENT"} & set(healthy)


def test_recurrent_spectrum_is_reported_only_without_measured_timesteps():
    found = recurrent_codes("tanh", 0.5, probes="norms")
    assert found["RECURRENT_SPECTRUM"].severity == "info"
    assert found["RECURRENT_SPECTRUM"].evidence["spectra"]["rnn"]["side"] == "below"
    assert "RECURRENT_SPECTRUM" not in recurrent_codes("tanh", 0.5, probes="full")
    model = mlp()
    guard = train(model, gg.Guard(model), 3)
    assert "RECURRENT_SPECTRUM" not in codes(guard)
