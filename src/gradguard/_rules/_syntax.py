"""Remedies in the syntax of the loop the run used: a plain loop, Lightning, or the HF Trainer.

The integration callbacks record ``meta["integration"]`` ("lightning" or "huggingface"); a run
without it is a plain loop with ``gg.Guard``. Each function turns part of a ``Finding.fix`` into
the line a user would write.
"""

from __future__ import annotations

from gradguard._rundata import RunData

PLAIN, LIGHTNING, HF = "plain", "lightning", "huggingface"


def integration(data: RunData) -> str:
    value = data.meta.get("integration")
    return value if value in (LIGHTNING, HF) else PLAIN


def lr_text(data: RunData, lr: float, warmup: int | None, optimizer: str | None) -> str:
    """Set the learning rate (and a linear warm-up) where this kind of run sets it."""
    opt = optimizer or "torch.optim.AdamW"
    opt = opt if opt.startswith("torch.") or "." in opt else f"torch.optim.{opt}"
    kind = integration(data)
    if kind == HF:
        args = f"learning_rate={lr:g}" + (f", warmup_steps={warmup}" if warmup else "")
        return f"TrainingArguments({args}, max_grad_norm=0) with callbacks=[GradGuardCallback()]"
    where = "self.parameters()" if kind == LIGHTNING else "model.parameters()"
    text = f"{opt}({where}, lr={lr:g})"
    if warmup:
        text += (f" with a warm-up: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / {warmup}))")
    if kind == LIGHTNING:
        text = f"in configure_optimizers: {text}" + (" (return it with the scheduler, interval 'step')" if warmup else "")
    return text


def clip_text(data: RunData, value: float | str) -> str:
    """Clip the global norm at ``value`` (or with a clipper name) in this kind of run."""
    arg = f"{value:g}" if isinstance(value, (int, float)) else f"{value!r}"
    clipper = f"gg.ClipNorm(max_norm={value:g})" if isinstance(value, (int, float)) else arg
    kind = integration(data)
    if kind == LIGHTNING:
        return f"Trainer(callbacks=[GradGuardCallback(clip={arg})]) in place of Trainer(gradient_clip_val=...)"
    if kind == HF:
        return f"TrainingArguments(max_grad_norm=0) with callbacks=[GradGuardCallback(clip={arg})]"
    return f"gg.Guard(model, clip={clipper})"


def guard_text(data: RunData, **kwargs: str) -> str:
    """Guard's own options (``nonfinite="skip"``...) in this kind of run."""
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    kind = integration(data)
    if kind == LIGHTNING:
        return f"Trainer(callbacks=[GradGuardCallback({args})])"
    if kind == HF:
        return f"Trainer(..., callbacks=[GradGuardCallback({args})])"
    return f"gg.Guard(model, {args})"


def precision_text(data: RunData) -> str:
    kind = integration(data)
    if kind == LIGHTNING:
        return 'Trainer(precision="bf16-mixed")'
    if kind == HF:
        return "TrainingArguments(bf16=True, fp16=False)"
    return 'torch.autocast(device_type, dtype=torch.bfloat16) around the forward pass (float32 weights, no GradScaler needed)'
