"""Data-parallel training (DDP) with gradguard.

    torchrun --nproc_per_node 2 examples/ddp_train.py     # CPU: gloo; with GPUs: nccl, one per rank

DDP averages gradients during backward, so every rank hands Guard the same gradients: the same
norms, the same clipping factor, the same skip decision. Guard still all-reduces its NaN/Inf flag,
because a fault on one rank alone (simulated below) must make every rank skip, or they drift apart.
Rank 0 prints the summary. GRADGUARD_EXAMPLE_STEPS sets the number of steps.
"""

import gc
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import gradguard as gg

STEPS = int(os.environ.get("GRADGUARD_EXAMPLE_STEPS", "300"))
FAULT_STEP = 4  # at this step the last rank's gradient gets a NaN, to show the skip (0: never)


def main():
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)

    torch.manual_seed(0)  # DDP broadcasts rank 0's weights anyway; the seed keeps runs repeatable
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)).to(device)
    ddp = DDP(model, device_ids=[device.index] if cuda else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    guard = gg.Guard(model, clip=1.0, log_every=25)  # the plain module: names without "module."

    data = torch.Generator().manual_seed(1 + rank)  # each rank draws its own batches
    for step in range(1, STEPS + 1):
        x = torch.randn(64, 16, generator=data)
        y = x[:, :1] * x[:, 1:2]  # learn a product of two inputs
        loss = nn.functional.mse_loss(ddp(x.to(device)), y.to(device))
        loss.backward()
        if step == FAULT_STEP and rank == world - 1:
            model[0].weight.grad[0, 0] = float("nan")  # a fault on one rank only
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
            print(f"  grad norm of {name:>3}: {norm:.4f}")
    # Free the DDP wrapper (its reducer holds the process group, and a reference cycle keeps it
    # alive until a collection) before tearing the group down: left to interpreter exit, gloo
    # aborts one rank in about one run in seven ("terminate called without an active exception").
    del ddp
    gc.collect()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
