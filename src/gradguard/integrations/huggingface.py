"""Hugging Face ``transformers.Trainer``: ``GradGuardCallback`` measures, clips and skips each step.

    from transformers import Trainer, TrainingArguments
    from gradguard.integrations.huggingface import GradGuardCallback

    args = TrainingArguments("out", max_grad_norm=0, logging_steps=10)  # the callback clips instead
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[GradGuardCallback(clip=1.0)])

Where it acts. At each optimizer step the Trainer (checked with transformers 5.23) clips to
``max_grad_norm`` when it is > 0, computes the norm it logs as ``grad_norm`` (through accelerate,
which also unscales fp16 gradients), then calls ``on_pre_optimizer_step``, ``optimizer.step()``,
``on_optimizer_step``, and steps the learning-rate scheduler unless the step was marked skipped.
A callback therefore sees unscaled, synchronised gradients, but only after the Trainer's clipping:
the callback requires ``max_grad_norm=0`` and does the clipping itself, so that what it logs as
the norm before clipping is that. In ``on_pre_optimizer_step`` it runs ``Guard.check`` (one fused
norm pass, clipping, the non-finite policy). A skipped step leaves every ``.grad`` None, so
``optimizer.step()`` changes neither parameters nor optimizer state, and the callback marks the
step as skipped for the Trainer, which then leaves the scheduler where it was (as after an fp16
overflow). Guard all-reduces its non-finite flag, so all ranks skip together: tested with the
Trainer's own DDP on two CPU ranks (a NaN put into one rank's gradients after they were averaged
makes both ranks skip that step and hold the learning-rate schedule), and with ``bf16=True``
autocast, where Guard sees the float32 gradients of the float32 parameters.

Caveat: the Trainer's own norm pass multiplies every gradient by a NaN factor when any gradient
is non-finite, so on a skipped step every parameter reads as non-finite; ``gg.locate_nonfinite``
(or Guard's ``locate_nonfinite``, on by default, on the step after a skip) names the first module.

What it logs, merged into the Trainer's logs at each logging step (``trainer.state.log_history``,
``trainer_state.json``, and the ``logs`` every callback after this one receives)::

    grad_norm/pre_clip, grad_norm/post_clip   total norm before and after clipping, last step
    clip/coef                                 post_clip / pre_clip (1 when clipping did not act)
    clip/threshold                            the clipper's bound at the last step (with a clipper)
    clip/active_frac                          share of clipped steps among the last ``window``
    steps/skipped                             non-finite steps skipped so far
    grad_norm/<module>                        per-module norms of the modules ``module_filter`` keeps

The Trainer runs the reporting callbacks of ``report_to`` (TensorBoard, W&B...) before the ones
passed in ``callbacks=``; for them to receive these metrics too, call ``callback.attach(trainer)``
instead, which puts the callback first.
"""

from __future__ import annotations

import warnings
from typing import Any


from gradguard._errors import GradGuardWarning
from gradguard._extras import require
from gradguard.integrations import _common as common

transformers = require("transformers", "gradguard.integrations.huggingface")
from transformers import TrainerCallback  # noqa: E402

if not hasattr(TrainerCallback, "on_pre_optimizer_step"):  # pragma: no cover - old transformers
    raise ImportError(
        f"gradguard.integrations.huggingface needs a transformers version whose Trainer calls "
        f"on_pre_optimizer_step; transformers {transformers.__version__} does not. Upgrade with: "
        "python -m pip install -U transformers"
    )


