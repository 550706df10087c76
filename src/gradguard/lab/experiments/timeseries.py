"""timeseries: one-year-ahead sunspot forecasts from a tanh RNN, an LSTM and a GRU, against persistence.

statsmodels' bundled yearly sunspot numbers (1700-2008); each forecast sees the previous
``window`` years, standardised with the training years' mean and spread; the last 60 years are
held out in time order. The persistence forecast (next year = this year) is the baseline to
beat: the 11-year cycle makes it poor, so beating it needs memory of the cycle's phase.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

import gradguard as gg
from gradguard.lab.models import SeqModel
from gradguard.lab.registry import Context, Experiment, Figure, Verdict, register
from gradguard.lab.tasks import Sunspots
from gradguard.lab.train import evaluate, fit, history_summary, loss_curve, make_optimizer, tail_mean

CLAIM = "A tanh RNN, an LSTM and a GRU, trained with norm clipping, all forecast next year's sunspot number better than persistence."
ANCHOR = "persistence forecast on the held-out years 1949-2008 (measured: MSE 0.88 in standardised units); statsmodels' sunspots, papers.md 11"


@dataclass
class Config:
    window: int = 20  # years of history per forecast (about two solar cycles)
    test_years: int = 60
    hidden: int = 32
    steps: int = 600
    batch: int = 32
    lr: float = 0.01  # Adam
    clip: float = 1.0  # global-norm clipping for every cell, as the uRNN paper trains its RNN and LSTM
    cells: tuple = ("rnn", "lstm", "gru")


QUICK = Config()
FULL = Config(hidden=64, steps=5000)
SMOKE = Config(hidden=8, steps=20)


def variants(cfg: Config) -> list[str]:
    return list(cfg.cells)


def run(cfg: Config, variant: str, seed: int, ctx: Context) -> dict:
    task = Sunspots(window=cfg.window, test_years=cfg.test_years)
    torch.manual_seed(seed)
    model = SeqModel(variant, 1, 1, hidden=cfg.hidden).to(ctx.device)
    opt = make_optimizer("adam", model.parameters(), cfg.lr)
    guard = gg.Guard(model, clip=cfg.clip, log_every=50, store=ctx.store_path(variant), name=f"timeseries {variant}")
    fit(model, task, opt, guard, steps=cfg.steps, batch=cfg.batch, seed=seed, device=ctx.device)
    x_test, y_test = task.test_set()
    test = evaluate(model, task, x_test, y_test)
    persistence = task.baseline().error
    return {
        "test_mse": test["error"],
        "persistence_mse": persistence,
        "relative_to_persistence": test["error"] / persistence,
        "test_rmse_sunspots": test["error"] ** 0.5 * task.scale,  # in sunspot-number units
        "final_train_loss": tail_mean(guard.history.loss),
        **loss_curve(guard.history),
        **history_summary(guard.history),
    }


def judge(cfg: Config, jobs: list[dict]) -> Verdict:
    persistence = jobs[0]["metrics"]["persistence_mse"]
    mse = {c: statistics.median(j["metrics"]["test_mse"] for j in jobs if j["variant"] == c) for c in cfg.cells}
    return Verdict(
        all(v < persistence for v in mse.values()),
        "median test MSE over seeds below the persistence forecast's, for every cell",
        "test MSE (standardised): " + ", ".join(f"{c} {v:.3f}" for c, v in mse.items()) + f"; persistence {persistence:.3f}",
        {"median_test_mse": mse, "persistence_mse": persistence},
        headline="test MSE " + ", ".join(f"{c} {v:.2f}" for c, v in mse.items()) + f" vs persistence {persistence:.2f}",
    )


EXPERIMENT = register(
    Experiment(
        name="timeseries",
        claim=CLAIM,
        anchor=ANCHOR,
        config=Config,
        presets={"quick": QUICK, "full": FULL, "smoke": SMOKE},
        variants=variants,
        run=run,
        judge=judge,
        quick_seconds=9.0,
        short_anchor="persistence forecast (measured MSE 0.88)",
        seeds={"quick": 2, "full": 5, "smoke": 1},
        figures=(
            Figure(
                "loss_curve",
                "Training loss of each cell on sunspots",
                x="loss_curve_step",
                x_label="training step (window means)",
                y_label="training MSE (standardised)",
                log_y=True,
                caption="The verdict compares test MSE with the persistence forecast's; these are the training losses on the way there.",
            ),
        ),
    )
)
