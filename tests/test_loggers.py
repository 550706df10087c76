"""W&B, MLflow and TensorBoard loggers: the same metrics from the one metrics function, module
filters and top-k, and the findings, each read back from what the logger wrote (W&B offline run
files, an MLflow file store, TensorBoard event files)."""

from __future__ import annotations

import json
import math
import re
import struct
import sys
import time

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import gradguard as gg
from gradguard._history import SCALARS, Chunk
from gradguard.integrations._loggers import ChunkMetrics, findings_markdown
from tests.conftest import mlp


def guarded_run(loggers, steps=6, nan_step=4, clip=0.05, **guard_kwargs):
    """A tiny MLP guarded for ``steps`` steps; its gradient gets a NaN at ``nan_step``."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    guard = gg.Guard(model, clip=clip, loggers=loggers, log_every=4, **guard_kwargs)
    gen = torch.Generator().manual_seed(0)
    for step in range(1, steps + 1):
        loss = model(torch.randn(16, 8, generator=gen)).pow(2).mean()
        loss.backward()
        if step == nan_step:
            model[0].weight.grad[0, 0] = math.nan
        guard.step(opt, loss=loss)
        opt.zero_grad()
    guard.close()
    return guard


def expected_pre_clip(guard) -> dict[int, float]:
    h = guard.history
    return {int(s): float(v) for s, v, k in zip(h.step, h.norm_before, h.skipped) if not k}


# ---------------------------------------------------------------------------- shared metrics
def chunk_strategy():
    n = st.integers(1, 12)
    return n.flatmap(
        lambda k: st.tuples(
            st.lists(st.floats(1e-3, 1e3), min_size=k, max_size=k),
            st.lists(st.booleans(), min_size=k, max_size=k),
            st.lists(st.lists(st.floats(0, 10), min_size=4, max_size=4), min_size=k, max_size=k),
        )
    )


def make_chunk(before, skipped, modules, threshold=1.0, start=1):
    n = len(before)
    before = np.where(skipped, np.nan, np.asarray(before, dtype=float))
    after = np.minimum(before, threshold)
    clipped = (before > threshold) & ~np.asarray(skipped)
    scalars = {"norm_before": before, "norm_after": after, "threshold": np.full(n, threshold), "clipped": clipped,
               "skipped": np.asarray(skipped), "loss": np.linspace(1, 2, n)}
    scalars = {k: v for k, v in scalars.items() if k in SCALARS}
    return Chunk(np.arange(start, start + n), scalars, ["enc.0", "enc.1", "dec.0", "head"], np.asarray(modules, dtype=float))


class FakeWriter:
    def __init__(self):
        self.scalars: dict[int, dict[str, float]] = {}

    def add_scalar(self, tag, value, step):
        self.scalars.setdefault(step, {})[tag] = float(value)

    def flush(self):
        pass


@given(chunk_strategy(), st.sampled_from([None, "enc.*"]), st.integers(1, 3))
def test_tensorboard_and_the_tracking_loggers_write_the_same_metrics(data, module_filter, every):
    from gradguard.integrations.tensorboard import TensorBoardLogger

    before, skipped, modules = data
    chunk = make_chunk(before, skipped, modules)
    writer = FakeWriter()
    TensorBoardLogger(writer, module_filter=module_filter, every=every)(chunk)
    ours = dict(ChunkMetrics(module_filter, every=every)(make_chunk(before, skipped, modules)))
    ours = {step: {k: v for k, v in m.items() if k != "clip/threshold"} for step, m in ours.items()}  # TB leaves it out
    assert writer.scalars.keys() == ours.keys()
    for step, values in ours.items():
        assert writer.scalars[step].keys() == values.keys()
        np.testing.assert_allclose([writer.scalars[step][k] for k in values], list(values.values()), rtol=1e-6)


@given(chunk_strategy(), st.integers(1, 4))
def test_top_k_keeps_the_largest_finite_module_norms(data, k):
    before, skipped, modules = data
    for step, values in ChunkMetrics(top_k=k)(make_chunk(before, skipped, modules)):
        row = np.asarray(modules[step - 1])
        logged = {name: v for name, v in values.items() if name.startswith("grad_norm/") and name.count("/") == 1 and "clip" not in name}
        logged.pop("grad_norm/pre_clip", None), logged.pop("grad_norm/post_clip", None)
        assert len(logged) == min(k, len(row))
        assert sorted(logged.values(), reverse=True) == sorted(row, reverse=True)[: len(logged)]


def test_module_filter_takes_globs_regexes_and_functions():
    chunk = make_chunk([0.5], [False], [[1, 2, 3, 4]])
    for spec, kept in [("enc.*", {"enc.0", "enc.1"}), (["dec.*", "head"], {"dec.0", "head"}),
                       (re.compile(r"\.1$"), {"enc.1"}), (lambda n: n == "head", {"head"})]:
        ((_, values),) = ChunkMetrics(spec)(chunk)
        assert {k[len("grad_norm/"):] for k in values if k.startswith("grad_norm/")} - {"pre_clip", "post_clip"} == kept


def test_findings_markdown_escapes_table_cells():
    f = gg.Finding("NONFINITE", "error", "a | b", ["x"], {}, "use a|b\nnow")
    text = findings_markdown([f])
    assert text.count("\n") == 2 and "a \\| b" in text and "use a\\|b now" in text


# ---------------------------------------------------------------------------- W&B, offline
def wandb_records(run_dir, wait_s: float = 60.0):
    """History rows and alerts of an offline W&B run, from its .wandb file (a LevelDB-style log
    of protobuf records: 32 KiB blocks, 7-byte record headers). W&B's service process writes the
    file behind ``run.finish()``; the run is complete once its exit record is there."""
    deadline = time.monotonic() + wait_s
    while True:
        out, complete = _parse_wandb_file(next(run_dir.glob("run-*.wandb")))
        if complete or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def _parse_wandb_file(path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending, out, complete = 7, b"", {"history": [], "alert": []}, False
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        body, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        pending = body if kind in (1, 2) else pending + body
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            which = record.WhichOneof("record_type")
            if which == "history":
                out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
            elif which == "alert":
                out["alert"].append((record.alert.title, record.alert.level, record.alert.text))
            complete = complete or which == "exit"
    return out, complete


@pytest.fixture
def wandb_run(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(project="gradguard-tests", dir=str(tmp_path), settings=wandb.Settings(console="off", x_disable_stats=True))
    yield run
    run.finish()


@pytest.mark.slow
def test_wandb_logger_writes_metrics_modules_and_findings(wandb_run, tmp_path):
    from gradguard.integrations.wandb import WandbLogger

    wb = WandbLogger(wandb_run, module_filter="[02]", top_k=1)
    guard = guarded_run([wb])
    findings = guard.findings()
    wb.log_findings(findings)
    wandb_run.finish()
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    rec = wandb_records(run_dir)
    rows = [r for r in rec["history"] if "grad_norm/pre_clip" in r or "steps/skipped" in r]
    assert [r["gradguard/step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    got = {r["gradguard/step"]: r["grad_norm/pre_clip"] for r in rows if "grad_norm/pre_clip" in r}
    assert got.keys() == expected_pre_clip(guard).keys()  # the skipped step 4 has no norm
    np.testing.assert_allclose(list(got.values()), list(expected_pre_clip(guard).values()), rtol=1e-6)
    assert [r["steps/skipped"] for r in rows] == [0, 0, 0, 1, 1, 1]
    h = guard.history
    for r in rows:
        modules = {k for k in r if k.startswith("grad_norm/") and k[10:] in guard.module_names}
        row = h.module_norms[list(h.step).index(r["gradguard/step"])]
        kept = {n: v for n, v in zip(guard.module_names, row) if n in ("0", "2") and math.isfinite(v)}
        assert modules == {f"grad_norm/{max(kept, key=kept.get)}"}  # the filter, then the top 1 of the finite ones
    (table,) = run_dir.glob("files/media/table/gradguard/findings_*.table.json")
    assert [row[1] for row in json.loads(table.read_text())["data"]] == [f.code for f in findings]
    errors = [f for f in findings if f.severity == "error"]
    assert errors and [title for title, _, _ in rec["alert"]] == [f"gradguard: {f.code}" for f in errors]


def test_wandb_logger_without_a_run_says_what_to_do(monkeypatch):
    wandb = pytest.importorskip("wandb")
    from gradguard.integrations.wandb import WandbLogger

    monkeypatch.setattr(wandb, "run", None)
    with pytest.raises(ValueError, match=r"wandb.init"):
        WandbLogger()
    with pytest.raises(ValueError, match="alert_level"):
        WandbLogger(run=object(), alert_level="fatal")


# ---------------------------------------------------------------------------- MLflow, file store
@pytest.fixture
def mlflow_client(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store for opt-in use
    uri = (tmp_path / "mlruns").as_uri()
    mlflow.set_tracking_uri(uri)
    yield mlflow, mlflow.MlflowClient(uri)
    if mlflow.active_run():
        mlflow.end_run()


@pytest.mark.slow
def test_mlflow_logger_writes_metrics_tags_and_artifacts(mlflow_client, tmp_path):
    mlflow, client = mlflow_client
    from gradguard.integrations.mlflow import MlflowLogger

    with mlflow.start_run() as run:
        ml = MlflowLogger(module_filter=re.compile(r"^[24]$"))
        guard = guarded_run([ml])
        findings = guard.findings()
        ml.log_findings(findings)
    run_id = run.info.run_id
    history = client.get_metric_history(run_id, "grad_norm/pre_clip")
    got = {m.step: m.value for m in history}
    assert got.keys() == expected_pre_clip(guard).keys()
    np.testing.assert_allclose([got[s] for s in sorted(got)], [expected_pre_clip(guard)[s] for s in sorted(got)], rtol=1e-6)
    assert [m.value for m in sorted(client.get_metric_history(run_id, "steps/skipped"), key=lambda m: m.step)] == [0, 0, 0, 1, 1, 1]
    keys = set(client.get_run(run_id).data.metrics)
    assert {k for k in keys if k.startswith("grad_norm/")} == {"grad_norm/pre_clip", "grad_norm/post_clip", "grad_norm/2", "grad_norm/4"}
    assert "clip/threshold" in keys and "clip/coef" in keys
    tags = client.get_run(run_id).data.tags
    assert tags["gradguard.finding_codes"] == ",".join(f.code for f in findings)
    assert tags["gradguard.first_finding"].startswith(f"{findings[0].severity.upper()} {findings[0].code}")
    client.download_artifacts(run_id, "gradguard", str(tmp_path / "artifacts"))
    stored = json.loads((tmp_path / "artifacts" / "gradguard" / "findings.json").read_text())
    assert [f["code"] for f in stored] == [f.code for f in findings]
    assert "NONFINITE" in (tmp_path / "artifacts" / "gradguard" / "findings.md").read_text()


def test_mlflow_metric_names_are_made_valid():
    pytest.importorskip("mlflow")
    from gradguard.integrations.mlflow import metric_key

    assert metric_key("grad_norm/(root)") == "grad_norm/_root_"
    assert metric_key("grad_norm/encoder.layers.0:attn") == "grad_norm/encoder.layers.0:attn"


@pytest.mark.slow
def test_mlflow_logger_splits_large_chunks_into_batches(mlflow_client):
    mlflow, _ = mlflow_client
    from gradguard.integrations.mlflow import MlflowLogger

    calls = []

    class Counting:
        def log_batch(self, run_id, metrics):
            calls.append(len(metrics))

    with mlflow.start_run():
        ml = MlflowLogger(client=Counting())
        n = 300  # 300 steps x (7 metrics + 4 modules) > 1000
        ml(make_chunk([0.5] * n, [False] * n, [[1, 2, 3, 4]] * n))
    total = sum(len(values) for _, values in ChunkMetrics()(make_chunk([0.5] * n, [False] * n, [[1, 2, 3, 4]] * n)))
    assert total > 1000 and sum(calls) == total and len(calls) == math.ceil(total / 1000) and max(calls) <= 1000


# ---------------------------------------------------------------------------- TensorBoard findings
@pytest.mark.slow
def test_tensorboard_logger_writes_the_findings_as_text(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gradguard.integrations.tensorboard import TensorBoardLogger

    tb = TensorBoardLogger(tmp_path)
    guard = guarded_run([tb])
    findings = guard.findings()
    tb.log_findings(findings)
    tb.close()
    acc = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    acc.Reload()
    (event,) = acc.Tensors("gradguard/findings/text_summary")
    assert event.step == 6
    text = event.tensor_proto.string_val[0].decode()
    assert text == findings_markdown(findings)
    assert "NONFINITE" in text


@pytest.mark.parametrize(("module", "cls", "package"), [("wandb", "WandbLogger", "wandb"), ("mlflow", "MlflowLogger", "mlflow")])
def test_a_missing_tracking_package_names_the_install_command(module, cls, package, monkeypatch):
    import importlib

    logger = getattr(importlib.import_module(f"gradguard.integrations.{module}"), cls)
    monkeypatch.setitem(sys.modules, package, None)  # as if it were not installed
    with pytest.raises(gg.MissingDependencyError, match=re.escape("pip install 'gradguard[loggers]'")):
        logger()
