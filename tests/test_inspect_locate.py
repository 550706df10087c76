"""Preflight inspection and non-finite localisation on real small models."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import gradguard as gg


def deep(act: type[nn.Module], init: str | None, depth: int = 20, width: int = 32, seed: int = 0, bias: float | None = None):
    torch.manual_seed(seed)
    layers = []
    for _ in range(depth):
        linear = nn.Linear(width, width)
        if init == "he":
            nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
        elif init == "xavier":
            nn.init.xavier_normal_(linear.weight)
        elif init == "large":
            nn.init.normal_(linear.weight, std=3.0 / width**0.5)
        elif init == "tiny":
            nn.init.normal_(linear.weight, std=0.01)
        if init is not None:
            nn.init.zeros_(linear.bias)
        if bias is not None:
            nn.init.constant_(linear.bias, bias)
        layers += [linear, act()]
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def closure_for(model, seed=1, width=32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, width, generator=gen)
    y = torch.randint(0, 10, (64,), generator=gen)
    return lambda: nn.functional.cross_entropy(model(x), y)


def codes(diagnosis):
    return {f.code for f in diagnosis.findings}


def test_deep_sigmoid_default_init_is_vanishing_relu_he_is_not():
    model = deep(nn.Sigmoid, None)
    sigmoid = gg.inspect(model, closure_for(model))
    assert "VANISHING_GRADIENT" in codes(sigmoid)
    finding = next(f for f in sigmoid.findings if f.code == "VANISHING_GRADIENT")
    assert finding.severity == "error" and finding.where[0] == "0"
    assert finding.evidence["ratio_first_to_last"] < 1e-9
    relu = deep(nn.ReLU, "he")
    healthy = gg.inspect(relu, closure_for(relu))
    assert not {"VANISHING_GRADIENT", "EXPLODING_GRADIENT"} & codes(healthy)
    # The table: one row per Linear in forward order, each followed by its activation.
    assert [r.name for r in healthy.layers][:3] == ["0", "2", "4"]
    assert healthy.layers[0].activation_type == "ReLU"
    assert healthy.layers[0].he_std == pytest.approx((2 / 32) ** 0.5)


def test_inspect_leaves_everything_as_it_was():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 2))
    x = torch.randn(32, 8)
    model(x).sum().backward()  # the user's own gradients, present before inspect
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    rng = torch.get_rng_state()
    gg.inspect(model, lambda: model(x).pow(2).mean())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # weights and BatchNorm running statistics
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, grads[n]), n
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize(
    "build, code",
    [
        (lambda: deep(nn.Tanh, "large", depth=6), "SATURATION"),
        (lambda: deep(nn.ReLU, "he", depth=6, bias=-3.0), "DEAD_UNITS"),
        (lambda: deep(nn.ReLU, "tiny", depth=6), "INIT_SCALE"),
    ],
)
def test_activation_and_scale_rules_fire_on_the_problem(build, code):
    model = build()
    assert code in codes(gg.inspect(model, closure_for(model)))


@pytest.mark.parametrize("build", [lambda: deep(nn.Tanh, "xavier", depth=6), lambda: deep(nn.ReLU, "he", depth=6)])
def test_activation_and_scale_rules_stay_silent_when_healthy(build):
    model = build()
    assert not {"SATURATION", "DEAD_UNITS", "INIT_SCALE"} & codes(gg.inspect(model, closure_for(model)))


def test_exploding_across_depth():
    torch.manual_seed(0)
    layers = []
    for _ in range(12):
        linear = nn.Linear(32, 32, bias=False)
        nn.init.normal_(linear.weight, std=2 * (2 / 32) ** 0.5)  # twice the He scale: ~2x per layer
        layers += [linear, nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(32, 10))
    found = gg.inspect(model, closure_for(model))
    assert "EXPLODING_GRADIENT" in codes(found)


class Block(nn.Module):
    def __init__(self, bad: str | None = None):
        super().__init__()
        self.linear = nn.Linear(8, 8)
        self.bad = bad

    def forward(self, x):
        h = torch.tanh(self.linear(x))
        if self.bad == "log":
            return torch.log(h - 2.0)  # tanh < 1, so log of a negative number: NaN in the forward pass
        if self.bad == "sqrt":
            return torch.sqrt(h * 0.0)  # finite forward value 0, infinite derivative in backward
        return h


def chain(bad_at: int | None, kind: str = "log"):
    torch.manual_seed(0)
    return nn.Sequential(*[Block(kind if i == bad_at else None) for i in range(5)], nn.Linear(8, 1))


def test_locate_names_the_block_that_takes_the_log_of_a_negative_number():
    model = chain(2, "log")
    x = torch.randn(4, 8)
    finding = gg.locate_nonfinite(model, lambda: model(x).mean())
    assert finding is not None and finding.code == "NONFINITE"
    assert finding.where[0] == "2"  # the third block, not the loss or the last layer
    assert finding.evidence == {"direction": "forward", "produced": True, "value": "NaN"}


def test_locate_finds_a_backward_only_producer():
    model = chain(3, "sqrt")
    x = torch.randn(4, 8)
    finding = gg.locate_nonfinite(model, lambda: model(x).mean())
    assert finding.where[0] == "3"
    assert finding.evidence["direction"] == "backward" and finding.evidence["produced"]


def test_locate_returns_none_when_all_is_finite_and_restores_grads():
    model = chain(None)
    x = torch.randn(4, 8)
    assert gg.locate_nonfinite(model, lambda: model(x).mean()) is None
    assert all(p.grad is None for p in model.parameters())


def test_locate_reports_data_that_arrives_non_finite_as_passed_on():
    model = chain(None)
    x = torch.randn(4, 8)
    x[0, 0] = float("nan")
    finding = gg.locate_nonfinite(model, lambda: model(x).mean())
    assert finding.evidence["produced"] is False and finding.where[0] == "0.linear"


def test_inspect_cli_prints_the_table_and_findings(tmp_path):
    (tmp_path / "nets.py").write_text(textwrap.dedent(
        """
        from torch import nn
        def deep_sigmoid():
            return nn.Sequential(*[m for _ in range(20) for m in (nn.Linear(16, 16), nn.Sigmoid())], nn.Linear(16, 4))
        """
    ))
    cmd = [sys.executable, "-m", "gradguard", "inspect", "nets:deep_sigmoid", "--input-shape", "32", "16", "--classes", "4", "--json"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr  # an ERROR finding fails the command (--fail-on error, the default)
    result = json.loads(out.stdout)
    assert len(result["layers"]) == 21
    assert result["findings"][0]["code"] == "VANISHING_GRADIENT"
    typo = subprocess.run(cmd[:4] + ["nets:deep_sigmod", "--input-shape", "32", "16"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert typo.returncode == 2 and "Did you mean 'deep_sigmoid'" in typo.stderr
