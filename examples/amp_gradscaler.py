"""Guard a mixed-precision (float16 autocast) loop with a GradScaler.

    python examples/amp_gradscaler.py      # GRADGUARD_EXAMPLE_STEPS=10 for a quick look

Pass the scaler to Guard and let Guard drive it: Guard unscales the gradients once, so norms,
clipping threshold and findings are in true gradient units (not multiplied by the loss scale),
then calls ``scaler.step`` and ``scaler.update``. A step whose gradients overflowed is skipped
once, by both: Guard folds its NaN/Inf verdict into the scaler's, and the scaler lowers its scale.

The model has a gradient problem that float16 makes worse: a 10-layer sigmoid MLP at PyTorch's
default initialisation. sigmoid' is at most 1/4, so the back-propagated error shrinks by orders
of magnitude toward the input (Glorot & Bengio 2010): the tiny values where float16's narrow
range bites, and that loss scaling exists to keep representable. Guard's findings report the
vanishing gradient and its remedy. Runs on a GPU when there is one, else on the CPU.
"""

import os
from dataclasses import dataclass

import torch
from torch import nn

import gradguard as gg


@dataclass
class Config:
    steps: int = int(os.environ.get("GRADGUARD_EXAMPLE_STEPS", "100"))
    depth: int = 10  # hidden Linear+Sigmoid layers
    width: int = 32
    lr: float = 1e-3
    clip: float = 1.0  # max global norm of the unscaled gradients
    batch: int = 64


def main() -> None:
    cfg = Config()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    layers = []
    for _ in range(cfg.depth):
        layers += [nn.Linear(cfg.width, cfg.width), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(cfg.width, 1)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    scaler = torch.amp.GradScaler(device)
    guard = gg.Guard(model, clip=cfg.clip, scaler=scaler, probes="business")

    data = torch.Generator().manual_seed(1)
    for _ in range(cfg.steps):
        x = torch.randn(cfg.batch, cfg.width, generator=data).to(device)
        y = x[:, :1] * x[:, 1:2]
        with torch.autocast(device, dtype=torch.float16):
            loss = nn.functional.mse_loss(model(x).float(), y)
        scaler.scale(loss).backward()
        guard.step(optimizer, loss=loss)  # unscale -> measure -> clip -> skip overflow -> scaler.step/update
        optimizer.zero_grad(set_to_none=True)
    guard.close()

    h = guard.history
    print(f"gradguard: device={device} steps={guard.steps} skipped={guard.skipped_steps} clipped={h.clipped.mean():.0%} "
          f"unscaled grad norm {h.norm_before[0]:.3g} -> {h.norm_before[-1]:.3g}, loss scale now {scaler.get_scale():g}")
    for finding in guard.findings():
        print(f"  {finding}")


if __name__ == "__main__":
    main()
