"""Lightning: ``GradGuardCallback`` measures, clips and skips where the gradients are final.

    import lightning as L
    from gradguard.integrations.lightning import GradGuardCallback

    trainer = L.Trainer(callbacks=[GradGuardCallback(clip=1.0)])  # in place of gradient_clip_val=1.0

Where it acts. Lightning calls ``on_before_optimizer_step`` once per optimizer step: after the
backward passes of all accumulated batches, after DDP averaged the gradients, after AMP's
GradScaler unscaled them, and before its own clipping (``gradient_clip_val``) and the optimizer
step. The callback runs ``Guard.check`` there: one fused norm pass, clipping, the non-finite
policy. Optimizers that unscale inside ``step()`` (``fused=True``) get scaled gradients from
Lightning; the callback unscales those itself, once. A skipped step leaves every ``.grad`` None,
so the optimizer step that follows changes neither parameters nor optimizer state. Guard
all-reduces its non-finite flag first, so every DDP rank skips the same steps and none is left
waiting in a collective.

What it logs, with ``LightningModule.log`` (to the trainer's loggers every ``log_every_n_steps``,
and into ``trainer.callback_metrics``), from device tensors, so logging adds no host sync:

    grad_norm/pre_clip, grad_norm/post_clip   total gradient norm before and after clipping
    clip/coef                                 post_clip / pre_clip (1 when clipping did not act)
    clip/threshold                            the clipper's bound at this step (with a clipper)
    clip/active_frac                          share of clipped steps among the last ``window``
    steps/skipped                             non-finite steps skipped so far
    grad_norm/<module>                        per-module norms of the modules ``module_filter`` keeps

A skipped step's norms are logged as measured (NaN or Inf): Lightning would otherwise repeat the
previous step's values. ``callback.guard.history`` keeps every step.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from gradguard._errors import GradGuardWarning, check_int
from gradguard._extras import require
from gradguard.integrations import _common as common

require("lightning", "gradguard.integrations.lightning")
from lightning.pytorch.callbacks import Callback  # noqa: E402

# Strategies whose gradients Guard cannot measure in on_before_optimizer_step, and what to use instead.
UNSUPPORTED_STRATEGIES = {
    "FSDPStrategy": (
        "FSDP1 keeps each rank's gradients in flattened local shards, so their norms would be partial. "
        "Shard with FSDP2 instead: strategy=ModelParallelStrategy(data_parallel_size=<world size>, "
        "tensor_parallel_size=1) (its defaults put a node's devices on the tensor-parallel "
        "dimension), and apply torch.distributed.fsdp.fully_shard(..., mesh=self.device_mesh"
        "['data_parallel']) in LightningModule.configure_model (the strategy does not shard by itself); "
        "gradguard reduces FSDP2's sharded DTensor gradients to the global norms."
    ),
    "DeepSpeedStrategy": (
        "DeepSpeed keeps the gradients inside its engine (partitioned, and clipped by its own "
        "gradient_clipping setting), out of reach of on_before_optimizer_step."
    ),
}


class GradGuardCallback(Callback):
    """Guard every optimizer step of a Lightning run: measure, clip, skip NaN/Inf, log.

    Args:
        clip: None (measure only), a number (global-norm bound, what ``gradient_clip_val`` does),
            a registry name ("autoclip", "zclip", "agc"...) or a clipper such as ``gg.ClipValue(0.5)``.
        nonfinite: "skip", "raise" or "ignore" a step with NaN/Inf gradients (see ``gg.Guard``).
        max_consecutive_skips: skipped steps in a row before ``NonFiniteGradientError`` is raised.
        module_filter: whose per-module norms are logged: None (all), a glob (``"encoder.*"``), a
            list of globs, a compiled regular expression, or a function of the module name.
        log_every: steps between copies of the statistics to the host (``guard.history``);
            default: the trainer's ``log_every_n_steps``.
        window: steps covered by ``clip/active_frac``.
        **guard_kwargs: any other ``gg.Guard`` keyword: ``group_by`` (how parameters form
            modules), ``norm_type``, ``probes``, ``store`` (a run store, written by rank 0), ...

    Once ``fit`` starts, ``callback.guard`` is the Guard: ``guard.history``,
    ``guard.skipped_steps``, ``guard.findings()``, ``guard.report(path)``.
    """

    def __init__(
        self,
        clip: Any = None,
        nonfinite: str = "skip",
        max_consecutive_skips: int = 10,
        *,
        module_filter: common.ModuleFilter = None,
        log_every: int | None = None,
        window: int = common.WINDOW,
        **guard_kwargs: Any,
    ):
        self.settings = common.GuardSettings(clip, nonfinite, max_consecutive_skips, module_filter, window, guard_kwargs)
        self.log_every = None if log_every is None else check_int("log_every", log_every, minimum=1)
        self.guard = None
        self._guard_closed = False
        self._saved_state: dict[str, Any] | None = None
        self._module_tags: list[tuple[int, str]] = []
        self._loss: torch.Tensor | None = None
        self._recent: torch.Tensor | None = None  # clipped flags of the last `window` steps, on the device
        self._skips: torch.Tensor | None = None  # skipped steps so far, on the device

    # ------------------------------------------------------------------ set-up checks
    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        for cls in type(trainer.strategy).__mro__:
            if cls.__name__ in UNSUPPORTED_STRATEGIES:
                raise NotImplementedError(f"GradGuardCallback does not support {cls.__name__}. {UNSUPPORTED_STRATEGIES[cls.__name__]}")
        lightning_clip = trainer.gradient_clip_val
        if not lightning_clip:  # None or 0: Lightning does not clip
            return
        algorithm = trainer.gradient_clip_algorithm or "norm"
        equivalent = f"clip={lightning_clip}" if algorithm == "norm" else f"clip=gg.ClipValue({lightning_clip})"
        if self.settings.clipper is not None:
            raise ValueError(
                f"Trainer(gradient_clip_val={lightning_clip}) and GradGuardCallback(clip={self.settings.clipper!r}) "
                "would both clip: Lightning clips right after this callback, so the gradients would be clipped "
                "twice and the logged grad_norm/post_clip would not be what the optimizer used. Keep one: remove "
                f"gradient_clip_val from the Trainer (GradGuardCallback({equivalent}) does what it did)."
            )
        warnings.warn(
            f"Trainer(gradient_clip_val={lightning_clip}) clips after GradGuardCallback has measured, so the logged "
            "grad_norm/post_clip is the norm before Lightning's clipping. To log the norm the optimizer uses, "
            f"clip in the callback instead: GradGuardCallback({equivalent}) and no gradient_clip_val.",
            GradGuardWarning,
            stacklevel=2,
        )

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.guard is not None and not self._guard_closed:
            return
        if self.guard is not None and self._saved_state is None:
            self._saved_state = self.guard.state_dict()  # a second fit() with this callback: keep counting
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self.guard = self.settings.build(pl_module, log_every=self.log_every or trainer.log_every_n_steps, scaler=scaler)
        self.guard.recorder.set_meta(integration="lightning")  # remedies in this loop's syntax
        self._guard_closed = False
        if self._saved_state is not None:
            self.guard.load_state_dict(self._saved_state)
            self._saved_state = None
        self._module_tags = self.settings.module_tags(self.guard.module_names)
        self._recent = self._skips = None
        if len(trainer.optimizers) > 1:
            warnings.warn(
                "GradGuardCallback measures every gradient of the LightningModule at each optimizer step; "
                f"with {len(trainer.optimizers)} optimizers a step also sees the other optimizers' gradients.",
                GradGuardWarning,
                stacklevel=2,
            )

    # ------------------------------------------------------------------ the step
    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        # Lightning divides each accumulated batch's loss by the number of batches: the sum is their mean.
        loss = loss.detach()
        self._loss = loss if self._loss is None else self._loss + loss

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.guard is None or self._guard_closed:
            self.on_fit_start(trainer, pl_module)
        guard = self.guard
        skips_before = guard.skipped_steps
        info = guard.check(optimizer, loss=self._loss)
        self._loss = None
        skipped = guard.skipped_steps > skips_before  # decided on the host already: free to read
        pl_module.log_dict(self._metrics(info, skipped), on_step=True, on_epoch=False, logger=bool(trainer.loggers))

    def _metrics(self, info, skipped: bool) -> dict[str, Any]:
        """This step's statistics as device tensors (logging them reads nothing on the host)."""
        from gradguard._metrics import active_frac, metrics

        device = info.norm_before.device
        if self._recent is None:
            self._recent = torch.zeros(self.settings.window, device=device)
            self._skips = torch.full((), float(self.guard.skipped_steps), device=device)
        clipped = info.clipped.float() if not skipped else torch.zeros((), device=device)
        steps = self.guard.steps
        self._recent[(steps - 1) % self.settings.window] = clipped
        self._skips = self._skips + info.skipped.float()
        recent = self._recent[: min(steps, self.settings.window)]
        module_norms = info.module_norms.float()
        step = {"norm_before": info.norm_before.float(), "norm_after": info.norm_after.float(), "coef": info.coef.float(), "threshold": info.threshold.float()}
        return metrics(
            step,
            active_frac=active_frac(recent, torch.zeros_like(recent)),
            skipped=self._skips,
            module_norms=((self.guard.module_names[i], module_norms[i]) for i, _ in self._module_tags),
            with_threshold=self.settings.clipper is not None,
            finite_only=False,
        )

    # ------------------------------------------------------------------ end of run, checkpoints
    def on_train_end(self, trainer, pl_module) -> None:
        if self.guard is not None and not self._guard_closed:
            self.guard.flush()

    def on_fit_end(self, trainer, pl_module) -> None:
        self._close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._close()  # what was measured up to the failure reaches history and the run store

    def _close(self) -> None:
        if self.guard is not None and not self._guard_closed:
            self.guard.close()
            self._guard_closed = True

    def state_dict(self) -> dict[str, Any]:
        return {"guard": self.guard.state_dict()} if self.guard is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "guard" not in state_dict:
            return
        if self.guard is not None and not self._guard_closed:
            self.guard.load_state_dict(state_dict["guard"])
        else:
            self._saved_state = dict(state_dict["guard"])


__all__ = ["GradGuardCallback"]
