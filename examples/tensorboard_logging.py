"""Guard a run and watch it in TensorBoard: tanh units saturated by unnormalised inputs.

    python examples/tensorboard_logging.py     # GRADGUARD_EXAMPLE_STEPS=10 for a quick look
    tensorboard --logdir runs/tensorboard

The inputs arrive in raw units (standard deviation 20 instead of 1), so most pre-activations of
the first tanh layer sit far out on its flat tails, where tanh' is close to 0 and almost no error
flows back (Glorot & Bengio 2010). TensorBoardLogger writes Guard's scalars (norms before and
after clipping, clip coefficient and share, skipped steps, loss, per-module norms) and, at the
end, the findings as a text summary (TEXT tab): SATURATION names the layer and the remedy.
Normalising the inputs (``x / x.std()``) fixes it.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import gradguard as gg
from gradguard.integrations.tensorboard import TensorBoardLogger


@dataclass
class Config:
    steps: int = int(os.environ.get("GRADGUARD_EXAMPLE_STEPS", "200"))
    input_scale: float = 20.0  # the bug: features in raw units; 1.0 is what the model expects
    lr: float = 1e-3
    clip: float = 1.0
    out: Path = Path(os.environ.get("GRADGUARD_EXAMPLE_OUT", "runs/tensorboard"))


def main() -> None:
    cfg = Config()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    tb = TensorBoardLogger(cfg.out, module_filter="*")  # a glob, a list of globs, a re.Pattern or a function
    # probes="business" measures saturation and dead units on probe steps.
    guard = gg.Guard(model, clip=cfg.clip, probes="business", loggers=[tb])

    data = torch.Generator().manual_seed(1)
    for _ in range(cfg.steps):
        x = torch.randn(64, 16, generator=data) * cfg.input_scale
        y = (x[:, :1] > 0).float()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        guard.step(optimizer, loss=loss)
        optimizer.zero_grad(set_to_none=True)
    guard.close()

    findings = guard.findings()
    tb.log_findings(findings)  # Markdown table under the tag gradguard/findings
    tb.close()
    print(f"gradguard: steps={guard.steps} skipped={guard.skipped_steps} clipped={guard.history.clipped.mean():.0%}; "
          f"TensorBoard logs in {cfg.out}/")
    for finding in findings:
        print(f"  {finding}")


if __name__ == "__main__":
    main()
