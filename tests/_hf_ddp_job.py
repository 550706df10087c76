"""A 2-rank Hugging Face Trainer DDP run on CPU (gloo) with GradGuardCallback, for test_integrations_hf.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/_hf_ddp_job.py OUT_DIR [ACCUMULATION]

The Trainer sees the torchrun environment and wraps the model in DDP. At FAULT_STEP rank 1 alone
gets a NaN in one gradient, in on_pre_optimizer_step, after DDP averaged the gradients in
backward: only Guard's cross-rank agreement can make rank 0 skip that step too. Each rank writes
what it saw to OUT_DIR/rank<r>.json.

ACCUMULATION (default 1) is ``gradient_accumulation_steps``: DDP then averages the gradients only
in the last micro-batch's backward, and each optimizer step sees ACCUMULATION micro-batches per
rank. For the test to recompute each step's gradient in one process, every rank also records the
micro-batches it trained on and the parameters before each optimizer step.
"""

import gc
import json
import math
import os
import sys
import weakref
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402
from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from gradguard.integrations.huggingface import GradGuardCallback  # noqa: E402

FAULT_STEP = 2  # state.global_step at which rank 1's gradient gets a NaN (the third optimizer step)
STEPS = 5


class Regression(nn.Module):
    """A Trainer-compatible model: forward(**batch) returns {"loss": ...}."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.micro_batches = []  # (x, y) of each training forward since the last optimizer step

    def forward(self, x, y):
        if self.training:
            self.micro_batches.append((x.tolist(), y.tolist()))
        return {"loss": nn.functional.mse_loss(self.net(x), y)}


class Pairs(torch.utils.data.Dataset):
    def __init__(self, n: int = 80):
        self.x = torch.randn(n, 4, generator=torch.Generator().manual_seed(1))
        self.y = self.x.sum(1, keepdim=True)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


class FaultOnRankOne(TrainerCallback):
    """Passed before GradGuardCallback: puts a NaN into rank 1's (already synchronised) gradient at
    FAULT_STEP and records, per optimizer step, whether parameters moved and the scheduler stepped."""

    def __init__(self, rank: int):
        self.rank = rank
        self.moved, self.schedule_steps, self.lr = [], [], []
        self.steps = []  # per optimizer step: micro-batches, parameters and gradient norm before it

    def on_pre_optimizer_step(self, args, state, control, model=None, lr_scheduler=None, **kwargs):
        grads = [p.grad for p in model.parameters()]
        self.steps.append({
            "micro_batches": model.micro_batches,
            "params": [p.detach().flatten().tolist() for p in model.parameters()],
            "grad_norm": torch.nn.utils.get_total_norm(grads).item(),  # the synchronised gradient's
        })  # fmt: skip
        model.micro_batches = []
        if state.global_step == FAULT_STEP and self.rank == 1:
            model.net[0].weight.grad[0, 0] = math.nan
        self._params = [p.detach().clone() for p in model.parameters()]
        self._schedule = lr_scheduler.last_epoch

    def on_step_end(self, args, state, control, model=None, lr_scheduler=None, **kwargs):
        self.moved.append(any(not torch.equal(p, q) for p, q in zip(model.parameters(), self._params)))
        self.schedule_steps.append(lr_scheduler.last_epoch - self._schedule)
        self.lr.append(lr_scheduler.get_last_lr()[0])


def main(out: Path, accumulation: int = 1) -> None:
    rank = int(os.environ["RANK"])
    args = TrainingArguments(
        output_dir=str(out / "trainer"), max_steps=STEPS, per_device_train_batch_size=8, logging_steps=1,
        gradient_accumulation_steps=accumulation,
        max_grad_norm=0.0, learning_rate=1e-2, lr_scheduler_type="linear", report_to=[], save_strategy="no",
        use_cpu=True, ddp_backend="gloo", ddp_find_unused_parameters=False, disable_tqdm=True, seed=0,
    )  # fmt: skip
    model = Regression()
    fault, guard_cb = FaultOnRankOne(rank), GradGuardCallback(clip=1.0)
    # One epoch of whole optimizer steps: 2 ranks x 8 samples x `accumulation` micro-batches each.
    dataset = Pairs(80 if accumulation == 1 else 16 * accumulation * STEPS)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[fault, guard_cb])
    trainer.train()

    guard = guard_cb.guard
    h = guard.history
    result = {
        "rank": dist.get_rank(),
        "world_size": dist.get_world_size(),
        "backend": dist.get_backend(),
        "ddp": type(trainer.model_wrapped).__name__,
        "skipped": h.skipped.tolist(),
        "skipped_steps": guard.skipped_steps,
        "guard_steps": guard.steps,
        "moved": fault.moved,
        "steps": fault.steps,
        "schedule_steps": fault.schedule_steps,
        "lr": fault.lr,
        "scheduler_last_epoch": trainer.lr_scheduler.last_epoch,
        "global_step": trainer.state.global_step,
        "params": [p.detach().flatten().tolist() for p in model.parameters()],
        "norm_before": [v if math.isfinite(v) else None for v in h.norm_before.tolist()],
        "norm_after": [v if math.isfinite(v) else None for v in h.norm_after.tolist()],
        "logged_skipped": [e.get("steps/skipped") for e in trainer.state.log_history if "loss" in e],
        "logged_grad_norm": [e.get("grad_norm") for e in trainer.state.log_history if "loss" in e],
    }
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    # Free what holds the process group (the DDP wrapper's reducer, reachable from the Trainer and
    # its Accelerator, some of it through reference cycles) before tearing the group down: left to
    # interpreter exit, gloo aborts a rank in about one run in five ("terminate called without an
    # active exception"). The check turns a wrapper kept alive elsewhere into a clear failure, not
    # a flaky one.
    wrapper = weakref.ref(trainer.model_wrapped)
    del trainer, guard_cb, guard, h, model
    gc.collect()
    assert wrapper() is None, "the DDP wrapper outlived the Trainer; it must be freed before destroy_process_group"
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1)
