"""Fully sharded training (FSDP2, ``fully_shard``) with gradguard.

    torchrun --nproc_per_node 2 examples/fsdp2_train.py   # CPU: gloo; with GPUs: nccl, one per rank

Under FSDP2 each rank holds a shard of every gradient (a DTensor). Reading the norm of a shard
gives a partial number; Guard combines the shards' norms with one all-reduce per step, so the
total and per-block norms, the clipping factor and the skip decision are the global ones on every
rank. Rank 0 prints the summary. GRADGUARD_EXAMPLE_STEPS sets the number of steps.
"""

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import gradguard as gg

STEPS = int(os.environ.get("GRADGUARD_EXAMPLE_STEPS", "300"))
FAULT_STEP = 4  # at this step the last rank's gradient shard gets a NaN, to show the skip (0: never)


class Block(nn.Module):
    """Pre-norm residual MLP block."""

    def __init__(self, width):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x):
        return x + self.mlp(self.norm(x))


class Net(nn.Module):
    def __init__(self, inputs=16, width=32, depth=4):
        super().__init__()
        self.embed = nn.Linear(inputs, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def main():
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)

    torch.manual_seed(0)  # the same full weights on every rank before they are sharded
    model = Net().to(device)
    mesh = init_device_mesh(device.type, (world,))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)  # each block gathers and frees its own weights
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    guard = gg.Guard(model, clip=1.0, log_every=25, group_by=2)  # norms per block: "blocks.0", ...

    data = torch.Generator().manual_seed(1 + rank)  # each rank draws its own batches
    for step in range(1, STEPS + 1):
        x = torch.randn(64, 16, generator=data)
        y = x[:, :1] * x[:, 1:2]  # learn a product of two inputs
        loss = nn.functional.mse_loss(model(x.to(device)), y.to(device))
        loss.backward()
        if step == FAULT_STEP and rank == world - 1:
            model.embed.weight.grad.to_local()[0, 0] = float("nan")  # a fault in one shard only
        guard.step(optimizer, loss=loss)  # measure -> clip -> skip if any rank saw NaN/Inf -> step
        optimizer.zero_grad(set_to_none=True)
    guard.close()

    if rank == 0:
        h = guard.history
        print(
            f"gradguard: ranks={world} steps={guard.steps} skipped={guard.skipped_steps} "
            f"clipped={h.clipped.mean():.0%} loss {h.loss[0]:.4f} -> {h.loss[-1]:.4f} "
            f"last norm {h.norm_before[-1]:.3f} -> {h.norm_after[-1]:.3f} (clip at {h.threshold[-1]:g})"
        )
        for name, norm in zip(h.module_names, h.module_norms[-1]):
            print(f"  grad norm of {name:>8}: {norm:.4f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
