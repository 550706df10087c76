"""TensorBoard: Guard's gradient statistics as scalars under stable tags.

    guard = gg.Guard(model, clip=1.0, loggers=[TensorBoardLogger("runs/tb")])

or, from a plain loop without Guard::

    tb = TensorBoardLogger("runs/tb")
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    tb.log(step, norm_before=norm, threshold=1.0, loss=loss)

Tags (the same whichever way it is fed):

    grad_norm/pre_clip    total gradient norm before clipping
    grad_norm/post_clip   total gradient norm after clipping
    clip/coef             post_clip / pre_clip (1 when clipping did not act)
    clip/active_frac      share of clipped steps among the last ``window`` steps (a running window
                          over every step seen, written or not, so it does not depend on ``every``
                          or on Guard's ``log_every``)
    steps/skipped         cumulative count of skipped (non-finite) steps
    loss                  when a loss was given
    grad_norm/<module>    per-module norms, for modules that pass ``module_filter``
    gradguard/findings    text (TEXT tab): ``tb.log_findings(guard.findings())`` writes them as a
                          Markdown table, most urgent first

The names and the arithmetic (``clip/coef`` is the clipper's own coefficient) come from
``gradguard._metrics.metrics``, which every logger shares. A skipped step has no finite norm: its norms and coefficient are not written (a NaN would break
the chart's scale), only ``steps/skipped`` and ``clip/active_frac``.

``torch.utils.tensorboard`` needs the ``tensorboard`` package (the ``integrations`` extra); it is
imported only when the logger opens its own writer.
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from gradguard._errors import check_int
from gradguard._metrics import active_frac, metrics

ModuleFilter = str | re.Pattern | Iterable[str] | Callable[[str], bool] | None


def _name_filter(spec: ModuleFilter) -> Callable[[str], bool]:
    """None: every module. A str: a glob (``"encoder.*"``). A list of str: any of those globs.
    A compiled ``re.Pattern``: ``pattern.search(name)``. A callable: used as is."""
    if spec is None:
        return lambda name: True
    if isinstance(spec, re.Pattern):
        return lambda name: spec.search(name) is not None
    if isinstance(spec, str):
        return lambda name: fnmatch.fnmatchcase(name, spec)
    if callable(spec):
        return spec
    if isinstance(spec, Iterable):
        globs = list(spec)
        if not all(isinstance(g, str) for g in globs):
            raise TypeError(f"module_filter as a list must hold glob strings, got {globs!r}.")
        return lambda name: any(fnmatch.fnmatchcase(name, g) for g in globs)
    raise TypeError(f"module_filter must be None, a glob string, a list of globs, a re.Pattern or a function; got {type(spec).__name__}.")


def _float(value: Any) -> float:
    if value is None:
        return math.nan
    if hasattr(value, "detach"):  # a tensor: one host read, at a step that is being logged
        value = value.detach().float().item()
    return float(value)


class TensorBoardLogger:
    """Write gradient statistics to TensorBoard; a Guard logger and a plain-loop logger.

    Args:
        log_dir_or_writer: a directory for a new ``SummaryWriter``, or an existing writer (any
            object with ``add_scalar``; the logger then leaves closing it to you).
        module_filter: which per-module norms to write as ``grad_norm/<module>``: None (all),
            a glob such as ``"encoder.*"``, a list of globs, a compiled regular expression
            (``re.compile(r"layers\\.\\d+$")``, matched with ``search``), or a function.
        every: write every ``every``-th step (by step number); statistics still count every step.
        window: how many recent steps ``clip/active_frac`` covers.
    """

    def __init__(self, log_dir_or_writer: str | os.PathLike | Any, module_filter: ModuleFilter = None, every: int = 1, *, window: int = 100):
        self.every = check_int("every", every, minimum=1)
        self.window = check_int("window", window, minimum=1)
        self._keep = _name_filter(module_filter)
        self._kept: dict[str, bool] = {}
        if hasattr(log_dir_or_writer, "add_scalar"):
            self.writer = log_dir_or_writer
            self._owns_writer = False
        elif isinstance(log_dir_or_writer, (str, os.PathLike)):
            from gradguard._extras import require

            tb = require("torch.utils.tensorboard", "TensorBoardLogger")
            self.writer = tb.SummaryWriter(log_dir=os.fspath(log_dir_or_writer))
            self._owns_writer = True
        else:
            raise TypeError(f"TensorBoardLogger needs a log directory or a SummaryWriter, got {type(log_dir_or_writer).__name__}.")
        self._recent: deque[tuple[bool, bool]] = deque(maxlen=self.window)  # (clipped, skipped) per step
        self.skipped = 0
        self._last_step = 0

    # ------------------------------------------------------------------ Guard
    def __call__(self, chunk) -> None:
        """Log a ``Chunk`` of steps (Guard calls this every ``log_every`` steps)."""
        sc = chunk.scalars
        for i, step in enumerate(chunk.steps.tolist()):
            row = {name: sc[name][i].item() for name in ("norm_before", "norm_after", "threshold", "coef", "clipped", "skipped", "loss")}
            self._write(step, row, zip(chunk.module_names, chunk.modules[i].tolist()))

    # ------------------------------------------------------------------ plain loop
    def log(
        self,
        step: int,
        *,
        norm_before: Any,
        norm_after: Any = None,
        threshold: Any = None,
        clipped: Any = None,
        skipped: Any = False,
        loss: Any = None,
        module_norms: Mapping[str, Any] | None = None,
    ) -> None:
        """Log one optimizer step. Tensors or numbers.

        ``norm_after`` defaults to ``min(norm_before, threshold)`` (what global-norm clipping
        leaves) or ``norm_before`` without a threshold; ``clipped`` defaults to
        ``norm_after < norm_before``.
        """
        before = _float(norm_before)
        thr = _float(threshold)
        if norm_after is None:
            after = min(before, thr) if math.isfinite(thr) else before
        else:
            after = _float(norm_after)
        skip = bool(_float(skipped)) if skipped is not None else False
        if clipped is None:
            clip = (not skip) and math.isfinite(before) and after < before
        else:
            clip = bool(_float(clipped)) and not skip
        row = {"norm_before": before, "norm_after": after, "threshold": thr, "clipped": clip, "skipped": skip, "loss": _float(loss)}
        self._write(step, row, ((name, _float(v)) for name, v in (module_norms or {}).items()))

    def _write(self, step: int, row: dict[str, Any], module_norms: Iterable[tuple[str, float]]) -> None:
        """Count the step in the running window, and write it if ``every`` says so."""
        self._recent.append((bool(row["clipped"]), bool(row["skipped"])))
        self.skipped += int(bool(row["skipped"]))
        self._last_step = step  # where log_findings writes by default
        if step % self.every:
            return
        clipped, skipped = zip(*self._recent)
        found = metrics(
            row,
            active_frac=active_frac(np.array(clipped), np.array(skipped)),
            skipped=self.skipped,
            module_norms=((n, v) for n, v in module_norms if self._wanted(n)),
            with_threshold=False,
        )
        for tag, value in found.items():
            self.writer.add_scalar(tag, value, step)

    def _wanted(self, name: str) -> bool:
        keep = self._kept.get(name)
        if keep is None:
            keep = self._kept[name] = bool(self._keep(name))
        return keep

    # ------------------------------------------------------------------ lifecycle
    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        """Flush, and close the writer if this logger opened it."""
        self.writer.flush()
        if self._owns_writer:
            self.writer.close()

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ findings
    def log_findings(self, findings, step: int | None = None) -> None:
        """Write the findings as a Markdown table, a text summary under ``gradguard/findings``
        (TensorBoard's TEXT tab), at ``step`` (default: the last step seen)."""
        from gradguard.integrations._loggers import findings_markdown

        at = step if step is not None else self._last_step
        self.writer.add_text("gradguard/findings", findings_markdown(findings), at)
