"""clipping: a tanh RNN on the adding problem at a learning rate too high for it, under each clipper.

Plain SGD at lr 0.5 throws the unclipped network off Pascanu et al.'s "cliffs": the gradient norm
overflows within a few steps. Each job trains the same network (same init, same batches) under
one clipper, through ``gg.Guard`` with ``nonfinite="skip"``, and reports the test MSE, whether
it diverged, the share of steps clipped and the steps skipped as non-finite.

The claim is about divergence, not about solving the task: at this rate and budget no clipped
run gets far below the 1/6 baseline. Clippers whose threshold follows the run's own norms
(AutoClip's percentile, ZClip's unclipped warm-up) can follow a divergence that starts at step
one; the per-clipper rows show whether they did.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import torch

import gradguard as gg
from gradguard.lab.models import SeqModel
from gradguard.lab.registry import Context, Experiment, Figure, Verdict, register
from gradguard.lab.tasks import Adding
from gradguard.lab.train import evaluate, fit, history_summary, loss_curve, make_optimizer, tail_mean

CLAIM = (
    "At a learning rate where an unclipped tanh RNN diverges (its gradient norm overflows), clipping the global "
    "norm keeps training finite."
)
ANCHOR = (
    "Pascanu et al. 2013, section 3.2 and Table 1 (norm clipping, MSGD-C vs MSGD); Kumar et al. 2025 (ZClip), "
    "Fig. 1: no clipping diverges at a high learning rate"
)


def clippers(cfg) -> dict:
    """Each clipper at the setting a user would reach for first (the library defaults where there are any)."""
    return {
        "none": None,
        "norm": gg.ClipNorm(cfg.max_norm),
        "value": gg.ClipValue(cfg.clip_value),
        "tensor_norm": gg.ClipTensorNorm(cfg.max_norm),
        "agc": gg.AGC(),  # lambda = 0.01, eps = 1e-3 (Brock et al. 2021)
        "autoclip": gg.AutoClip(),  # 10th percentile of past norms (Seetharaman et al. 2020)
        "zclip": gg.ZClip(),  # alpha 0.97, z 2.5, 25 warm-up steps (Kumar et al. 2025)
    }


@dataclass
class Config:
    length: int = 40  # adding problem (modern form), T steps
    hidden: int = 64
    steps: int = 600
    batch: int = 32
    lr: float = 0.5  # plain SGD; the unclipped run's gradient norm overflows within a few steps
    max_norm: float = 1.0  # ClipNorm and ClipTensorNorm threshold (the uRNN paper clips at 1)
    clip_value: float = 0.01  # ClipValue: about max_norm / sqrt(#parameters), the same scale element-wise
    test_size: int = 2000
    variants: tuple = ("none", "norm", "value", "tensor_norm", "agc", "autoclip", "zclip")


QUICK = Config()
FULL = Config(length=100, hidden=128, steps=5000)
SMOKE = Config(length=10, hidden=8, steps=30, test_size=100)


def variants(cfg: Config) -> list[str]:
    return list(cfg.variants)


def run(cfg: Config, variant: str, seed: int, ctx: Context) -> dict:
    task = Adding(cfg.length)
    torch.manual_seed(seed)
    model = SeqModel("rnn", task.input_size, task.output_size, hidden=cfg.hidden).to(ctx.device)
    opt = make_optimizer("sgd", model.parameters(), cfg.lr)
    guard = gg.Guard(model, clip=clippers(cfg)[variant], nonfinite="skip", max_consecutive_skips=cfg.steps, log_every=50, store=ctx.store_path(variant), name=f"clipping {variant}")
    fit(model, task, opt, guard, steps=cfg.steps, batch=cfg.batch, seed=seed, device=ctx.device)  # the same batches for every clipper
    x_test, y_test = task.batch(cfg.test_size, torch.Generator().manual_seed(1_000_000 + seed))
    test = evaluate(model, task, x_test, y_test)
    baseline = task.baseline().loss
    return {
        "test_mse": test["error"],
        "final_train_loss": tail_mean(guard.history.loss),
        "diverged": not math.isfinite(test["error"]) or test["error"] > 10 * baseline,
        "baseline_mse": baseline,
        "max_step_norm": float(guard.history.norm_after.max()),
        **loss_curve(guard.history),
        **history_summary(guard.history),
    }


def judge(cfg: Config, jobs: list[dict]) -> Verdict:
    def share(variant: str, key: str) -> float:
        values = [float(j["metrics"][key]) for j in jobs if j["variant"] == variant]
        return sum(values) / len(values)

    diverged = {v: share(v, "diverged") for v in cfg.variants}
    mse = {v: statistics.median(j["metrics"]["test_mse"] for j in jobs if j["variant"] == v) for v in cfg.variants}
    clipped = {v: share(v, "clipped_share") for v in cfg.variants}
    skipped = {v: share(v, "skipped_steps") for v in cfg.variants}
    passed = diverged["none"] == 1.0 and diverged["norm"] == 0.0
    summary = "; ".join(
        f"{v}: {'diverged' if diverged[v] == 1 else f'diverged in {diverged[v]:.0%} of seeds' if diverged[v] else f'MSE {mse[v]:.3g}'}, clipped {clipped[v]:.0%}, skipped {skipped[v]:.0f}"
        for v in cfg.variants
    )
    return Verdict(
        passed,
        "no clipping diverges (test MSE non-finite or above 10x the 1/6 baseline) in every seed, and ClipNorm in none",
        summary,
        {"diverged_share": diverged, "median_test_mse": mse, "clipped_share": clipped, "mean_skipped_steps": skipped},
        headline=f"diverged: {', '.join(v for v in cfg.variants if diverged[v] >= 0.5) or 'none'}; finite: "
        + ", ".join(f"{v} (MSE {mse[v]:.2f})" for v in cfg.variants if diverged[v] < 0.5),
    )


EXPERIMENT = register(
    Experiment(
        name="clipping",
        claim=CLAIM,
        anchor=ANCHOR,
        config=Config,
        presets={"quick": QUICK, "full": FULL, "smoke": SMOKE},
        variants=variants,
        run=run,
        judge=judge,
        quick_seconds=15.0,
        short_anchor="Pascanu 2013 sec. 3.2 (norm clipping); ZClip 2025 Fig. 1",
        seeds={"quick": 1, "full": 5, "smoke": 1},
        figures=(
            Figure(
                "loss_curve",
                "Training loss under each clipper",
                x="loss_curve_step",
                x_label="training step (window means)",
                y_label="training MSE",
                log_y=True,
                hlines=((1 / 6, "baseline: predict 1 (MSE 1/6)"),),
                caption="A line that climbs by decades or stops (a cross: its last finite value) has diverged; a clipped run stays near the baseline.",
            ),
        ),
    )
)
