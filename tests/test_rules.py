"""Every diagnosis rule, on hand-built run data: each fires on the case it is for and stays silent
on its healthy counterpart. Table-driven over the registry, so a new rule without cases fails."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradguard._rules import RULES, diagnose
from gradguard._rundata import RunData


def run(norms, *, loss=None, lr=None, skipped=None, clipped=None, records=None, events=None, meta=None, vectors=None):
    """RunData with one module and the given per-step columns (steps numbered from 1)."""
    norms = np.asarray(norms, dtype=float)
    n = len(norms)
    scalars = {
        "norm_before": norms,
        "norm_after": norms,
        "threshold": np.full(n, np.inf),
        "clipped": np.zeros(n, bool) if clipped is None else np.asarray(clipped, bool),
        "skipped": (~np.isfinite(norms)) if skipped is None else np.asarray(skipped, bool),
        "loss": np.full(n, 1.0) if loss is None else np.asarray(loss, dtype=float),
    }
    if lr is not None:
        scalars["lr"] = np.broadcast_to(np.asarray(lr, dtype=float), (n,)).copy()
    return RunData(np.arange(1, n + 1), scalars, ["net"], norms.reshape(n, 1), records or {}, vectors or {}, events or [], meta or {})


STABLE = [0.5 + 0.01 * math.sin(i) for i in range(60)]
DECREASING_LOSS = [2.3 * 0.98**i for i in range(60)]
BLOWUP = [0.25, 7.3, 16.0, 911.0, 8.9e6, 9.5e17, math.inf, math.inf]


def layers(values):
    """A record at step 1 over layers l0, l1, ... in forward order."""
    return [(1, {f"l{i}": float(v) for i, v in enumerate(values)})]


INPUTS_FP16 = {"inputs": {"autocast_dtype": "float16", "param_dtypes": ["float32"], "batch_size": 16, "micro_batches": 1}}
LOCATED_FWD = [{"step": 2, "kind": "nonfinite_location", "where": ["pool"], "direction": "forward", "produced": True, "value": "Inf",
                "message": "Inf first appears in the forward output of 'pool'", "remedy": "..."}]

# rule -> [(case name, run data, expected code or None)]
CASES = {
    "nonfinite_input": [
        ("nan in batch 5", run(STABLE[:4] + [math.nan] + STABLE[:5], events=[{"step": 5, "kind": "nonfinite_input", "what": "input[0]", "inputs": ["input[0]"]}]), "NONFINITE_INPUT"),
        ("clean run", run(STABLE), None),
    ],
    "scaler_collapse": [
        ("every step skipped", run([math.inf] * 12, meta={"scaler": True}, events=LOCATED_FWD), "SCALER_COLLAPSE"),
        ("a few overflows while the scale settles", run([math.inf] * 3 + STABLE, meta={"scaler": True}), None),
        ("every step skipped, no scaler", run([math.inf] * 12), None),
    ],
    "fp16_overflow": [
        ("module overflows under fp16 autocast", run([math.inf] * 5, meta=INPUTS_FP16, events=LOCATED_FWD), "FP16_OVERFLOW"),
        ("same in float32", run([math.inf] * 5, events=LOCATED_FWD), None),
        ("fp16 and finite", run(STABLE, meta=INPUTS_FP16), None),
    ],
    "loss_not_averaged": [
        ("summed over 512", run(BLOWUP, loss=[1180.0] * len(BLOWUP), meta={"inputs": {"batch_size": 512}}), "LOSS_NOT_AVERAGED"),
        ("8 micro-batches and a blow-up", run(BLOWUP, meta={"inputs": {"batch_size": 16, "micro_batches": 8}}), "LOSS_NOT_AVERAGED"),
        ("averaged loss, stable", run(STABLE, loss=DECREASING_LOSS, meta={"inputs": {"batch_size": 512, "micro_batches": 1}}), None),
        ("8 micro-batches, stable", run(STABLE, loss=DECREASING_LOSS, meta={"inputs": {"batch_size": 16, "micro_batches": 8}}), None),
    ],
    "lr_too_high": [
        ("SGD blow-up at lr 30", run(BLOWUP, lr=30.0), "LR_TOO_HIGH"),
        ("lr ramp past the stable rate", run([0.5] * 80, loss=[2.0 - 0.02 * i for i in range(40)] + [1.2 + 0.05 * i for i in range(40)], lr=np.linspace(0.1, 40, 80)), "LR_TOO_HIGH"),
        ("lr spike kills the run", run([0.5] * 60, loss=[1.0] * 30 + [2.3] * 30, lr=[0.5] * 29 + [100.0] + [0.5] * 30), "LR_TOO_HIGH"),
        ("updates of half the weights per step, no progress", run(STABLE, loss=[2.3] * 60, lr=0.3, records={"update_ratio": [(1, {"net": 0.5})]}), "LR_TOO_HIGH"),
        ("stable", run(STABLE, loss=DECREASING_LOSS, lr=1e-3, records={"update_ratio": [(1, {"net": 1e-3})]}), None),
        ("one 10x step, then calm", run([0.3, 30.0] + STABLE, lr=0.3), None),
    ],
    "init_scale": [
        ("pre-activations grow 3x per layer", run(BLOWUP, records={"preact_std": layers(3.0 ** np.arange(7))}), "INIT_SCALE"),
        ("pre-activations shrink 0.1x per layer", run(STABLE, records={"preact_std": layers(0.1 ** np.arange(7))}), "INIT_SCALE"),
        ("default init, shallow: 0.82x per layer", run(STABLE, records={"preact_std": layers(0.82 ** np.arange(3))}), None),
        ("stock nn.Linear off He scale but the flow is fine",
         run([1.0], meta={"layers": [{"name": f"l{i}", "activation": "ReLU", "weight_std": 0.041, "xavier_std": 0.1, "he_std": 0.1} for i in range(3)]},
             records={"error_norm": layers([1.0, 0.9, 0.8])}), None),
        ("sigmoid at Xavier gain 1 is on scale",
         run([1.0], meta={"layers": [{"name": "l0", "activation": "Sigmoid", "weight_std": 0.1, "xavier_std": 0.1, "he_std": 0.14}]},
             records={"saturation": layers([0.9])}), None),
    ],
    "vanishing_depth": [
        ("errors shrink 1e5x", run([1.0], records={"error_norm": layers([1e-5, 1e-3, 1e-1, 1.0])}), "VANISHING_GRADIENT"),
        ("errors level", run([1.0], records={"error_norm": layers([0.5, 0.7, 1.0])}), None),
    ],
    "vanishing_plateau": [
        ("stalled loss, first layer frozen", run(STABLE, loss=[1.0] * 60, records={"update_ratio": [(s, {"net": 1e-7}) for s in (10, 20, 30)]}), "VANISHING_GRADIENT"),
        ("loss still falling", run(STABLE, loss=DECREASING_LOSS, records={"update_ratio": [(s, {"net": 1e-7}) for s in (10, 20, 30)]}), None),
    ],
    "exploding": [
        ("norm grows 1000x", run(np.logspace(0, 3, 60)), "EXPLODING_GRADIENT"),
        ("steady", run(STABLE), None),
    ],
    "spikes": [
        ("one spike", run(STABLE, events=[{"step": 30, "kind": "spike", "trigger": "grad_norm", "z": 9.0, "first_module": "net"}]), "GRADIENT_SPIKE"),
        ("a non-finite dump is not a spike", run(STABLE, events=[{"step": 30, "kind": "spike", "trigger": "nonfinite"}]), None),
    ],
    "loss_oscillation": [
        ("climbs back and bounces", run([1.0] * 240, loss=list(np.linspace(2, 0.1, 140)) + [0.2, 1.0] * 50), "LOSS_OSCILLATION"),
        ("converging", run([1.0] * 240, loss=list(np.linspace(2, 0.1, 240))), None),
    ],
    "nonfinite": [
        ("one skipped step", run(STABLE[:10] + [math.nan] + STABLE[:10]), "NONFINITE"),
        ("all finite", run(STABLE), None),
    ],
    "saturation": [
        ("90% saturated", run([1.0], records={"saturation": [(1, {"act": 0.9})]}), "SATURATION"),
        ("10% saturated", run([1.0], records={"saturation": [(1, {"act": 0.1})]}), None),
    ],
    "dead_units": [
        ("80% dead", run([1.0], records={"dead_fraction": [(1, {"relu": 0.8})]}), "DEAD_UNITS"),
        ("10% dead", run([1.0], records={"dead_fraction": [(1, {"relu": 0.1})]}), None),
    ],
    "clipping_activity": [
        ("clipped on each of 16 steps", run(STABLE[:16], clipped=[True] * 16, meta={"clipper": {"name": "norm", "max_norm": 0.1}}), "CLIPPING_ALWAYS"),
        ("clipped on 10 steps: too early to say", run(STABLE[:10], clipped=[True] * 10, meta={"clipper": {"name": "norm", "max_norm": 0.1}}), None),
        ("clipped now and then", run(STABLE, clipped=[i % 10 == 0 for i in range(60)], meta={"clipper": {"name": "norm", "max_norm": 0.51}}), None),
    ],
    "clip_threshold": [
        ("enough steps to recommend", run(STABLE), "CLIP_THRESHOLD"),
        ("too few steps", run(STABLE[:5]), None),
    ],
    "recurrent_timesteps": [
        ("0.6 per step, underflowing", run([1.0], vectors={"timestep_grad_norm": [(1, "rnn", (0.6 ** np.arange(300)[::-1]).astype(np.float32).astype(float))]}), "VANISHING_GRADIENT"),
        ("level over time", run([1.0], vectors={"timestep_grad_norm": [(1, "rnn", np.ones(50))]}), None),
    ],
    "recurrent_spectrum": [
        ("radius below 1/gamma", run([1.0], meta={"recurrent": {"rnn": {"sigma_max": 0.5, "gamma": 1.0}}}), "RECURRENT_SPECTRUM"),
        ("no recurrent module", run([1.0]), None),
    ],
    "update_ratio": [
        ("weights move 50% per step", run([1.0], records={"update_ratio": [(1, {"net": 0.5})]}), "UPDATE_RATIO"),
        ("1e-3 per step", run([1.0], records={"update_ratio": [(1, {"net": 1e-3})]}), None),
    ],
}

TABLE = [(rule, name, data, code) for rule, cases in CASES.items() for name, data, code in cases]


def test_every_rule_has_firing_and_silent_cases():
    assert set(CASES) == set(RULES), f"rules without cases: {set(RULES) - set(CASES)}; cases without a rule: {set(CASES) - set(RULES)}"
    for rule, cases in CASES.items():
        codes = [code for _, _, code in cases]
        assert None in codes and any(codes), f"{rule} needs a firing and a silent case"


@pytest.mark.parametrize(("rule", "name", "data", "code"), TABLE, ids=[f"{r}-{n}" for r, n, _, _ in TABLE])
def test_rule(rule, name, data, code):
    finding = RULES[rule](data)
    if code is None:
        assert finding is None, f"{rule} fired on {name!r}: {finding}"
        return
    assert finding is not None and finding.code == code, f"{rule} on {name!r}: {finding}"
    assert isinstance(finding.fix, dict)
    assert finding.to_dict()["code"] == code


def test_blowup_named_as_learning_rate_with_a_concrete_rate():
    found = diagnose(run(BLOWUP, lr=30.0))
    assert found[0].code == "LR_TOO_HIGH" and found[0].severity == "error"
    assert found[0].step == 5  # the second 10x step, before the first non-finite one (7)
    assert 0 < found[0].fix["lr"] < 30.0 and "warmup_steps" not in found[0].fix  # plain SGD: no warm-up
    nonfinite = next(f for f in found if f.code == "NONFINITE")
    assert nonfinite.caused_by == "LR_TOO_HIGH"
    assert found.index(nonfinite) > 0


def test_adam_blowup_gets_a_warmup():
    found = diagnose(run(BLOWUP, lr=0.1, meta={"optimizer": "AdamW"}))
    assert found[0].code == "LR_TOO_HIGH" and found[0].fix["warmup_steps"] >= 20


def test_blowup_with_exploding_preactivations_is_the_init():
    found = diagnose(run(BLOWUP, lr=0.1, records={"preact_std": layers(3.0 ** np.arange(7))}))
    assert found[0].code == "INIT_SCALE" and found[0].fix == {"init": "he"}
    assert all(f.code != "LR_TOO_HIGH" for f in found)


def test_lr_ramp_remedy_is_half_the_largest_stable_rate():
    lr = np.linspace(0.1, 40, 80)
    finding = RULES["lr_too_high"](run([0.5] * 80, loss=[2.0 - 0.02 * i for i in range(40)] + [1.2 + 0.05 * i for i in range(40)], lr=lr))
    assert finding.evidence["stable_lr"] == pytest.approx(lr[39], rel=0.1)
    assert finding.fix["lr"] == pytest.approx(0.5 * lr[39], rel=0.1)


def test_recurrent_underflow_message_uses_logs():
    v = (0.6 ** np.arange(300)[::-1]).astype(np.float32).astype(float)
    assert v[0] == 0.0  # the premise: the first norm underflowed
    finding = RULES["recurrent_timesteps"](run([1.0], vectors={"timestep_grad_norm": [(1, "rnn", v)]}))
    assert "0x per step" not in finding.message
    assert finding.evidence["per_step_factor"] == pytest.approx(1 / 0.6, rel=0.01) or finding.evidence["per_step_factor"] == pytest.approx(0.6, rel=0.01)


def test_init_gain_matches_the_activation():
    hurt = {"saturation": layers([0.9])}
    tanh_layer = [{"name": "l0", "activation": "Tanh", "weight_std": 0.5, "xavier_std": 0.1, "he_std": 0.14}]
    sig_layer = [{"name": "l0", "activation": "Sigmoid", "weight_std": 0.5, "xavier_std": 0.1, "he_std": 0.14}]
    tanh = RULES["init_scale"](run([1.0], meta={"layers": tanh_layer}, records=hurt))
    sig = RULES["init_scale"](run([1.0], meta={"layers": sig_layer}, records=hurt))
    assert "calculate_gain('tanh')" in tanh.remedy
    assert "calculate_gain('sigmoid')" in sig.remedy and "tanh" not in sig.remedy
    assert sig.evidence["layers"]["l0"]["target_std"] == pytest.approx(0.1)  # sigmoid's gain is 1
    assert tanh.evidence["layers"]["l0"]["target_std"] == pytest.approx(0.1 * 5 / 3)


def test_one_off_nonfinite_says_likely_the_batch():
    finding = RULES["nonfinite"](run(STABLE[:10] + [math.nan] + STABLE[:10]))
    assert "one-off, likely the batch" in finding.message
    assert finding.severity == "warning"


def test_nonfinite_input_one_off():
    data = run(STABLE[:4] + [math.nan] + STABLE[:5], events=[{"step": 5, "kind": "nonfinite_input", "what": "input[0]", "inputs": ["input[0]"]}])
    found = diagnose(data)
    assert found[0].code == "NONFINITE_INPUT"
    assert "non-finite input in the batch at step 5" in found[0].message.lower()
    assert "one-off" in found[0].message.lower()
    assert next(f for f in found if f.code == "NONFINITE").caused_by == "NONFINITE_INPUT"


def test_summed_loss_outranks_the_learning_rate():
    found = diagnose(run(BLOWUP, lr=0.5, loss=[1180.0] * len(BLOWUP), meta={"inputs": {"batch_size": 512}}))
    assert found[0].code == "LOSS_NOT_AVERAGED" and found[0].fix == {"loss_reduction": "mean"}
    lr = next(f for f in found if f.code == "LR_TOO_HIGH")
    assert lr.caused_by == "LOSS_NOT_AVERAGED"


@pytest.mark.parametrize(("integration", "lr_text", "clip_text"), [
    (None, "torch.optim.SGD(model.parameters(), lr=", "gg.Guard(model, clip=gg.ClipNorm(max_norm="),
    ("lightning", "configure_optimizers", "GradGuardCallback(clip="),
    ("huggingface", "TrainingArguments(learning_rate=", "max_grad_norm=0) with callbacks=[GradGuardCallback(clip="),
])
def test_remedy_in_the_integrations_syntax(integration, lr_text, clip_text):
    meta = {"optimizer": "SGD", "clipper": {"name": "norm", "max_norm": 0.1}}
    if integration:
        meta["integration"] = integration
    lr_finding = RULES["lr_too_high"](run(BLOWUP, lr=30.0, meta=meta))
    assert lr_text in lr_finding.remedy
    clip = RULES["clipping_activity"](run(STABLE[:30], clipped=[True] * 30, meta=meta))
    assert clip_text in clip.remedy
    if integration != "plain" and integration:
        assert "gg.Guard(" not in clip.remedy
    hf_adam = RULES["lr_too_high"](run(BLOWUP, lr=30.0, meta={**meta, "optimizer": "AdamW"}))
    if integration == "huggingface":
        assert "warmup_steps=" in hf_adam.remedy


def test_healthy_runs_get_no_warning():
    quiet = [run(STABLE, loss=DECREASING_LOSS, lr=1e-3, records={"update_ratio": [(1, {"net": 2e-3})], "preact_std": layers([1.0, 0.8, 0.7])})]
    for data in quiet:
        assert not [f for f in diagnose(data) if f.severity != "info"]


def _mlp(depth, act, scale=1.0, width=64):
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        lin = nn.Linear(width, width)
        with torch.no_grad():
            lin.weight.mul_(scale)
        layers += [lin, act()]
    return nn.Sequential(*layers, nn.Linear(width, 1))


def test_inspect_is_quiet_about_pytorch_default_init_of_a_healthy_net():
    import torch
    from torch import nn

    import gradguard as gg

    for act in (nn.ReLU, nn.Tanh, nn.Sigmoid):
        net = _mlp(3, act)
        x = torch.randn(128, 64)
        found = gg.inspect(net, lambda net=net, x=x: net(x).pow(2).mean()).findings
        assert all(f.code != "INIT_SCALE" for f in found), f"{act.__name__}: {[str(f) for f in found]}"


def test_inspect_names_an_init_that_hurts():
    import torch
    from torch import nn

    import gradguard as gg

    net = _mlp(6, nn.Tanh, scale=8.0)
    x = torch.randn(128, 64)
    found = gg.inspect(net, lambda: net(x).pow(2).mean()).findings
    init = next(f for f in found if f.code == "INIT_SCALE")
    assert init.fix == {"init": "xavier"} and "calculate_gain('tanh')" in init.remedy
