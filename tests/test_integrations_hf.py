"""GradGuardCallback for the Hugging Face Trainer, on a tiny randomly initialised GPT-2 (no download):
pre/post clip norms, clip coefficient and clipped share in the Trainer's logs, and a NaN step
skipped with parameters, Adam state and the learning-rate schedule left where they were."""

from __future__ import annotations

import copy
import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import gradguard as gg
from gradguard import MissingDependencyError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from gradguard.integrations.huggingface import GradGuardCallback  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAULT_STEP = 2  # state.global_step whose gradients get a NaN (the Trainer logs it as step 3)
CLIP = 0.5


class Tokens(torch.utils.data.Dataset):
    """Random token sequences; the model learns to predict them (labels = inputs)."""

    def __init__(self, n: int = 64, length: int = 12, vocab: int = 50):
        self.ids = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class Fault(TrainerCallback):
    """Passed before GradGuardCallback: measures the raw gradients, puts a NaN into one at
    FAULT_STEP, and records what each optimizer step changed."""

    def __init__(self):
        self.raw_norms, self.params_moved, self.state_moved, self.lr_steps = [], [], [], []

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        self.raw_norms.append(torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None]).item())
        if state.global_step == FAULT_STEP:
            model.transformer.h[0].mlp.c_fc.weight.grad[0, 0] = math.nan
        self._params = [p.detach().clone() for p in model.parameters()]
        self._state = copy.deepcopy(optimizer.state_dict()["state"])
        self._schedule = lr_scheduler.last_epoch

    def on_step_end(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        self.params_moved.append(any(not torch.equal(p, q) for p, q in zip(model.parameters(), self._params)))
        now = optimizer.state_dict()["state"]
        same = now.keys() == self._state.keys() and all(torch.equal(now[k][f], v) for k, s in self._state.items() for f, v in s.items())
        self.state_moved.append(not same)
        self.lr_steps.append(lr_scheduler.last_epoch - self._schedule)


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2))


def arguments(tmp_path, **overrides) -> TrainingArguments:
    kwargs = dict(
        output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=8, logging_steps=1, max_grad_norm=0.0,
        learning_rate=1e-3, lr_scheduler_type="linear", report_to=[], save_strategy="no", use_cpu=True,
        disable_tqdm=True, seed=0,
    )  # fmt: skip
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


@pytest.fixture(scope="module")
def guarded_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("hf")
    fault, callback = Fault(), GradGuardCallback(clip=CLIP, module_filter="*.mlp.*")
    trainer = Trainer(model=tiny_gpt2(), args=arguments(tmp_path), train_dataset=Tokens(), callbacks=[fault, callback])
    trainer.train()
    train_logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    return fault, callback, train_logs


def test_nan_step_is_skipped_without_touching_parameters_adam_state_or_schedule(guarded_run):
    fault, callback, _ = guarded_run
    skipped = [False, False, True, False, False, False]
    assert callback.guard.history.skipped.tolist() == skipped
    assert fault.params_moved == [not s for s in skipped]
    assert fault.state_moved == [not s for s in skipped]
    assert fault.lr_steps == [0 if s else 1 for s in skipped]


def test_logs_norm_before_and_after_clipping_coefficient_and_clipped_share(guarded_run):
    fault, callback, logs = guarded_run
    assert [entry["step"] for entry in logs] == [1, 2, 3, 4, 5, 6]
    clipped_so_far = []
    for entry, raw in zip(logs, fault.raw_norms):
        skipped = entry["step"] == FAULT_STEP + 1
        assert entry["steps/skipped"] == (1 if entry["step"] > FAULT_STEP else 0)
        if skipped:
            assert "grad_norm/pre_clip" not in entry  # a NaN norm is left out, not logged
            clipped_so_far.append(False)
            continue
        clipped_so_far.append(raw > CLIP)
        assert entry["grad_norm/pre_clip"] == pytest.approx(raw, rel=1e-6)
        assert entry["grad_norm"] == pytest.approx(entry["grad_norm/pre_clip"], rel=1e-6)  # the Trainer's own reading
        assert entry["grad_norm/post_clip"] == pytest.approx(min(raw, CLIP), rel=1e-5)
        assert entry["clip/coef"] == pytest.approx(entry["grad_norm/post_clip"] / raw, rel=1e-5)
        assert entry["clip/threshold"] == CLIP
        assert entry["clip/active_frac"] == pytest.approx(sum(clipped_so_far) / len(clipped_so_far))
        modules = {k for k in entry if k.startswith("grad_norm/transformer")}
        assert modules == {f"grad_norm/transformer.h.{i}.mlp.{m}" for i in (0, 1) for m in ("c_fc", "c_proj")}
    assert any(clipped_so_far) and not all(clipped_so_far)  # the bound acted on some steps only


