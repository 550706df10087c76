"""Guard a plain PyTorch loop: find why a deep MLP's gradients explode, then fix it.

    python examples/plain_loop.py          # GRADGUARD_EXAMPLE_STEPS=10 for a quick look

A 10-layer ReLU MLP whose weights start at 4/sqrt(fan_in), about 2.8x He et al.'s sqrt(2/fan_in):
each layer multiplies the back-propagated error by about 2.8, so it is three orders of magnitude
larger at the first layer than at the last. Guard watches the run (no clipping, so nothing hides
the problem), records the per-layer errors on probe steps, and its findings name the layer and
the remedy. The second run applies it (He initialisation, and clipping)
and comes back without the finding. Reports: runs/plain_loop/{broken,fixed}.html.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import gradguard as gg


@dataclass
class Config:
    steps: int = int(os.environ.get("GRADGUARD_EXAMPLE_STEPS", "200"))
    depth: int = 10  # hidden Linear+ReLU layers
    width: int = 32
    init_std: float = 4.0  # weight std times sqrt(fan_in); He is sqrt(2) = 1.41
    lr: float = 1e-3  # Adam: bounded steps, so the broken run stays finite and can be diagnosed
    batch: int = 64
    out: Path = Path(os.environ.get("GRADGUARD_EXAMPLE_OUT", "runs/plain_loop"))


def make_model(cfg: Config, he_init: bool) -> nn.Sequential:
    torch.manual_seed(0)
    layers = []
    for _ in range(cfg.depth):
        linear = nn.Linear(cfg.width, cfg.width)
        if he_init:
            nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
        else:
            nn.init.normal_(linear.weight, std=cfg.init_std / cfg.width**0.5)
        layers += [linear, nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(cfg.width, 1))


def train(cfg: Config, name: str, he_init: bool, clip=None) -> gg.Guard:
    model = make_model(cfg, he_init)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    # probes="business" adds activations and back-propagated errors per layer on probe steps.
    guard = gg.Guard(model, clip=clip, probes="business", store=cfg.out / f"{name}.sqlite", name=name)
    data = torch.Generator().manual_seed(1)
    for _ in range(cfg.steps):
        x = torch.randn(cfg.batch, cfg.width, generator=data)
        y = x[:, :1] * x[:, 1:2]  # learn a product of two inputs
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        guard.step(optimizer, loss=loss)  # measure -> clip -> skip NaN/Inf -> optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    guard.close()
    return guard


def summarize(guard: gg.Guard) -> list[gg.Finding]:
    h = guard.history
    findings = guard.findings()
    print(f"gradguard: run={guard.name} steps={guard.steps} skipped={guard.skipped_steps} "
          f"grad norm {h.norm_before[0]:.3g} -> {h.norm_before[-1]:.3g}, loss {h.loss[0]:.3g} -> {h.loss[-1]:.3g}")
    for finding in findings:
        print(f"  {finding}")
    return findings


def main() -> None:
    cfg = Config()
    cfg.out.mkdir(parents=True, exist_ok=True)
    broken = train(cfg, "broken", he_init=False)
    summarize(broken)
    print(f"report: {broken.report(cfg.out / 'broken.html')}")

    # The remedy the EXPLODING_GRADIENT finding gives: initialise for ReLU, and clip.
    fixed = train(cfg, "fixed", he_init=True, clip=1.0)
    summarize(fixed)
    print(f"report: {fixed.report(cfg.out / 'fixed.html')}")


if __name__ == "__main__":
    main()
