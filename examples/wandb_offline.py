"""Guard a run and log it to Weights & Biases, offline: ReLU units killed by a learning rate too high.

    python examples/wandb_offline.py       # GRADGUARD_EXAMPLE_STEPS=20 for a quick look
    wandb sync runs/wandb/wandb/offline-run-*   # later, to upload it (needs an account)

Plain SGD at a learning rate of 0.5 takes steps so large that most units of the second ReLU layer
end up below zero for every input: "dead", they pass no gradient and never recover. WandbLogger
writes Guard's scalars and per-module norms (here the 3 largest per step), and ``log_findings``
adds the findings as a table (``gradguard/findings``), in the run summary and, for errors, as
W&B alerts. DEAD_UNITS and UPDATE_RATIO name the layers and the remedy (a lower learning rate,
He init, or LeakyReLU). The run is written offline (``mode="offline"``): no account or network.
"""

import os
from dataclasses import dataclass

import torch
import wandb
from torch import nn

import gradguard as gg
from gradguard.integrations.wandb import WandbLogger


@dataclass
class Config:
    steps: int = int(os.environ.get("GRADGUARD_EXAMPLE_STEPS", "100"))
    lr: float = 0.5  # the bug: SGD on this MLP trains at about 0.01
    top_k: int = 3  # per-module norms: the largest 3 at each step
    out: str = os.environ.get("GRADGUARD_EXAMPLE_OUT", "runs/wandb")


def main() -> None:
    cfg = Config()
    os.makedirs(cfg.out, exist_ok=True)
    run = wandb.init(project="gradguard-examples", mode="offline", dir=cfg.out, config=vars(cfg),
                     settings=wandb.Settings(console="off", x_disable_stats=True))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    wb = WandbLogger(run, top_k=cfg.top_k)
    guard = gg.Guard(model, probes="business", loggers=[wb])  # no clipping: let the problem show

    data = torch.Generator().manual_seed(1)
    for _ in range(cfg.steps):
        x = torch.randn(64, 16, generator=data)
        y = (x[:, :1] > 0).float() * 5
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        guard.step(optimizer, loss=loss)
        optimizer.zero_grad(set_to_none=True)
    guard.close()

    findings = guard.findings()
    wb.log_findings(findings)
    print(f"gradguard: steps={guard.steps} skipped={guard.skipped_steps}; W&B offline run in {run.dir}")
    for finding in findings:
        print(f"  {finding}")
    run.finish()


if __name__ == "__main__":
    main()
