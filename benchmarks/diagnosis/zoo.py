"""The zoo: small broken training runs with a known root cause, a known fix and a healthy twin.

Each scenario is data: the config of the broken run (overrides of ``train.BASE``), the codes a
correct diagnosis may name first (``causes``), the fix that is known to make it train (a config
change, the same vocabulary as ``Finding.fix``) and the step at which the problem starts
(``onset``). The healthy twin is the broken config with the known fix applied. Healthy controls
have no causes: any warning on them is a false alarm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from benchmarks.diagnosis.train import apply_fix, config


@dataclass(frozen=True)
class Scenario:
    name: str
    overrides: dict[str, Any]
    causes: tuple[str, ...] = ()  # empty: a healthy control
    fix: dict[str, Any] = field(default_factory=dict)
    onset: int = 1  # the step at which the problem starts
    lr_blowup: bool = False  # counts toward the detection-latency target
    note: str = ""

    @property
    def healthy(self) -> bool:
        return not self.causes

    def config(self, steps: int | None = None) -> dict[str, Any]:
        """The broken run's config (``steps`` shortens it, for the smoke test)."""
        return config(**{**self.overrides, **({"steps": steps} if steps else {})})

    def twin(self, steps: int | None = None) -> dict[str, Any]:
        cfg, unused = apply_fix(self.config(steps), self.fix)
        assert not unused, f"{self.name}: the zoo's own fix uses unknown keys {unused}"
        return cfg


LR = ("LR_TOO_HIGH",)
MLP3 = {"depth": 3}
TRANSFORMER = {"model": "transformer", "width": 32, "depth": 2, "batch": 16, "steps": 100}
SET = {"model": "set", "width": 32, "batch": 16, "steps": 100}
SEQ = {"model": "rnn", "width": 32, "batch": 32, "steps": 150}

