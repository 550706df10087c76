"""Every example in examples/ runs at tiny size and finds the gradient problem it was written for.

Each script runs in its own process, in a temporary directory, with this checkout's sources first
on the path; GRADGUARD_EXAMPLE_STEPS makes it short and GRADGUARD_EXAMPLE_OUT keeps its files in
the temporary directory. The notebook runs with nbclient on a kernel that uses this interpreter.
(The torchrun examples, ddp_train.py and fsdp2_train.py, are run by test_distributed.py.)
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

pytestmark = pytest.mark.slow


def needs(*modules: str):
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)}")


def example_env(tmp_path: Path, steps: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GRADGUARD_EXAMPLE_STEPS=str(steps),
        GRADGUARD_EXAMPLE_OUT=str(tmp_path / "out"),
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        OMP_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",  # tiny runs: the CPU path, the same everywhere
        HF_HUB_OFFLINE="1",
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        MPLBACKEND="Agg",
    )
    return env


def run_example(script: str, tmp_path: Path, steps: int) -> list[str]:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script)], check=False, cwd=tmp_path, env=example_env(tmp_path, steps),
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout.splitlines()


def runs(lines: list[str]) -> list[list[str]]:
    """The output split at each run's summary line ("gradguard: ..."), that line first."""
    out: list[list[str]] = []
    for line in lines:
        if line.startswith("gradguard:"):
            out.append([line])
        elif out:
            out[-1].append(line)
    return out


def codes(block: list[str]) -> set[str]:
    """Finding codes printed in a run's block ("  SEVERITY CODE ...")."""
    found = set()
    for line in block[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("INFO", "WARNING", "ERROR"):
            found.add(parts[1].rstrip(":"))
    return found


def test_plain_loop_finds_the_exploding_layer_and_the_fix_removes_it(tmp_path):
    broken, fixed = runs(run_example("plain_loop.py", tmp_path, steps=10))
    assert "run=broken steps=10" in broken[0] and "run=fixed steps=10" in fixed[0]
    assert "EXPLODING_GRADIENT" in codes(broken)
    # the first layer, explained by the init (the root cause comes first and the symptom names it)
    exploding = next(line for line in broken if "EXPLODING_GRADIENT" in line)
    assert exploding.split()[2] == "[0]" and "(caused by INIT_SCALE)" in exploding
    assert "INIT_SCALE" in codes(broken)
    assert "EXPLODING_GRADIENT" not in codes(fixed)
    assert (tmp_path / "out" / "broken.html").stat().st_size > 0 and (tmp_path / "out" / "broken.sqlite").is_file()


def test_amp_example_unscales_and_reports_the_vanishing_gradient(tmp_path):
    (run,) = runs(run_example("amp_gradscaler.py", tmp_path, steps=10))
    assert "device=cpu steps=10 skipped=0" in run[0]
    assert "VANISHING_GRADIENT" in codes(run)


@needs("lightning")
def test_lightning_example_skips_nan_steps_and_names_the_parameter(tmp_path):
    (run,) = runs(run_example("lightning_train.py", tmp_path, steps=10))
    assert "steps=10" in run[0] and "skipped=0" not in run[0]
    line = next(line for line in run if "NONFINITE" in line)
    assert "features.scale" in line


@needs("transformers", "accelerate")
def test_hf_trainer_example_finds_the_clip_that_always_acts(tmp_path):
    (run,) = runs(run_example("hf_trainer.py", tmp_path, steps=60))  # the rule needs 50 steps
    assert "steps=60" in run[0] and "clipped=100%" in run[0]
    assert {"CLIPPING_ALWAYS", "CLIP_THRESHOLD"} <= codes(run)
    assert any("grad_norm/pre_clip" in line for line in run)  # the callback's metrics reached the Trainer's logs


@needs("tensorboard")
def test_tensorboard_example_writes_scalars_and_the_findings_text(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run,) = runs(run_example("tensorboard_logging.py", tmp_path, steps=10))
    assert "SATURATION" in codes(run)
    acc = EventAccumulator(str(tmp_path / "out"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    assert {"grad_norm/pre_clip", "clip/active_frac", "loss", "grad_norm/0"} <= set(acc.Tags()["scalars"])
    assert len(acc.Scalars("grad_norm/pre_clip")) == 10
    text = acc.Tensors("gradguard/findings/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "SATURATION" in text


@needs("wandb")
def test_wandb_offline_example_finds_dead_units_and_writes_the_run(tmp_path):
    (run,) = runs(run_example("wandb_offline.py", tmp_path, steps=20))
    assert "DEAD_UNITS" in codes(run)
    (offline,) = (tmp_path / "out" / "wandb").glob("offline-run-*")
    deadline = time.monotonic() + 60  # W&B's service process may still be writing the run's files
    while not list(offline.glob("files/media/table/gradguard/findings_*.table.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    (table,) = offline.glob("files/media/table/gradguard/findings_*.table.json")
    rows = json.loads(table.read_text())["data"]
    assert "DEAD_UNITS" in [row[1] for row in rows]


@needs("nbclient", "nbformat", "ipykernel")
def test_the_notebook_diagnoses_the_broken_run(tmp_path, monkeypatch):
    import nbclient
    import nbformat

    # A kernel spec that starts this interpreter (not whichever "python3" Jupyter would find).
    spec = tmp_path / "jupyter" / "kernels" / "gradguard-test"
    spec.mkdir(parents=True)
    env = example_env(tmp_path, steps=10)
    kernel = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"], "display_name": "gradguard test",
              "language": "python", "env": {k: env[k] for k in ("GRADGUARD_EXAMPLE_STEPS", "GRADGUARD_EXAMPLE_OUT", "PYTHONPATH", "OMP_NUM_THREADS", "MPLBACKEND")}}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))

    nb = nbformat.read(EXAMPLES / "diagnose_a_broken_run.ipynb", as_version=4)
    nbclient.NotebookClient(nb, kernel_name="gradguard-test", timeout=240, resources={"metadata": {"path": str(tmp_path)}}).execute()
    out = {i: "".join(o.get("text", "") for o in cell.get("outputs", [])) for i, cell in enumerate(nb.cells) if cell.cell_type == "code"}
    text = "\n".join(out.values())
    assert "steps: 10, skipped: 10" in text
    assert "ERROR NONFINITE" in text and "SharpLogSoftmax" in text
    assert "skipped: 0 of 10" in text and "'NONFINITE'" not in text.split("skipped: 0 of 10")[1]
    assert (tmp_path / "out" / "broken.html").is_file()


def test_the_readme_opening_example_runs_and_finds_what_it_shows(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Debug your own run", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    shown = section.split("```text\n", 1)[1].split("\n", 1)[0]  # the first output line the README shows
    script = tmp_path / "readme_example.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], check=False, cwd=tmp_path, env=example_env(tmp_path, 0), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The same finding on the same layers (the ratios' digits may differ with the CPU's kernels).
    assert proc.stdout.splitlines()[0].split(" grow ")[0] == shown.split(" grow ")[0]
    assert (tmp_path / "run.html").is_file()
