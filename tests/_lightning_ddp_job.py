"""A 2-rank Lightning DDP run on CPU (gloo) with GradGuardCallback, for test_integrations_lightning.

    python tests/_lightning_ddp_job.py OUT_DIR

Lightning's "ddp" strategy starts the second rank by running this script again. At step 1 rank 1
alone gets a NaN in one gradient (after DDP averaged them); each rank writes what it saw to
OUT_DIR/rank<r>.json.
"""

import gc
import json
import math
import sys
from pathlib import Path

import lightning as L
import torch
from torch import nn

from gradguard.integrations.lightning import GradGuardCallback

FAULT_STEP = 1  # trainer.global_step at which rank 1's gradient gets a NaN


class Regression(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


class FaultOnRankOne(L.Callback):
    """Puts a NaN into rank 1's gradient and records whether this rank's parameters moved."""

    def __init__(self):
        self.moved = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == FAULT_STEP and trainer.global_rank == 1:
            pl_module.net[0].weight.grad[0, 0] = math.nan
        self._before = [p.detach().clone() for p in pl_module.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.moved.append(any(not torch.equal(p, q) for p, q in zip(pl_module.parameters(), self._before)))


def main(out: Path) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=gen)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)
    fault, guard_cb = FaultOnRankOne(), GradGuardCallback(clip=1.0, log_every=1)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=4, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[fault, guard_cb],
    )  # fmt: skip
    model = Regression()
    trainer.fit(model, data)
    h = guard_cb.guard.history
    result = {
        "skipped": h.skipped.tolist(),
        "skipped_steps": guard_cb.guard.skipped_steps,
        "moved": fault.moved,
        "params": [p.detach().flatten().tolist() for p in model.parameters()],
        "norm_before": [v if math.isfinite(v) else None for v in h.norm_before.tolist()],
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))
    # Free what holds the process group (the trainer and its DDP wrapper) before tearing the group
    # down: left to interpreter exit, gloo can abort a rank ("terminate called without an active
    # exception"), about one run in seven for plain DDP scripts here.
    del trainer, model, fault, guard_cb, h
    gc.collect()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