def test_the_trainer_clipping_is_refused_when_the_trainer_is_built(tmp_path):
    with pytest.raises(ValueError, match=r"max_grad_norm=0\) and GradGuardCallback\(clip=1.0\)"):
        Trainer(model=tiny_gpt2(), args=arguments(tmp_path, max_grad_norm=1.0), train_dataset=Tokens(), callbacks=[GradGuardCallback()])


def test_attach_puts_the_callback_ahead_of_reporting_callbacks(tmp_path):
    trainer = Trainer(model=tiny_gpt2(), args=arguments(tmp_path), train_dataset=Tokens())
    callback = GradGuardCallback(clip=1.0).attach(trainer)
    assert trainer.callback_handler.callbacks[0] is callback


def test_max_consecutive_skips_stops_training_with_a_clear_error(tmp_path):
    class AlwaysNaN(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            model.lm_head.weight.grad.view(-1)[0] = math.inf

    callbacks = [AlwaysNaN(), GradGuardCallback(max_consecutive_skips=2)]
    trainer = Trainer(model=tiny_gpt2(), args=arguments(tmp_path, max_steps=4), train_dataset=Tokens(), callbacks=callbacks)
    with pytest.raises(gg.NonFiniteGradientError, match="3 optimizer steps in a row"):
        trainer.train()


# ---------------------------------------------------------------------------- bf16 autocast
def test_bf16_autocast_on_cpu_guard_sees_float32_gradients_and_skips_a_nan_step(tmp_path):
    """bf16=True on CPU: the forward runs under bf16 autocast, the parameters and so the gradients
    stay float32; Guard measures those, and a NaN step is still skipped with the schedule held."""

    class Recorder(TrainerCallback):
        def __init__(self):
            self.grad_dtypes, self.raw_norms, self.lr_steps = [], [], []

        def on_pre_optimizer_step(self, args, state, control, model=None, lr_scheduler=None, **kwargs):
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            self.grad_dtypes.append({g.dtype for g in grads})
            self.raw_norms.append(torch.nn.utils.get_total_norm(grads).item())
            if state.global_step == 1:
                model.lm_head.weight.grad.view(-1)[0] = math.nan
            self._schedule = lr_scheduler.last_epoch

        def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
            self.lr_steps.append(lr_scheduler.last_epoch - self._schedule)

    model = tiny_gpt2()
    activations = []
    model.transformer.h[0].mlp.c_fc.register_forward_hook(lambda mod, inputs, out: activations.append(out.dtype))
    recorder, callback = Recorder(), GradGuardCallback(clip=CLIP)
    trainer = Trainer(model=model, args=arguments(tmp_path, max_steps=4, bf16=True), train_dataset=Tokens(), callbacks=[recorder, callback])
    assert trainer.accelerator.mixed_precision == "bf16"
    trainer.train()
    assert activations and set(activations) == {torch.bfloat16}  # the forward did run in bf16
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert recorder.grad_dtypes == [{torch.float32}] * 4
    h = callback.guard.history
    assert h.skipped.tolist() == [False, True, False, False]
    assert recorder.lr_steps == [1, 0, 1, 1]
    kept = ~h.skipped
    assert np.isfinite(h.norm_before[kept]).all() and np.isfinite(h.norm_after[kept]).all()
    assert np.isfinite(h.module_norms[kept]).all()
    raw = np.array(recorder.raw_norms)[kept]
    np.testing.assert_allclose(h.norm_before[kept], raw, rtol=1e-6)  # the float32 gradients' norm
    np.testing.assert_allclose(h.norm_after[kept], np.minimum(raw, CLIP), rtol=1e-5)


# ---------------------------------------------------------------------------- DDP
needs_gloo = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()), reason="needs torch.distributed with gloo"
)


