"""image: a depth-20 CNN on scikit-learn's 8x8 digits: plain, BatchNorm, residual, and both.

Depth counts weight layers as the ResNet paper does (a stem convolution, nine two-convolution
blocks, a linear head). Same data, optimizer and budget for every variant; ``gg.inspect``
measures the back-propagated error at initialisation (stem against last convolution). The
plain and BatchNorm nets keep PyTorch's default init; the residual ones get a residual init
(He, each branch's last convolution scaled by 1/sqrt(blocks); see ``models.ConvBlock``).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

import gradguard as gg
from gradguard.lab.models import SmallCNN
from gradguard.lab.registry import Context, Experiment, Figure, Verdict, register
from gradguard.lab.tasks import Digits
from gradguard.lab.train import evaluate, fit, history_summary, loss_curve, make_optimizer, tail_mean

CLAIM = (
    "A plain depth-20 CNN at PyTorch's default init stays at chance on digits; BatchNorm, or residual connections "
    "with an init made for them, make the same depth train to under 20% test error, and so do both together (a ResNet)."
)
ANCHOR = (
    "He et al. 2016 (ResNet), CIFAR-10: ResNet-20 8.75% test error, deeper plain nets train worse (their plain nets "
    "have BN; they attribute that degradation to optimisation, not vanishing gradients); Ioffe & Szegedy 2015"
)

# name -> (norm, residual)
SETUPS = {"plain": ("none", False), "batchnorm": ("batch", False), "residual": ("none", True), "resnet": ("batch", True)}


@dataclass
class Config:
    depth: int = 20  # weight layers: stem + 2 x 9 convolutions + head
    channels: int = 16  # the first stage of the CIFAR ResNets
    steps: int = 400
    batch: int = 64
    lr: float = 0.02  # SGD with momentum; the residual net without BatchNorm is unstable at 0.05
    optimizer: str = "momentum"
    setups: tuple = tuple(SETUPS)


QUICK = Config()
FULL = Config(steps=4000, channels=32)
SMOKE = Config(depth=6, channels=4, steps=10)


def variants(cfg: Config) -> list[str]:
    return list(cfg.setups)


def run(cfg: Config, variant: str, seed: int, ctx: Context) -> dict:
    norm, residual = SETUPS[variant]
    task = Digits("image")
    x_test, y_test = task.test_set()
    torch.manual_seed(seed)
    model = SmallCNN(cfg.depth, norm, residual, channels=cfg.channels).to(ctx.device)
    # 1) the error signal at initialisation: stem convolution against the last convolution
    xb, yb = task.batch(256, torch.Generator().manual_seed(10_000 + seed))
    xb, yb = xb.to(ctx.device), yb.to(ctx.device)
    convs = [r for r in gg.inspect(model, lambda: task.loss(model(xb), yb)).layers if r.type == "Conv2d"]
    init_error_ratio = convs[0].error_norm / convs[-1].error_norm
    # 2) train: forward -> backward -> Guard (measure only) -> step -> zero_grad
    opt = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr)
    guard = gg.Guard(model, clip=None, nonfinite="skip", max_consecutive_skips=cfg.steps, log_every=50, store=ctx.store_path(variant), name=f"image {variant}")
    fit(model, task, opt, guard, steps=cfg.steps, batch=cfg.batch, seed=seed, device=ctx.device)
    # 3) test error and training loss
    test = evaluate(model, task, x_test, y_test)
    return {
        "test_error": test["error"],
        "final_train_loss": tail_mean(guard.history.loss),
        "init_error_ratio": init_error_ratio,
        **history_summary(guard.history),
        **loss_curve(guard.history),
    }


def judge(cfg: Config, jobs: list[dict]) -> Verdict:
    def median(variant: str, key: str) -> float:
        return statistics.median(j["metrics"][key] for j in jobs if j["variant"] == variant)

    err = {v: median(v, "test_error") for v in cfg.setups}
    loss = {v: median(v, "final_train_loss") for v in cfg.setups}
    ratio = {v: median(v, "init_error_ratio") for v in cfg.setups}
    passed = err["plain"] >= 0.8 and all(err[v] <= 0.2 for v in ("batchnorm", "residual", "resnet") if v in err)
    summary = ", ".join(f"{v} {err[v]:.1%}" for v in cfg.setups) + f" test error; init error ratio stem/last: plain {ratio['plain']:.2g}, resnet {ratio['resnet']:.2g}"
    return Verdict(
        passed,
        "median over seeds: plain test error >= 80% (chance ~90%); batchnorm, residual and resnet each <= 20%",
        summary,
        {"test_error": err, "final_train_loss": loss, "init_error_ratio": ratio},
        scale_limited=cfg.steps < QUICK.steps,
        headline="test error " + ", ".join(f"{v} {err[v]:.0%}" for v in cfg.setups),
    )


EXPERIMENT = register(
    Experiment(
        name="image",
        claim=CLAIM,
        anchor=ANCHOR,
        config=Config,
        presets={"quick": QUICK, "full": FULL, "smoke": SMOKE},
        variants=variants,
        run=run,
        judge=judge,
        quick_seconds=31.0,
        short_anchor="He et al. 2016: ResNet-20 8.75% on CIFAR-10; plain nets train worse",
        seeds={"quick": 1, "full": 5, "smoke": 1},
        figures=(
            Figure(
                "loss_curve",
                "Training loss of the depth-20 CNN, four ways",
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
