"""MLflow: Guard's gradient statistics as run metrics, its findings as tags and artifacts.

    import mlflow
    from gradguard.integrations.mlflow import MlflowLogger

    with mlflow.start_run():
        ml = MlflowLogger(module_filter="encoder.*", top_k=10)      # the active run
        guard = gg.Guard(model, clip=1.0, loggers=[ml])
        ...                                                          # train
        guard.close()
        ml.log_findings(guard.findings())

Metrics, at Guard's optimizer step, under the names every gradguard logger uses
(``gradguard._metrics``): ``grad_norm/pre_clip``, ``grad_norm/post_clip``, ``clip/coef``,
``clip/threshold`` (with a clipper), ``clip/active_frac``, ``steps/skipped``, ``loss`` (when
Guard was given one) and ``grad_norm/<module>``. MLflow accepts letters, digits and ``_-. :/``
in names; any other character of a module name becomes ``_``. Each chunk of steps goes out in
``log_batch`` calls (at most 1000 metrics each), not one request per value.

Findings (``log_findings``): the artifacts ``gradguard/findings.json`` (every field, evidence
included) and ``gradguard/findings.md`` (a table), and the tags ``gradguard.finding_codes``
(comma-separated), ``gradguard.first_finding`` and ``gradguard.findings`` (one line each).

Needs the ``mlflow`` package (``pip install 'gradguard[loggers]'``), imported when the logger is built.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

from gradguard._extras import require
from gradguard.integrations._loggers import ChunkMetrics, findings_markdown, findings_summary
from gradguard.integrations.tensorboard import ModuleFilter

BATCH = 1000  # MLflow's limit of metrics per log_batch request
TAG_LIMIT = 5000  # characters per tag value, within every MLflow version's limit
_BAD_CHARACTERS = re.compile(r"[^/\w.\- :]")


def metric_key(name: str) -> str:
    """``name`` with the characters MLflow rejects replaced by ``_`` (``"(root)"`` -> ``"_root_"``)."""
    return _BAD_CHARACTERS.sub("_", name)


class MlflowLogger:
    """A Guard logger writing to an MLflow run.

    Args:
        run_id: the run to write to; None: the active run (``mlflow.start_run()``), started here
            if there is none.
        client: an ``mlflow.MlflowClient`` (default: one for the current tracking URI).
        module_filter: which per-module norms to log: None (all), a glob such as ``"encoder.*"``,
            a list of globs, a compiled regular expression (matched with ``search``) or a function.
        top_k: log only the ``top_k`` largest per-module norms of each logged step.
        every: log every ``every``-th step; ``clip/active_frac`` and ``steps/skipped`` still count all.
        window: recent steps that ``clip/active_frac`` covers.
        prefix: put before every metric name (e.g. ``"gradguard/"``).
    """

    def __init__(
        self,
        run_id: str | None = None,
        client: Any = None,
        module_filter: ModuleFilter = None,
        top_k: int | None = None,
        every: int = 1,
        *,
        window: int = 100,
        prefix: str = "",
    ):
        mlflow = require("mlflow", "gradguard.integrations.mlflow.MlflowLogger")
        if run_id is None:
            active = mlflow.active_run() or mlflow.start_run()
            run_id = active.info.run_id
        self.run_id = run_id
        self.client = client if client is not None else mlflow.MlflowClient()
        self.prefix = str(prefix)
        self.metrics = ChunkMetrics(module_filter, top_k, every, window)
        self._Metric = require("mlflow.entities", "MlflowLogger").Metric
        self._keys: dict[str, str] = {}

    def _key(self, name: str) -> str:
        key = self._keys.get(name)
        if key is None:
            key = self._keys[name] = metric_key(self.prefix + name)
        return key

    def __call__(self, chunk) -> None:
        """Log a ``Chunk`` of steps (Guard calls this every ``log_every`` steps)."""
        now = int(time.time() * 1000)
        batch = [
            self._Metric(self._key(name), float(value), now, step)
            for step, values in self.metrics(chunk)
            for name, value in values.items()
        ]
        for start in range(0, len(batch), BATCH):
            self.client.log_batch(self.run_id, metrics=batch[start : start + BATCH])

    def log_findings(self, findings: Sequence) -> None:
        """The findings as artifacts (JSON and Markdown) and as tags."""
        self.client.log_dict(self.run_id, [f.to_dict() for f in findings], "gradguard/findings.json")
        self.client.log_text(self.run_id, findings_markdown(findings) + "\n", "gradguard/findings.md")
        self.client.set_tag(self.run_id, "gradguard.finding_codes", ",".join(f.code for f in findings))
        self.client.set_tag(self.run_id, "gradguard.first_finding", findings_summary(findings[:1], TAG_LIMIT))
        self.client.set_tag(self.run_id, "gradguard.findings", findings_summary(findings, TAG_LIMIT))


__all__ = ["MlflowLogger", "metric_key"]