class GradGuardCallback(TrainerCallback):
    """Guard every optimizer step of a ``transformers.Trainer`` run: measure, clip, skip NaN/Inf, log.

    Args:
        clip: None (measure only), a number (global-norm bound, what ``max_grad_norm`` does), a
            registry name ("autoclip", "zclip", "agc"...) or a clipper such as ``gg.ClipValue(0.5)``.
        nonfinite: "skip", "raise" or "ignore" a step with NaN/Inf gradients (see ``gg.Guard``).
        max_consecutive_skips: skipped steps in a row before ``NonFiniteGradientError`` is raised.
        module_filter: whose per-module norms are logged: None (all), a glob (``"*.attn"``), a list
            of globs, a compiled regular expression, or a function of the module name.
        window: steps covered by ``clip/active_frac``.
        **guard_kwargs: any other ``gg.Guard`` keyword: ``group_by``, ``norm_type``, ``probes``,
            ``store`` (a run store, written by rank 0), ``log_every`` (default: ``logging_steps``).

    Once training starts, ``callback.guard`` is the Guard: ``guard.history``,
    ``guard.skipped_steps``, ``guard.findings()``, ``guard.report(path)``.
    """

    def __init__(
        self,
        clip: Any = None,
        nonfinite: str = "skip",
        max_consecutive_skips: int = 10,
        *,
        module_filter: common.ModuleFilter = None,
        window: int = common.WINDOW,
        **guard_kwargs: Any,
    ):
        self.settings = common.GuardSettings(clip, nonfinite, max_consecutive_skips, module_filter, window, guard_kwargs)
        self.guard = None
        self._guard_closed = False
        self._module_tags: list[tuple[int, str]] = []
        self._skipped_now = False
        self._last_logged = 0  # Guard step last merged into the Trainer's logs
        self._warned_scheduler = False

    def attach(self, trainer) -> GradGuardCallback:
        """Put this callback first in ``trainer``, ahead of the reporting callbacks; returns it."""
        callbacks = trainer.callback_handler.callbacks
        if self in callbacks:
            callbacks.remove(self)
        callbacks.insert(0, self)
        self._check_args(trainer.args)
        return self

    # ------------------------------------------------------------------ set-up checks
    def _check_args(self, args) -> None:
        if getattr(args, "deepspeed", None):
            raise NotImplementedError(
                "GradGuardCallback does not support DeepSpeed: the engine keeps the gradients (partitioned, "
                "and clipped by its own gradient_clipping), out of reach of on_pre_optimizer_step."
            )
        max_norm = args.max_grad_norm
        if max_norm is not None and max_norm > 0:
            suggestion = f"clip={self.settings.clipper!r}" if self.settings.clipper is not None else f"clip={max_norm}"
            raise ValueError(
                f"TrainingArguments(max_grad_norm={max_norm}) makes the Trainer clip the gradients before "
                "GradGuardCallback sees them (it acts in on_pre_optimizer_step, after the Trainer's clipping): the "
                "norm it logged as pre-clip would be the clipped one, and with a clipper of its own the gradients "
                f"would be clipped twice. Set TrainingArguments(max_grad_norm=0) and GradGuardCallback({suggestion})."
            )

    def on_init_end(self, args, state, control, **kwargs):
        self._check_args(args)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._check_args(args)
        if self.guard is not None and not self._guard_closed:
            return
        previous = self.guard.state_dict() if self.guard is not None else None  # a second train(): keep counting
        steps = args.logging_steps if isinstance(args.logging_steps, int) and args.logging_steps >= 1 else 50
        self.guard = self.settings.build(model, log_every=min(steps, 1000))
        self.guard.recorder.set_meta(integration="huggingface")  # remedies in this loop's syntax
        self._guard_closed = False
        if previous is not None:
            self.guard.load_state_dict(previous)
        self._module_tags = self.settings.module_tags(self.guard.module_names)

    # ------------------------------------------------------------------ the step
    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        guard = self.guard
        skips_before = guard.skipped_steps
        guard.check(kwargs.get("optimizer"))  # reads the learning rate; gradients are already unscaled: the Trainer's norm pass went through accelerate
        self._skipped_now = guard.skipped_steps > skips_before

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self._keep_scheduler_in_step(optimizer, self._skipped_now)

    def _keep_scheduler_in_step(self, optimizer, skipped: bool) -> None:
        """Tell the Trainer the step was skipped, as accelerate does after an fp16 overflow."""
        if optimizer is None or not hasattr(optimizer, "_is_overflow"):
            if skipped and not self._warned_scheduler:
                warnings.warn(
                    "GradGuardCallback skipped a step but cannot mark it skipped on this optimizer "
                    f"({type(optimizer).__name__}); the learning-rate scheduler moved on as if it had stepped.",
                    GradGuardWarning,
                    stacklevel=2,
                )
                self._warned_scheduler = True
            return
        if getattr(optimizer, "scaler", None) is None:
            optimizer._is_overflow = skipped  # no scaler: only this callback ever sets the flag
        elif skipped:
            optimizer._is_overflow = True  # with a scaler its own step() resets the flag each step

    # ------------------------------------------------------------------ logging
    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or self.guard is None or self._guard_closed:
            return
        metrics = self._metrics()
        if not metrics:
            return
        logs.update(metrics)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(metrics)  # the entry the Trainer just appended for these logs

    def _metrics(self) -> dict[str, float]:
        """The last step's statistics, or {} when no step happened since the last logging step."""
        from gradguard._metrics import active_frac, metrics

        self.guard.flush()
        h = self.guard.history
        if not len(h) or int(h.step[-1]) == self._last_logged:
            return {}
        self._last_logged = int(h.step[-1])
        w = self.settings.window
        last = {name: h.column(name)[-1].item() for name in ("norm_before", "norm_after", "coef", "threshold", "skipped")}
        module_norms = h.module_norms[-1]
        out = metrics(
            last,
            active_frac=active_frac(h.clipped[-w:], h.skipped[-w:]),
            skipped=float(self.guard.skipped_steps),
            module_norms=((self.guard.module_names[i], float(module_norms[i])) for i, _ in self._module_tags),
            with_threshold=self.settings.clipper is not None,
        )
        return {k: float(v) for k, v in out.items()}

    def on_train_end(self, args, state, control, **kwargs):
        if self.guard is not None and not self._guard_closed:
            self.guard.close()  # flushes, and writes the findings to the run store if there is one
            self._guard_closed = True


__all__ = ["GradGuardCallback"]
