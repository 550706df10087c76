"""GradGuardCallback for Lightning: it reads the gradients the optimizer will use, logs through the
trainer's logger, clips, and skips a NaN step without touching parameters or optimizer state."""

from __future__ import annotations

import copy
import csv
import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import gradguard as gg
from gradguard import MissingDependencyError

L = pytest.importorskip("lightning")
from lightning.pytorch.loggers import CSVLogger  # noqa: E402
from lightning.pytorch.plugins.precision import MixedPrecision  # noqa: E402

from gradguard.integrations.lightning import GradGuardCallback  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAULT_STEP = 2  # trainer.global_step whose gradient gets a NaN


class Regression(L.LightningModule):
    """Two linear layers; its own hook sees the gradients after every callback (and after clipping)."""

    def __init__(self, fused: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.fused = fused
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
        self.head = nn.Linear(8, 1)
        self.norms_seen_by_optimizer: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.head(self.encoder(x)).float(), y)

    def on_before_optimizer_step(self, optimizer):
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        self.norms_seen_by_optimizer.append(torch.nn.utils.get_total_norm(grads).item() if grads else math.nan)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2, fused=self.fused)


class Fault(L.Callback):
    """Listed before GradGuardCallback: measures the raw gradients, injects a NaN at FAULT_STEP, and
    records whether parameters and Adam state changed over each optimizer step."""

    def __init__(self, fault_step: int | None = FAULT_STEP):
        self.fault_step = fault_step
        self.raw_norms: list[float] = []
        self.params_moved: list[bool] = []
        self.state_moved: list[bool] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.raw_norms.append(torch.nn.utils.get_total_norm([p.grad for p in pl_module.parameters()]).item())
        if trainer.global_step == self.fault_step:
            pl_module.encoder[0].weight.grad[0, 0] = math.nan
        self._params = [p.detach().clone() for p in pl_module.parameters()]
        self._state = copy.deepcopy(optimizer.state_dict()["state"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.params_moved.append(any(not torch.equal(p, q) for p, q in zip(pl_module.parameters(), self._params)))
        state = trainer.optimizers[0].state_dict()["state"]
        same = state.keys() == self._state.keys() and all(
            torch.equal(torch.as_tensor(state[k][f]), torch.as_tensor(v)) for k, s in self._state.items() for f, v in s.items()
        )
        self.state_moved.append(not same)


def loader(n: int = 64) -> torch.utils.data.DataLoader:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=gen)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, 3 * x.sum(1, keepdim=True)), batch_size=8)


def trainer(callbacks, tmp_path=None, max_steps=5, **kwargs) -> L.Trainer:
    logger = CSVLogger(str(tmp_path), name="run") if tmp_path is not None else False
    return L.Trainer(
        accelerator="cpu", max_steps=max_steps, logger=logger, log_every_n_steps=1, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks, **kwargs,
    )  # fmt: skip


def read_csv(tmp_path) -> list[dict[str, float]]:
    (path,) = Path(tmp_path).glob("run/*/metrics.csv")
    with open(path) as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


# ---------------------------------------------------------------------------- the main run
@pytest.fixture(scope="module")
def guarded_run(tmp_path_factory):
    """Five steps with clip=0.5 (every finite step clips), a NaN at step 2, a CSV logger."""
    tmp_path = tmp_path_factory.mktemp("lightning")
    fault, callback, model = Fault(), GradGuardCallback(clip=0.5, module_filter="encoder*", log_every=2), Regression()
    trainer([fault, callback], tmp_path).fit(model, loader())
    return fault, callback, model, read_csv(tmp_path)


def test_nan_step_is_skipped_without_touching_parameters_or_adam_state(guarded_run):
    fault, callback, _, _ = guarded_run
    assert callback.guard.history.skipped.tolist() == [False, False, True, False, False]
    assert callback.guard.skipped_steps == 1
    assert fault.params_moved == [True, True, False, True, True]
    assert fault.state_moved == [True, True, False, True, True]


