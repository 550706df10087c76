"""A 2-rank Lightning ModelParallelStrategy (FSDP2) run on CPU (gloo) with GradGuardCallback.

    python tests/_lightning_fsdp2_job.py OUT_DIR

For test_integrations_lightning. The LightningModule shards itself in ``configure_model`` with
``fully_shard`` over the data-parallel mesh dimension, so every gradient is a DTensor holding one
rank's shard. Lightning starts the second rank by running this script again. At FAULT_STEP rank
1 alone gets a NaN in its local shard of one gradient (after FSDP2 reduce-scattered them); each
rank writes what it saw to OUT_DIR/rank<r>.json. ``run_reference`` trains the same model on the
same data in one process (no sharding, batches of twice the size) for the test to compare with.
"""

import gc
import json
import math
import sys
import weakref
from pathlib import Path

import lightning as L
import torch
from torch import nn

from gradguard.integrations.lightning import GradGuardCallback

FAULT_STEP = 2  # trainer.global_step at which rank 1's gradient shard gets a NaN
STEPS = 5
WORLD = 2
BATCH = 8  # the global batch: each rank gets BATCH // WORLD samples a step


def local(t: torch.Tensor) -> torch.Tensor:
    """The part of a tensor this rank holds (a DTensor's shard, or the tensor itself)."""
    return t.to_local() if hasattr(t, "to_local") else t


def full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach()


class Regression(L.LightningModule):
    def __init__(self, shard: bool, batch_size: int):
        super().__init__()
        self.shard, self.batch_size = shard, batch_size
        torch.manual_seed(0)
        # 8 rows are split 4/4 between the ranks; the last layer's single row lives on rank 0 alone.
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 1))

    def configure_model(self):
        if not self.shard:
            return
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)

    def train_dataloader(self):
        # Lightning's own sampler would shuffle the training data; this one deals sample i to rank
        # i % world_size in order, so at each step the ranks together hold the BATCH consecutive
        # samples the one-process reference takes as its batch.
        ds = data()
        sampler = torch.utils.data.DistributedSampler(ds, self.trainer.world_size, self.trainer.global_rank, shuffle=False)
        return torch.utils.data.DataLoader(ds, batch_size=self.batch_size, sampler=sampler)


class FaultOnRank(L.Callback):
    """Passed before GradGuardCallback: a NaN in ``bad_rank``'s local gradient shard at FAULT_STEP;
    records, per step, whether this rank's parameter shards moved."""

    def __init__(self, bad_rank: int):
        self.bad_rank = bad_rank
        self.moved = []
        self.sharded = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        weight = pl_module.net[0].weight
        self.sharded.append(type(weight.grad).__name__)
        if trainer.global_step == FAULT_STEP and trainer.global_rank == self.bad_rank:
            local(weight.grad)[0, 0] = math.nan
        self._before = [local(p).detach().clone() for p in pl_module.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.moved.append(any(not torch.equal(local(p), q) for p, q in zip(pl_module.parameters(), self._before)))


def data() -> torch.utils.data.TensorDataset:
    x = torch.randn(STEPS * BATCH, 4, generator=torch.Generator().manual_seed(1))
    return torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))


def fit(strategy, devices: int, batch_size: int, bad_rank: int) -> tuple[L.Trainer, Regression, FaultOnRank, GradGuardCallback]:
    fault, guard_cb = FaultOnRank(bad_rank), GradGuardCallback(clip=1.0, log_every=1)
    trainer = L.Trainer(
        accelerator="cpu", devices=devices, strategy=strategy, max_steps=STEPS, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        use_distributed_sampler=False, callbacks=[fault, guard_cb],
    )  # fmt: skip
    model = Regression(shard=devices > 1, batch_size=batch_size)
    trainer.fit(model)
    return trainer, model, fault, guard_cb


def summary(model: Regression, fault: FaultOnRank, guard_cb: GradGuardCallback) -> dict:
    guard = guard_cb.guard
    h = guard.history
    finite = lambda values: [v if math.isfinite(v) else None for v in values]  # noqa: E731
    return {
        "skipped": h.skipped.tolist(),
        "skipped_steps": guard.skipped_steps,
        "moved": fault.moved,
        "grad_types": fault.sharded,
        "modules": list(guard.module_names),
        "norm_before": finite(h.norm_before.tolist()),
        "norm_after": finite(h.norm_after.tolist()),
        "module_norms": [finite(row) for row in h.module_norms.tolist()],
        "params": [full(p).flatten().tolist() for p in model.parameters()],  # a collective under FSDP2
    }


def run_reference() -> dict:
    """One process, no sharding, the whole batch per step, the NaN at the same step."""
    trainer, model, fault, guard_cb = fit("auto", devices=1, batch_size=BATCH, bad_rank=0)
    return summary(model, fault, guard_cb)


def main(out: Path) -> None:
    import torch.distributed as dist
    from lightning.pytorch.strategies import ModelParallelStrategy

    strategy = ModelParallelStrategy(data_parallel_size=WORLD, tensor_parallel_size=1)
    trainer, model, fault, guard_cb = fit(strategy, devices=WORLD, batch_size=BATCH // WORLD, bad_rank=1)
    rank = trainer.global_rank
    result = dict(summary(model, fault, guard_cb), rank=dist.get_rank(), world_size=dist.get_world_size(), backend=dist.get_backend())
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    # Free what holds the process group (the trainer, its strategy and device mesh, the sharded
    # module) before tearing the group down: left to interpreter exit, gloo can abort a rank
    # ("terminate called without an active exception").
    module = weakref.ref(model)
    del trainer, model, fault, guard_cb, strategy
    gc.collect()
    assert module() is None, "the sharded module outlived the Trainer; it must be freed before destroy_process_group"
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
