"""The benchmark scripts run end to end at tiny sizes (``--smoke``). Nothing here times anything:
speed is measured by ``make bench`` and reported in BENCHMARKS.md."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks import gpu_syncs, run
from benchmarks._config import Config
from benchmarks._timing import Task, interleave, summarize

TABLES = ("grad_pass", "train_step", "clippers")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The benchmarks run single-threaded (run.main sets it); on a busy 2-core machine a second
    thread makes these tiny models many times slower. Restored for the rest of the suite."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def smoke_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert run.main(["--smoke", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("key", TABLES)
def test_each_table_writes_markdown_and_json(smoke_out, key):
    data = json.loads((smoke_out / f"{key}.json").read_text())
    assert data["rows"], f"{key} produced no rows"
    assert set(data["rows"][0]) <= set(data["columns"])
    assert (smoke_out / f"{key}.md").read_text().startswith("### ")


def test_ratios_are_positive_and_the_baseline_is_one(smoke_out):
    for key in ("grad_pass", "train_step"):
        data = json.loads((smoke_out / f"{key}.json").read_text())["data"]
        for model, entry in data.items():
            if not isinstance(entry, dict) or "contenders" not in entry:
                continue
            ratios = [c["ratio"] for c in entry["contenders"]]
            assert ratios[0] == 1.0, (key, model)
            assert all(math.isfinite(r) and r > 0 for r in ratios), (key, model, ratios)


def test_guard_probe_variants_are_measured(smoke_out):
    """The probe configurations in train_step.VARIANTS are ones this Guard accepts."""
    data = json.loads((smoke_out / "train_step.json").read_text())
    assert data["data"]["not_measured"] == {}
    measured = {row["contender"] for row in data["rows"]}
    assert "Guard + activations, deltas every 10 steps" in measured
    assert "Guard, full: + activations, deltas every 10, timesteps every 100 steps" in measured


def test_machine_record_names_threads_and_versions(smoke_out):
    info = json.loads((smoke_out / "machine.json").read_text())
    assert info["torch_threads"] == 1
    assert info["torch"] == torch.__version__
    assert info["mode"] == "smoke"
    assert "### Machine" in (smoke_out / "all.md").read_text()


def test_gpu_sync_table_code_paths_run_on_the_cpu():
    """With host reads counted in place of CUDA syncs, every case runs and the counts make sense."""
    (table,) = gpu_syncs.run(Config(torch.device("cpu"), smoke=True), counter=gpu_syncs.HostReads())
    counts = {row["case"]: row["synchronizations"] for row in table.rows}
    n_tensors = len(list(gpu_syncs.model_for(Config(torch.device("cpu"), smoke=True)).parameters()))
    assert counts["plain: clip_grad_norm_ + AdamW(fused=True)"] == 0
    assert counts["Guard, nonfinite='ignore', fused AdamW, step that logs nothing"] == 0
    assert counts["per-tensor .item() norms + clip_grad_norm_ (Lightning grad_norm)"] >= n_tensors
    assert counts["64-bin histograms + clip_grad_norm_ (W&B watch)"] >= 4 * n_tensors


def test_cuda_run_without_cuda_skips_cleanly(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert run.main(["--device", "cuda", "--out", str(tmp_path / "gpu")]) == 0
    assert "no CUDA device" in capsys.readouterr().out
    assert not (tmp_path / "gpu").exists()


def test_summary_ratios_use_medians_and_pair_rounds():
    samples = {"base": [1.0, 2.0, 3.0, 4.0, 100.0], "x": [2.0, 4.0, 6.0, 8.0, 200.0]}
    base, x = summarize(samples, "base")
    assert base.ratio == 1.0 and base.median == 3.0
    assert x.median == 6.0 and x.ratio == 2.0
    assert x.ratio_q1 == x.ratio_q3 == 2.0  # every round is exactly twice the baseline


def test_interleave_runs_setup_before_every_block_and_rotates_order():
    log = []
    tasks = {name: Task(lambda n=name: log.append(n), setup=lambda n=name: log.append(f"setup {n}")) for name in "abc"}
    samples = interleave(tasks, rounds=3, warmup=0)
    assert {k: len(v) for k, v in samples.items()} == {"a": 3, "b": 3, "c": 3}
    timed = log[6:]  # the first three blocks (with their setups) measure the warm-up
    order = [entry for entry in timed if not entry.startswith("setup")]
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(timed[i] == f"setup {timed[i + 1]}" for i in range(0, len(timed), 2))