def test_measures_the_gradients_before_clipping_and_the_optimizer_gets_the_clipped_ones(guarded_run):
    fault, callback, model, _ = guarded_run
    h = callback.guard.history
    finite = ~h.skipped
    # pre-clip = what the backward pass produced; post-clip = what the optimizer saw next
    assert h.norm_before[finite] == pytest.approx([n for n, s in zip(fault.raw_norms, h.skipped) if not s], rel=1e-6)
    assert h.norm_after[finite] == pytest.approx([n for n, s in zip(model.norms_seen_by_optimizer, h.skipped) if not s], rel=1e-5)
    assert (h.norm_after[finite] <= 0.5 + 1e-6).all() and h.clipped[finite].all()
    assert math.isnan(model.norms_seen_by_optimizer[FAULT_STEP])  # the skipped step: no gradients left at all


def test_logs_through_the_trainer_logger(guarded_run):
    _, callback, _, rows = guarded_run
    by_step = {int(r["step"]): r for r in rows if "grad_norm/pre_clip" in r}
    assert sorted(by_step) == [0, 1, 2, 3, 4]  # Lightning's step = optimizer steps done before this one
    h = callback.guard.history
    for i, (step, row) in enumerate(sorted(by_step.items())):
        assert row["steps/skipped"] == (0 if step < FAULT_STEP else 1)
        if step == FAULT_STEP:
            assert math.isnan(row["grad_norm/pre_clip"])
            continue
        assert row["grad_norm/pre_clip"] == pytest.approx(h.norm_before[i], rel=1e-6)
        assert row["grad_norm/post_clip"] == pytest.approx(h.norm_after[i], rel=1e-6)
        assert row["clip/coef"] == pytest.approx(h.norm_after[i] / h.norm_before[i], rel=1e-5)
        assert row["clip/threshold"] == 0.5
        # every finite step so far clipped; the skipped one counts as not clipped
        clipped_so_far = [s != FAULT_STEP for s in range(step + 1)]
        assert row["clip/active_frac"] == pytest.approx(sum(clipped_so_far) / len(clipped_so_far))
        assert row["grad_norm/encoder.0"] == pytest.approx(h.module_norms[i][0], rel=1e-6)
    assert not any(key == "grad_norm/head" for row in rows for key in row)  # module_filter="encoder*"


# ---------------------------------------------------------------------------- set-up checks
def test_lightning_gradient_clipping_together_with_clip_raises():
    with pytest.raises(ValueError, match="both clip.*remove gradient_clip_val"):
        trainer([GradGuardCallback(clip=1.0)], gradient_clip_val=1.0).fit(Regression(), loader())


def test_lightning_gradient_clipping_alone_warns_that_post_clip_is_measured_before_it():
    callback = GradGuardCallback()
    with pytest.warns(gg.GradGuardWarning, match="GradGuardCallback\\(clip=gg.ClipValue\\(0.5\\)\\)"):
        trainer([callback], max_steps=1, gradient_clip_val=0.5, gradient_clip_algorithm="value").fit(Regression(), loader())


def test_unsupported_strategies_are_refused_with_the_alternative():
    class FSDPStrategy:  # stands for lightning's, which needs a GPU to build
        pass

    class FakeTrainer:
        strategy = FSDPStrategy()
        gradient_clip_val = None

    with pytest.raises(NotImplementedError, match=r"ModelParallelStrategy\(data_parallel_size=.*fully_shard"):
        GradGuardCallback().setup(FakeTrainer(), None, "fit")


def test_bad_arguments_fail_when_the_callback_is_built():
    with pytest.raises(ValueError, match="nonfinite"):
        GradGuardCallback(nonfinite="skipp")
    with pytest.raises(TypeError, match="set by the callback"):
        GradGuardCallback(scaler=object())


def test_raise_policy_stops_training_with_the_parameter_names():
    with pytest.raises(gg.NonFiniteGradientError, match="encoder.0.weight"):
        trainer([Fault(), GradGuardCallback(nonfinite="raise")]).fit(Regression(), loader())


def test_state_dict_carries_the_skip_count_into_a_resumed_run():
    first = GradGuardCallback(clip=1.0)
    trainer([Fault(fault_step=0), first], max_steps=2).fit(Regression(), loader())
    resumed = GradGuardCallback(clip=1.0)
    resumed.load_state_dict(first.state_dict())
    trainer([resumed], max_steps=1).fit(Regression(), loader())
    assert resumed.guard.skipped_steps == 1 and resumed.guard.steps == 3