def run_ddp_job(tmp_path, accumulation: int = 1) -> list[dict]:
    """tests/_hf_ddp_job.py on two CPU ranks under torchrun; what each rank wrote."""
    # CPU ranks even on a GPU machine: two ranks cannot share one GPU under nccl.
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1")
    job = str(ROOT / "tests" / "_hf_ddp_job.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", job, str(tmp_path), str(accumulation)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.distributed
@pytest.mark.slow
@needs_gloo
def test_ddp_two_cpu_ranks_skip_a_nan_that_one_rank_saw_and_hold_the_schedule(tmp_path):
    ranks = run_ddp_job(tmp_path)
    skipped = [False, False, True, False, False]  # rank 1 alone saw the NaN, at the third step
    for r, rank in enumerate(ranks):
        assert (rank["rank"], rank["world_size"], rank["backend"], rank["ddp"]) == (r, 2, "gloo", "DistributedDataParallel")
        assert rank["global_step"] == len(skipped)
        assert rank["skipped"] == skipped
        assert rank["skipped_steps"] == 1
        assert rank["moved"] == [not s for s in skipped]
        assert rank["schedule_steps"] == [0 if s else 1 for s in skipped]
        assert rank["scheduler_last_epoch"] == len(skipped) - 1
        assert rank["lr"][2] == rank["lr"][1]  # the linear decay held still on the skipped step
        assert rank["logged_skipped"] == [0, 0, 1, 1, 1]
        norms = rank["norm_before"]
        assert [v is None for v in norms] == skipped  # NaN on rank 0 too: Guard agreed across ranks
    assert ranks[0]["params"] == ranks[1]["params"]  # still in lockstep
    assert ranks[0]["norm_before"] == ranks[1]["norm_before"]
    assert ranks[0]["lr"] == ranks[1]["lr"]


@pytest.mark.distributed
@pytest.mark.slow
@needs_gloo
def test_ddp_gradient_accumulation_guards_each_optimizer_step_on_the_accumulated_gradient(tmp_path):
    """gradient_accumulation_steps=2: one check per optimizer step, on the gradient of all four
    micro-batches (two per rank), and a NaN one rank saw after DDP's sync skips the step on both."""
    from tests._hf_ddp_job import Regression

    accumulation = 2
    ranks = run_ddp_job(tmp_path, accumulation)
    skipped = [False, False, True, False, False]
    for r, rank in enumerate(ranks):
        assert (rank["rank"], rank["world_size"], rank["ddp"]) == (r, 2, "DistributedDataParallel")
        assert rank["global_step"] == len(skipped)
        assert rank["guard_steps"] == len(skipped)  # once per optimizer step, not per micro-batch
        assert [len(step["micro_batches"]) for step in rank["steps"]] == [accumulation] * len(skipped)
        assert rank["skipped"] == skipped
        assert rank["skipped_steps"] == 1
        assert rank["moved"] == [not s for s in skipped]
        assert rank["schedule_steps"] == [0 if s else 1 for s in skipped]
        assert rank["logged_skipped"] == [0, 0, 1, 1, 1]
        assert [v is None for v in rank["norm_before"]] == skipped
    for key in ("skipped", "norm_before", "norm_after", "params", "lr"):
        assert ranks[0][key] == ranks[1][key], key
    # The gradients were synchronised when rank 1 got its NaN: before it, both ranks held the same.
    assert [s["grad_norm"] for s in ranks[0]["steps"]] == [s["grad_norm"] for s in ranks[1]["steps"]]

    # One process recomputes each step's gradient from the parameters before it, on the 32 samples
    # the two ranks' four micro-batches held: Guard's norm is that accumulated gradient's norm.
    model = Regression()
    for step, skip in enumerate(skipped):
        params = ranks[0]["steps"][step]["params"]
        assert params == ranks[1]["steps"][step]["params"]
        batches = [mb for rank in ranks for mb in rank["steps"][step]["micro_batches"]]
        x = torch.tensor([row for xs, _ in batches for row in xs])
        y = torch.tensor([row for _, ys in batches for row in ys])
        assert len(x) == 32 and len(torch.unique(x, dim=0)) == 32  # every micro-batch a different slice
        with torch.no_grad():
            for p, values in zip(model.parameters(), params):
                p.copy_(torch.tensor(values).view_as(p))
        model.zero_grad()
        torch.nn.functional.mse_loss(model.net(x), y).backward()
        want = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
        assert ranks[0]["steps"][step]["grad_norm"] == pytest.approx(want, rel=1e-5)
        if skip:
            assert ranks[0]["steps"][step + 1]["params"] == params  # the skipped step moved nothing
            continue
        assert ranks[0]["norm_before"][step] == pytest.approx(want, rel=1e-5)
        assert ranks[0]["norm_after"][step] == pytest.approx(min(want, 1.0), rel=1e-5)
        assert ranks[0]["logged_grad_norm"][step] == pytest.approx(want, rel=1e-5)  # the Trainer's own


def test_import_without_transformers_raises_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.delitem(sys.modules, "gradguard.integrations.huggingface")
    with pytest.raises(MissingDependencyError, match=r"python -m pip install 'gradguard\[integrations\]'"):
        importlib.import_module("gradguard.integrations.huggingface")
