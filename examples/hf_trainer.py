"""Guard a Hugging Face Trainer run: a clipping threshold far too low, and the one to use instead.

    python examples/hf_trainer.py          # GRADGUARD_EXAMPLE_STEPS=60 for a quick look (50 steps at least)

A tiny GPT-2, randomly initialised from its config (nothing is downloaded), learns random token
sequences with a global-norm clip of 0.05, a value copied from a setting where norms are small.
Its gradient norms sit around 0.8, so every step is clipped: the clip has become a 15-fold cut
of the learning rate rather than a guard against spikes. Guard's CLIPPING_ALWAYS finding says so
and CLIP_THRESHOLD gives a threshold from the observed norms (Pascanu et al. 2013). The Trainer
must not clip itself (``max_grad_norm=0``): GradGuardCallback clips, and logs the norms before
and after into the Trainer's logs.
"""

import os
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from gradguard.integrations.huggingface import GradGuardCallback


@dataclass
class Config:
    steps: int = int(os.environ.get("GRADGUARD_EXAMPLE_STEPS", "200"))
    lr: float = 1e-3
    clip: float = 0.05  # the bug: about 1/15 of the typical gradient norm of this model
    vocab: int = 50
    length: int = 12
    out: str = os.environ.get("GRADGUARD_EXAMPLE_OUT", "runs/hf_trainer")


class Tokens(torch.utils.data.Dataset):
    """Random token sequences; the model learns to predict them (labels = inputs)."""

    def __init__(self, n: int, length: int, vocab: int):
        self.ids = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def main() -> None:
    cfg = Config()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=cfg.vocab, n_positions=16, n_embd=32, n_layer=2, n_head=2))
    args = TrainingArguments(
        cfg.out, max_steps=cfg.steps, per_device_train_batch_size=8, learning_rate=cfg.lr,
        max_grad_norm=0.0,  # the callback clips; the Trainer must not clip first
        logging_steps=10, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
    )
    guard_cb = GradGuardCallback(clip=cfg.clip, module_filter="transformer.h.*")
    trainer = Trainer(model=model, args=args, train_dataset=Tokens(8 * cfg.steps, cfg.length, cfg.vocab), callbacks=[guard_cb])
    trainer.train()

    guard = guard_cb.guard
    h = guard.history
    print(f"gradguard: steps={guard.steps} skipped={guard.skipped_steps} clipped={h.clipped.mean():.0%} "
          f"median grad norm {np.median(h.norm_before):.3g}, clipped to {cfg.clip}")
    for finding in guard.findings():
        print(f"  {finding}")
    logged = [k for k in trainer.state.log_history[0] if "/" in k]
    print(f"  Trainer logs gained: {', '.join(logged[:6])}, ...")


if __name__ == "__main__":
    main()