# ---------------------------------------------------------------------------- AMP
def test_fused_optimizer_under_fp16_amp_gets_unscaled_gradients_once():
    """Lightning leaves the gradients of optimizers that unscale in step() scaled; the callback unscales."""
    runs = {}
    for fused in (False, True):
        fault, callback, model = Fault(fault_step=None), GradGuardCallback(log_every=1), Regression(fused=fused)
        precision = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=1024.0))
        trainer([fault, callback], max_steps=3, plugins=[precision]).fit(model, loader())
        runs[fused] = (fault.raw_norms, callback.guard.history.norm_before, [p.detach() for p in model.parameters()])
    (raw, guarded, params), (raw_fused, guarded_fused, params_fused) = runs[False], runs[True]
    assert raw == pytest.approx(guarded.tolist(), rel=1e-6)  # Lightning unscaled before the callbacks
    assert [r / 1024.0 for r in raw_fused] == pytest.approx(guarded_fused.tolist(), rel=1e-6)  # still scaled
    assert guarded_fused.tolist() == pytest.approx(guarded.tolist(), rel=1e-5)
    for p, q in zip(params, params_fused):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------- missing dependency
def test_import_without_lightning_raises_with_the_install_command(monkeypatch):
    for name in ("lightning", "lightning.pytorch", "lightning.pytorch.callbacks"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import lightning...` fail
    monkeypatch.delitem(sys.modules, "gradguard.integrations.lightning")
    with pytest.raises(MissingDependencyError, match=r"python -m pip install 'gradguard\[integrations\]'"):
        importlib.import_module("gradguard.integrations.lightning")


# ---------------------------------------------------------------------------- DDP
@pytest.mark.distributed
@pytest.mark.slow
def test_ddp_two_cpu_ranks_skip_a_nan_that_one_rank_saw(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "_lightning_ddp_job.py"), str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank in ranks:
        assert rank["skipped"] == [False, True, False, False]
        assert rank["moved"] == [True, False, True, True]
        assert rank["skipped_steps"] == 1
    assert ranks[0]["params"] == ranks[1]["params"]  # still in lockstep
    assert ranks[0]["norm_before"] == ranks[1]["norm_before"]


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()), reason="needs torch.distributed with gloo"
)
def test_model_parallel_strategy_fsdp2_two_cpu_ranks_match_one_process_and_skip_together(tmp_path):
    """ModelParallelStrategy with fully_shard in configure_model: gradients are DTensor shards;
    Guard's norms are the global ones (those of one process on the whole batch), and a NaN in
    one rank's local shard makes both ranks skip that step."""
    from tests._lightning_fsdp2_job import FAULT_STEP as FSDP2_FAULT_STEP
    from tests._lightning_fsdp2_job import STEPS, run_reference

    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "_lightning_fsdp2_job.py"), str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    reference = run_reference()

    skipped = [step == FSDP2_FAULT_STEP for step in range(STEPS)]
    assert reference["skipped"] == skipped
    for r, rank in enumerate(ranks):
        assert (rank["rank"], rank["world_size"], rank["backend"]) == (r, 2, "gloo")
        assert rank["grad_types"] == ["DTensor"] * STEPS  # sharded by FSDP2
        assert rank["skipped"] == skipped  # rank 0 never saw the NaN: Guard agreed across ranks
        assert rank["skipped_steps"] == 1
        assert rank["moved"] == [not s for s in skipped]  # no shard moved on the skipped step
        assert rank["modules"] == reference["modules"]
        for key in ("norm_before", "norm_after"):
            assert [v is None for v in rank[key]] == skipped
            for step, (got, want) in enumerate(zip(rank[key], reference[key])):
                if want is not None:
                    assert got == pytest.approx(want, rel=1e-5), f"rank {r} {key} at step {step}"
        for step, (got, want) in enumerate(zip(rank["module_norms"], reference["module_norms"])):
            if not skipped[step]:
                assert got == pytest.approx(want, rel=1e-5), f"rank {r} module norms at step {step}"
        for got, want in zip(rank["params"], reference["params"]):  # the same training, sharded
            assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    for key in ("skipped", "norm_before", "norm_after", "module_norms", "params"):
        assert ranks[0][key] == ranks[1][key], key  # the ranks agree exactly
