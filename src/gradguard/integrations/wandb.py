"""Weights & Biases: Guard's gradient statistics and findings in a W&B run.

    import wandb
    from gradguard.integrations.wandb import WandbLogger

    run = wandb.init(project="my-project")            # mode="offline" works the same
    wb = WandbLogger(run, module_filter="encoder.*", top_k=10)
    guard = gg.Guard(model, clip=1.0, loggers=[wb])
    ...                                                 # train
    guard.close()
    wb.log_findings(guard.findings())                  # a table, summary fields and alerts

Metrics, under the names every gradguard logger uses (``gradguard._metrics``): ``grad_norm/pre_clip``,
``grad_norm/post_clip``, ``clip/coef``, ``clip/threshold`` (with a clipper), ``clip/active_frac``,
``steps/skipped``, ``loss`` (when Guard was given one) and ``grad_norm/<module>``. Each row also
carries ``gradguard/step``, Guard's optimizer step, declared as their x-axis with
``run.define_metric``: W&B's own ``_step`` keeps counting the training loop's ``run.log`` calls,
so Guard's chunks (written every ``log_every`` steps) never clash with the loop's own logging.
If the loop logs its own ``loss``, pass ``prefix="gradguard/"`` to keep the two apart.

Findings: ``log_findings`` logs a ``wandb.Table`` (``gradguard/findings``: severity, code, where,
message, remedy, step, caused_by), puts the codes and the first finding into the run summary,
and raises a W&B alert for each finding at ``alert_level`` or above (default "error"; None: none).

Needs the ``wandb`` package (``pip install 'gradguard[loggers]'``), imported when the logger is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gradguard._extras import require
from gradguard._finding import SEVERITIES
from gradguard.integrations._loggers import FINDING_COLUMNS, ChunkMetrics, finding_row, findings_summary
from gradguard.integrations.tensorboard import ModuleFilter

STEP_KEY = "gradguard/step"
FINDINGS_KEY = "gradguard/findings"


class WandbLogger:
    """A Guard logger writing to a W&B run.

    Args:
        run: the ``wandb`` run (``wandb.init(...)``'s result); None: the active run, ``wandb.run``.
        module_filter: which per-module norms to log: None (all), a glob such as ``"encoder.*"``,
            a list of globs, a compiled regular expression (matched with ``search``) or a function.
        top_k: log only the ``top_k`` largest per-module norms of each logged step.
        every: log every ``every``-th step; ``clip/active_frac`` and ``steps/skipped`` still count all.
        window: recent steps that ``clip/active_frac`` covers.
        prefix: put before every metric name (e.g. ``"gradguard/"``).
        alert_level: findings at this severity or above raise a W&B alert ("info", "warning",
            "error", or None for no alerts).
    """

    def __init__(
        self,
        run: Any = None,
        module_filter: ModuleFilter = None,
        top_k: int | None = None,
        every: int = 1,
        *,
        window: int = 100,
        prefix: str = "",
        alert_level: str | None = "error",
    ):
        self._wandb = require("wandb", "gradguard.integrations.wandb.WandbLogger")
        self.run = run if run is not None else self._wandb.run
        if self.run is None:
            raise ValueError("WandbLogger needs a W&B run: call wandb.init(...) first, or pass WandbLogger(run=...).")
        if alert_level is not None and alert_level not in SEVERITIES:
            raise ValueError(f"alert_level must be one of {SEVERITIES} or None, got {alert_level!r}.")
        self.alert_level = alert_level
        self.prefix = str(prefix)
        self.metrics = ChunkMetrics(module_filter, top_k, every, window)
        self.run.define_metric(STEP_KEY, hidden=True)
        # The loop's own "loss" keeps W&B's default axis unless a prefix sets Guard's apart.
        for family in ("grad_norm/*", "clip/*", "steps/*") + (("loss",) if self.prefix else ()):
            self.run.define_metric(self.prefix + family, step_metric=STEP_KEY)

    def __call__(self, chunk) -> None:
        """Log a ``Chunk`` of steps (Guard calls this every ``log_every`` steps)."""
        for step, values in self.metrics(chunk):
            row = {self.prefix + name: float(value) for name, value in values.items()}
            row[STEP_KEY] = step
            self.run.log(row)

    def log_findings(self, findings: Sequence) -> None:
        """The findings as a table, in the run summary, and as alerts (see ``alert_level``)."""
        wandb = self._wandb
        table = wandb.Table(columns=list(FINDING_COLUMNS), data=[finding_row(f) for f in findings])
        self.run.log({FINDINGS_KEY: table, STEP_KEY: self.metrics.last_step or 0})
        self.run.summary["gradguard/finding_codes"] = ",".join(f.code for f in findings)
        self.run.summary["gradguard/first_finding"] = findings_summary(findings[:1])
        if self.alert_level is None:
            return
        bar = SEVERITIES.index(self.alert_level)
        levels = {"info": wandb.AlertLevel.INFO, "warning": wandb.AlertLevel.WARN, "error": wandb.AlertLevel.ERROR}
        for f in findings:
            if SEVERITIES.index(f.severity) >= bar:
                text = f.message + (f"\nRemedy: {f.remedy}" if f.remedy else "")
                self.run.alert(title=f"gradguard: {f.code}", text=text, level=levels[f.severity])


__all__ = ["WandbLogger"]
