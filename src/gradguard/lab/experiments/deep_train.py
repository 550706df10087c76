"""deep-train: a depth-20 MLP on scikit-learn's digits, five ways.

A sigmoid network at PyTorch's default init against plain ReLU at three inits (PyTorch's
default, Xavier, He: what He's init buys, isolated), ReLU with BatchNorm, with residual
connections, and sigmoid rescued by BatchNorm. Same data, optimizer and budget for all;
``gg.inspect`` measures the back-propagated error ratio at initialisation, Guard the gradient
norms while training.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

import gradguard as gg
from gradguard.lab.models import DeepMLP
from gradguard.lab.registry import Context, Experiment, Figure, Verdict, register
from gradguard.lab.tasks import Digits
from gradguard.lab.train import evaluate, fit, history_summary, loss_curve, make_optimizer, tail_mean

CLAIM = (
    "A depth-20 sigmoid MLP, and a plain ReLU one, at PyTorch's default init stay at chance on digits (the error signal "
    "vanishes); He init trains the ReLU net, better than Xavier; BatchNorm and residual connections train it, and "
    "BatchNorm also rescues the sigmoid."
)
ANCHOR = (
    "Glorot & Bengio 2010 (deep sigmoid nets with standard init saturate and stall); He et al. 2015 (a 30-layer "
    "ReLU net converges with He init, stalls with Xavier); Ioffe & Szegedy 2015 (sigmoid Inception 'remained at "
    "the accuracy equivalent to chance' without BN, 69.8% with it)"
)

# name -> (activation, init, norm, residual)
SETUPS = {
    "sigmoid": ("sigmoid", "default", "none", False),
    "relu-default": ("relu", "default", "none", False),  # PyTorch's default: variance 1/(3 fan_in), a third of He's
    "relu-xavier": ("relu", "xavier", "none", False),  # variance 2/(fan_in + fan_out): half of He's here
    "relu-he": ("relu", "he", "none", False),
    "relu-he-batchnorm": ("relu", "he", "batch", False),
    "relu-residual": ("relu", "default", "none", True),  # He init plus 20 skips doubles the variance 20 times
    "sigmoid-batchnorm": ("sigmoid", "default", "batch", False),
}


@dataclass
class Config:
    depth: int = 20  # hidden layers
    width: int = 64
    steps: int = 500  # SGD steps (about 24 epochs of the 1348 training images at batch 64)
    batch: int = 64
    lr: float = 0.01  # one rate for all: at 0.03 ReLU/He without BN already diverges
    optimizer: str = "momentum"  # SGD with momentum 0.9; Adam would rescale away the vanishing gradient
    setups: tuple = tuple(SETUPS)


QUICK = Config()
FULL = Config(width=256, steps=5000)
SMOKE = Config(depth=6, width=16, steps=20)


def variants(cfg: Config) -> list[str]:
    return list(cfg.setups)


def run(cfg: Config, variant: str, seed: int, ctx: Context) -> dict:
    activation, init, norm, residual = SETUPS[variant]
    task = Digits("flat")
    x_test, y_test = task.test_set()
    torch.manual_seed(seed)
    model = DeepMLP(64, 10, cfg.depth, cfg.width, activation, init, norm, residual).to(ctx.device)
    # 1) the error signal at initialisation, first block against last
    xb, yb = task.batch(256, torch.Generator().manual_seed(10_000 + seed))
    xb, yb = xb.to(ctx.device), yb.to(ctx.device)
    layers = [r for r in gg.inspect(model, lambda: task.loss(model(xb), yb)).layers if r.type == "Linear" and r.name.startswith("blocks.")]
    init_error_ratio = layers[0].error_norm / layers[-1].error_norm
    # 2) train: forward -> backward -> Guard (measure; no clipping) -> step -> zero_grad
    opt = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr)
    guard = gg.Guard(model, clip=None, nonfinite="skip", max_consecutive_skips=cfg.steps, log_every=50, store=ctx.store_path(variant), name=f"deep-train {variant}")
    fit(model, task, opt, guard, steps=cfg.steps, batch=cfg.batch, seed=seed, device=ctx.device)
    # 3) test error, and what Guard saw
    test = evaluate(model, task, x_test, y_test)
    return {
        "test_error": test["error"],
        "final_train_loss": tail_mean(guard.history.loss),
        "init_error_ratio": init_error_ratio,
        "chance_error": task.baseline().error,
        **history_summary(guard.history),
        **loss_curve(guard.history),
    }


def judge(cfg: Config, jobs: list[dict]) -> Verdict:
    def median(variant: str, key: str) -> float:
        return statistics.median(j["metrics"][key] for j in jobs if j["variant"] == variant)

    err = {v: median(v, "test_error") for v in cfg.setups}
    ratio = {v: median(v, "init_error_ratio") for v in cfg.setups}
    stuck = [v for v in ("sigmoid", "relu-default") if v in err]
    trained = [v for v in cfg.setups if v not in ("sigmoid", "relu-default", "relu-xavier")]
    he_beats_xavier = "relu-xavier" not in err or "relu-he" not in err or err["relu-he"] < err["relu-xavier"]
    passed = all(err[v] >= 0.8 for v in stuck) and all(err[v] <= 0.2 for v in trained) and he_beats_xavier
    summary = ", ".join(f"{v} {err[v]:.1%}" for v in cfg.setups) + f" test error (chance ~90%); sigmoid init error ratio {ratio.get('sigmoid', float('nan')):.1g}"
    return Verdict(
        passed,
        "median test error over seeds: sigmoid and plain ReLU at PyTorch's default init >= 80% (near chance); ReLU/He, "
        "ReLU + BatchNorm, ReLU residual and sigmoid + BatchNorm <= 20%; plain ReLU/He below plain ReLU/Xavier",
        summary,
        {"test_error": err, "init_error_ratio": ratio},
        scale_limited=cfg.steps < QUICK.steps,
        headline="test error " + ", ".join(f"{v} {err[v]:.0%}" for v in cfg.setups),
    )


EXPERIMENT = register(
    Experiment(
        name="deep-train",
        claim=CLAIM,
        anchor=ANCHOR,
        config=Config,
        presets={"quick": QUICK, "full": FULL, "smoke": SMOKE},
        variants=variants,
        run=run,
        judge=judge,
        quick_seconds=13.0,
        short_anchor="Glorot & Bengio 2010; He 2015; Ioffe & Szegedy 2015 (sigmoid at chance without BN)",
        seeds={"quick": 1, "full": 5, "smoke": 1},
        figures=(
            Figure(
                "loss_curve",
                "Training loss of the depth-20 MLP, five ways",
                x="loss_curve_step",
                x_label="training step (window means)",
                y_label="training cross-entropy",
                log_y=True,
                hlines=((2.302585, "chance: ln 10"),),
                caption="A line that stays at ln 10 has not learned: its error signal does not reach the early layers.",
            ),
        ),
    )
)
