"""TensorBoardLogger: scalars written under stable tags, read back with TensorBoard's own reader."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import gradguard as gg
from gradguard._history import Chunk
from tests.conftest import mlp

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from gradguard.integrations.tensorboard import TensorBoardLogger  # noqa: E402


def read(log_dir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def chunk(steps, before, threshold, skipped=None, loss=None, modules=("a.0", "a.1", "b")):
    n = len(steps)
    before = np.asarray(before, dtype=float)
    skipped = np.zeros(n) if skipped is None else np.asarray(skipped, dtype=float)
    after = np.minimum(before, threshold)
    clipped = (before > threshold) & (skipped == 0)
    loss = np.full(n, np.nan) if loss is None else np.asarray(loss, dtype=float)
    scalars = {"norm_before": before, "norm_after": after, "threshold": np.full(n, threshold), "clipped": clipped, "skipped": skipped, "loss": loss}
    mods = np.outer(before, np.arange(1, len(modules) + 1) / 10.0)
    return Chunk(np.asarray(steps, dtype=np.int64), scalars, list(modules), mods)


@pytest.mark.slow  # a training run of seconds: make test, not make test-fast
def test_guard_logger_writes_every_tag_with_the_right_values(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    tb = TensorBoardLogger(tmp_path)
    guard = gg.Guard(model, clip=0.05, loggers=[tb], log_every=3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(7):
        model(torch.randn(16, 8, generator=gen)).pow(2).mean().backward()
        guard.step(opt, loss=torch.tensor(0.5))
        opt.zero_grad()
    guard.close()
    tb.close()
    got = read(tmp_path)
    h = guard.history
    assert {"grad_norm/pre_clip", "grad_norm/post_clip", "clip/coef", "clip/active_frac", "steps/skipped", "loss"} <= set(got)
    assert [s for s, _ in got["grad_norm/pre_clip"]] == list(range(1, 8))
    np.testing.assert_allclose([v for _, v in got["grad_norm/pre_clip"]], h.norm_before, rtol=1e-6)
    np.testing.assert_allclose([v for _, v in got["grad_norm/post_clip"]], h.norm_after, rtol=1e-6)
    np.testing.assert_allclose([v for _, v in got["clip/coef"]], h.norm_after / h.norm_before, rtol=1e-5)
    np.testing.assert_allclose([v for _, v in got["clip/active_frac"]], np.cumsum(h.clipped) / np.arange(1, 8), rtol=1e-6)
    for j, name in enumerate(guard.module_names):
        np.testing.assert_allclose([v for _, v in got[f"grad_norm/{name}"]], h.module_norms[:, j], rtol=1e-6)


def test_skipped_steps_count_up_and_write_no_norms(tmp_path):
    tb = TensorBoardLogger(tmp_path)
    tb(chunk([1, 2, 3, 4], [0.5, math.nan, 2.0, math.inf], threshold=1.0, skipped=[0, 1, 0, 1]))
    tb.close()
    got = read(tmp_path)
    assert got["steps/skipped"] == [(1, 0.0), (2, 1.0), (3, 1.0), (4, 2.0)]
    assert [s for s, _ in got["grad_norm/pre_clip"]] == [1, 3]
    assert got["clip/coef"] == [(1, 1.0), (3, 0.5)]
    # clipped at step 3 only, over the running window of all four steps
    assert [v for _, v in got["clip/active_frac"]] == [0.0, 0.0, pytest.approx(1 / 3), 0.25]
    assert "loss" not in got  # NaN loss: Guard got none


def test_active_frac_is_a_running_window_and_every_thins_the_writes(tmp_path):
    tb = TensorBoardLogger(tmp_path, every=2, window=2)
    tb(chunk([1, 2, 3, 4, 5, 6], [2, 2, 0.5, 0.5, 2, 0.5], threshold=1.0))
    tb.close()
    got = read(tmp_path)
    assert [s for s, _ in got["grad_norm/pre_clip"]] == [2, 4, 6]
    assert got["clip/active_frac"] == [(2, 1.0), (4, 0.0), (6, 0.5)]


@pytest.mark.parametrize(
    "spec, expected",
    [
        (None, {"a.0", "a.1", "b"}),
        ("a.*", {"a.0", "a.1"}),
        (["b", "a.1"], {"a.1", "b"}),
        (re.compile(r"\.1$"), {"a.1"}),
        (lambda name: name == "b", {"b"}),
    ],
)
def test_module_filter_globs_regexes_and_functions(tmp_path, spec, expected):
    tb = TensorBoardLogger(tmp_path, module_filter=spec)
    tb(chunk([1], [1.0], threshold=10.0))
    tb.close()
    got = read(tmp_path)
    modules = {t.split("/", 1)[1] for t in got if t.startswith("grad_norm/")} - {"pre_clip", "post_clip"}
    assert modules == expected


def test_plain_loop_with_clip_grad_norm(tmp_path):
    model = mlp()
    with TensorBoardLogger(tmp_path) as tb:
        norms = []
        for step in range(1, 4):
            model(torch.randn(16, 8)).pow(2).mean().mul(100).backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            norms.append(float(norm))
            tb.log(step, norm_before=norm, threshold=0.1, loss=torch.tensor(1.5), module_norms={"0": 0.3})
            model.zero_grad()
    got = read(tmp_path)
    np.testing.assert_allclose([v for _, v in got["grad_norm/pre_clip"]], norms, rtol=1e-6)
    assert [v for _, v in got["grad_norm/post_clip"]] == pytest.approx([0.1] * 3)
    assert [v for _, v in got["clip/active_frac"]] == [1.0, 1.0, 1.0]
    assert [v for _, v in got["loss"]] == [1.5] * 3 and [v for _, v in got["grad_norm/0"]] == pytest.approx([0.3] * 3)


def test_an_existing_writer_is_used_and_left_open():
    calls = []

    class Writer:
        def add_scalar(self, tag, value, step):
            calls.append((tag, value, step))

        def flush(self):
            calls.append("flush")

        def close(self):
            raise AssertionError("the caller owns this writer")

    tb = TensorBoardLogger(Writer())
    tb.log(5, norm_before=2.0, norm_after=1.0)
    tb.close()
    assert ("clip/coef", 0.5, 5) in calls and calls[-1] == "flush"


def test_bad_arguments_say_what_was_expected(tmp_path):
    with pytest.raises(TypeError, match="log directory or a SummaryWriter"):
        TensorBoardLogger(42)
    with pytest.raises(TypeError, match="module_filter"):
        TensorBoardLogger(tmp_path, module_filter=3)
    with pytest.raises(ValueError, match="every"):
        TensorBoardLogger(tmp_path, every=0)


def test_missing_tensorboard_names_the_install_command(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    with pytest.raises(gg.MissingDependencyError, match=r"pip install 'gradguard\[integrations\]'"):
        TensorBoardLogger(tmp_path)
