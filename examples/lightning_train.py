"""Guard a Lightning run: NaN gradients from a square root, skipped, and traced to their module.

    python examples/lightning_train.py     # GRADGUARD_EXAMPLE_STEPS=10 for a quick look

The model takes the square root of a count feature times a learned scale. sqrt(0) is a finite 0,
but its derivative is infinite, so every batch holding a zero count makes the scale's gradient
(and with it the total norm) NaN. GradGuardCallback
(in place of ``gradient_clip_val``) skips those steps without touching the weights or Adam's
moments, and the NONFINITE finding names the parameter and the module the NaN came from
(``features.scale``, ``features``).
"""

import os
from dataclasses import dataclass

import lightning as L
import torch
from torch import nn

from gradguard.integrations.lightning import GradGuardCallback


@dataclass
class Config:
    steps: int = int(os.environ.get("GRADGUARD_EXAMPLE_STEPS", "100"))
    batch: int = 16
    max_count: int = 20  # counts are 0..max_count-1: about half the batches hold a zero
    lr: float = 1e-2
    clip: float = 1.0


class SqrtCount(nn.Module):
    """Compress the last column (a count) with a learned scale and a square root: the bug, at count 0."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # d sqrt(s*c)/ds = c / (2 sqrt(s*c)) is 0/0 = NaN at c = 0. Fix: (self.scale * c + 1e-6).sqrt()
        return torch.cat([x[:, :-1], (self.scale * x[:, -1:]).sqrt()], dim=1)


class Regressor(L.LightningModule):
    def __init__(self, lr: float):
        super().__init__()
        self.lr = lr
        self.features = SqrtCount()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(self.features(x)), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def dataset(cfg: Config) -> torch.utils.data.TensorDataset:
    gen = torch.Generator().manual_seed(0)
    n = cfg.steps * cfg.batch
    x = torch.randn(n, 8, generator=gen)
    x[:, -1] = torch.randint(0, cfg.max_count, (n,), generator=gen).float()
    y = x[:, :1] + x[:, -1:].sqrt() / 4
    return torch.utils.data.TensorDataset(x, y)


def main() -> None:
    cfg = Config()
    torch.manual_seed(0)
    guard_cb = GradGuardCallback(clip=cfg.clip, max_consecutive_skips=cfg.steps)
    trainer = L.Trainer(
        max_steps=cfg.steps, callbacks=[guard_cb], accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    loader = torch.utils.data.DataLoader(dataset(cfg), batch_size=cfg.batch, shuffle=False)
    trainer.fit(Regressor(cfg.lr), loader)

    guard = guard_cb.guard
    h = guard.history
    print(f"gradguard: steps={guard.steps} skipped={guard.skipped_steps} clipped={h.clipped.mean():.0%}")
    for finding in guard.findings():
        print(f"  {finding}")


if __name__ == "__main__":
    main()