SCENARIOS: tuple[Scenario, ...] = (
    # ----------------------------------------------------------------- learning rate
    Scenario("lr_sgd_mlp_fast", {**MLP3, "optimizer": "sgd", "lr": 30.0}, LR, {"lr": 0.5}, lr_blowup=True,
             note="SGD at lr 30: the norm grows ~50x per step, Inf by step 7"),
    Scenario("lr_adam_mlp", {**MLP3, "lr": 0.3}, LR, {"lr": 1e-3}, lr_blowup=True, note="Adam at lr 0.3"),
    Scenario("lr_sgd_transformer_fast", {**TRANSFORMER, "optimizer": "sgd", "lr": 30.0}, LR, {"lr": 0.5}, lr_blowup=True,
             note="the GPT-2-at-lr-30 report, small"),
    Scenario("lr_adam_lstm", {**SEQ, "cell": "lstm", "lr": 0.5}, LR, {"lr": 1e-2}, lr_blowup=True),
    Scenario("lr_sgd_ramp_slow", {**MLP3, "optimizer": "sgd", "lr": 0.05, "lr_ramp": (500, 30.0), "steps": 300}, LR, {"lr": 0.5},
             lr_blowup=True, note="a schedule ramping the lr by 0.06 a step: a slow blow-up, non-finite after ~200 steps"),
    Scenario("adam_postln_no_warmup", {**TRANSFORMER, "ln": "post", "depth": 3, "lr": 0.05}, LR, {"lr": 1e-3, "warmup_steps": 50},
             lr_blowup=True, note="Adam on a post-LN transformer, no warm-up"),
    # ----------------------------------------------------------------- init and depth
    Scenario("init_too_large", {"depth": 8, "init_scale": 4.0, "optimizer": "sgd", "lr": 0.1}, ("INIT_SCALE", "EXPLODING_GRADIENT"), {"init": "he"}),
    Scenario("init_too_small", {"depth": 8, "init_scale": 0.1, "optimizer": "sgd", "lr": 0.1}, ("INIT_SCALE", "VANISHING_GRADIENT"), {"init": "he"}),
    Scenario("deep_sigmoid_mlp", {"depth": 12, "activation": "sigmoid", "optimizer": "sgd", "lr": 0.1},
             ("VANISHING_GRADIENT", "SATURATION"), {"activation": "relu", "init": "he"}),
    Scenario("deep_tanh_saturated", {"depth": 8, "activation": "tanh", "init_scale": 10.0, "optimizer": "sgd", "lr": 0.1},
             ("SATURATION", "INIT_SCALE", "VANISHING_GRADIENT"), {"init": "xavier"}),
    Scenario("deep_plain_cnn", {"model": "cnn", "width": 8, "depth": 20, "batch": 8, "optimizer": "sgd", "lr": 0.05, "steps": 80},
             ("VANISHING_GRADIENT", "INIT_SCALE"), {"norm": "batch"}),
    Scenario("rnn_tanh_long", {**SEQ, "seq_len": 60, "probes": "full", "lr": 3e-3}, ("VANISHING_GRADIENT",), {"cell": "lstm"}),
    Scenario("rnn_radius_large", {**SEQ, "cell": "relu", "recurrent_radius": 2.5, "seq_len": 30, "probes": "full"},
             ("EXPLODING_GRADIENT", "RECURRENT_SPECTRUM"), {"init": "orthogonal", "clip": 1.0}),
    # ----------------------------------------------------------------- non-finite values
    Scenario("nan_input_batch", {"bad_batch": (40, float("nan")), "nonfinite": "ignore"}, ("NONFINITE_INPUT",), {"nonfinite": "skip"}, onset=40),
    Scenario("inf_input_batch", {"model": "cnn", "width": 8, "depth": 3, "batch": 32, "bad_batch": (30, float("inf")), "nonfinite": "ignore", "steps": 120},
             ("NONFINITE_INPUT",), {"nonfinite": "skip"}, onset=30),
    Scenario("log_of_negative", {"fault": "log"}, ("NONFINITE",), {"eps": 1e-6}),
    Scenario("sqrt_at_zero", {"fault": "sqrt"}, ("NONFINITE",), {"eps": 1e-6}),
    Scenario("division_by_zero", {**SET, "fault": "div"}, ("NONFINITE",), {"eps": 1e-6}),
    # ----------------------------------------------------------------- float16
    Scenario("fp16_pure_adam", {"precision": "fp16_pure"}, ("FP16_OVERFLOW",), {"precision": "bf16"},
             note="model.half() with Adam and no scaler: the update overflows"),
    Scenario("fp16_forward_overflow", {**SET, "precision": "fp16", "input_scale": 200.0}, ("FP16_OVERFLOW",), {"precision": "bf16"},
             note="a sum over 512 positions passes 65504 in the pooling module"),
    Scenario("scaler_collapse", {**SET, "precision": "fp16", "scaler": True, "input_scale": 200.0}, ("SCALER_COLLAPSE", "FP16_OVERFLOW"),
             {"precision": "bf16"}, note="GradScaler skips every step, its scale falls toward 0"),
    # ----------------------------------------------------------------- units and losses
    Scenario("dead_relu_bias", {"depth": 4, "bias_init": -3.0}, ("DEAD_UNITS",), {"init": "he"}),
    Scenario("dead_relu_lr_spike", {"depth": 4, "optimizer": "sgd", "lr": 0.5, "lr_spike": (50, 200.0)}, ("DEAD_UNITS", "LR_TOO_HIGH"),
             {"lr": 0.5}, onset=50),
    Scenario("loss_summed_over_batch", {**MLP3, "optimizer": "sgd", "lr": 0.5, "batch": 512, "loss_reduction": "sum"},
             ("LOSS_NOT_AVERAGED",), {"loss_reduction": "mean"}),
    Scenario("accumulation_not_divided", {**MLP3, "optimizer": "sgd", "lr": 0.5, "accum": 8, "batch": 16, "steps": 150},
             ("LOSS_NOT_AVERAGED",), {"loss_scale": 1 / 8}),
    # ----------------------------------------------------------------- healthy controls
    Scenario("healthy_mlp", {**MLP3}),
    Scenario("healthy_cnn", {"model": "cnn", "width": 8, "depth": 4, "norm": "batch", "batch": 32, "steps": 150}),
    Scenario("healthy_lstm", {**SEQ, "cell": "lstm", "lr": 1e-2, "probes": "full"}),
    Scenario("healthy_transformer", {**TRANSFORMER, "optimizer": "adamw", "warmup_steps": 20}),
    Scenario("healthy_clip_occasional", {**MLP3, "optimizer": "sgd", "lr": 0.5, "clip": 1.0}),
    Scenario("healthy_amp_large_scale", {**MLP3, "precision": "fp16", "scaler": True, "scaler_init_scale": 2.0**24},
             note="float16 autocast with a GradScaler started at 2**24: it skips its first steps while the scale backs off, then trains"),
)

BY_NAME = {s.name: s for s in SCENARIOS}
SMOKE = ("lr_sgd_mlp_fast", "nan_input_batch", "sqrt_at_zero", "loss_summed_over_batch", "healthy_mlp")
SMOKE_STEPS = 60  # long enough for each of them to break (the NaN batch comes at step 40)
