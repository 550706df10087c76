"""DDP and FSDP2 on CPU with gloo, 2 ranks: what Guard measures and does equals one process.

Each rank trains on its half of a batch; the single-process reference trains on the whole batch.
Gradients are then the same up to float32 summation order, so norms (total, per tensor, per
module) and clipped gradients must agree within 1e-6 relative, and a NaN that one rank alone sees
must make every rank skip. The ranks run once per backend (module-scoped fixtures) to keep the
file within its budget (~60 s with the torchrun example runs).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import gradguard as gg
from tests._ranks import run_on_ranks

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2
RTOL = 1e-6

needs_gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo")

# (label, norm_type, clipper factory): the thresholds are low enough that every clipper acts.
CASES = [
    ("p2-none", 2.0, lambda: None),
    ("p2-norm", 2.0, lambda: gg.ClipNorm(0.3)),
    ("p2-tensor", 2.0, lambda: gg.ClipTensorNorm(0.1)),
    ("p2-value", 2.0, lambda: gg.ClipValue(0.02)),
    ("p2-agc", 2.0, lambda: gg.AGC(0.01)),
    ("p2-agc-all", 2.0, lambda: gg.AGC(0.01, exclude=())),
    ("pinf-none", math.inf, lambda: None),
    ("pinf-norm", math.inf, lambda: gg.ClipNorm(0.3, norm_type=math.inf)),
    ("pinf-tensor", math.inf, lambda: gg.ClipTensorNorm(0.1, norm_type=math.inf)),
    ("p1-norm", 1.0, lambda: gg.ClipNorm(1.0, norm_type=1.0)),
]
DDP_CASES = ("p2-none", "p2-norm", "pinf-norm")
MESHES = ("fsdp", "hsdp")  # 1-D shard mesh; 2-D (replicate=2, shard=1) mesh


# ---------------------------------------------------------------------------- shared by ranks and reference
def make_model() -> nn.Sequential:
    """Its last layer has one output: over 2 ranks, rank 1 holds empty FSDP2 shards of it."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5), nn.Tanh(), nn.Linear(5, 1))


def batch(step: int, rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole batch (rank None) or one rank's half of it."""
    gen = torch.Generator().manual_seed(100 + step)
    x, y = torch.randn(8, 6, generator=gen), torch.randn(8, 1, generator=gen)
    if rank is None:
        return x, y
    return x.chunk(WORLD)[rank], y.chunk(WORLD)[rank]


def backward(model: nn.Module, step: int, rank: int | None) -> None:
    x, y = batch(step, rank)
    (model(x) - y).pow(2).mean().backward()


def local(t: torch.Tensor) -> torch.Tensor:
    """The part of a tensor this rank holds (a DTensor's shard, or the tensor itself)."""
    return t.to_local() if hasattr(t, "to_local") else t


def full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()


def plain(name: str) -> str:
    return name.removeprefix("module.")  # DDP's wrapper prefixes every name


class HostReads(TorchDispatchMode):
    """Counts device-to-host reads: ``.item()``, ``bool()`` and ``.tolist()`` all go through this op."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def measure(model: nn.Module, norm_type: float, clip) -> dict:
    """Norms before clipping, then one Guard.check: its statistics and the clipped gradients."""
    norms = gg.grad_norms(model, norm_type)
    per_tensor = {plain(n): float(v) for n, v in norms.per_tensor.items()}
    guard = gg.Guard(model, clip=clip, norm_type=None if clip is not None else norm_type, nonfinite="ignore", log_every=1000)
    with HostReads() as reads:  # nothing may be read on the host on a step that logs nothing
        info = guard.check()
    guard.flush()
    return {
        "total": float(norms.total),
        "per_tensor": per_tensor,
        "modules": [plain(m) for m in guard.module_names],
        "module_norms": guard.history.module_norms[0].tolist(),
        "stats": info.as_floats(),
        "grads": {plain(n): full(p.grad) for n, p in model.named_parameters()},
        "host_reads": reads.count,
    }


def train_with_nan(rank: int | None, wrap=lambda m: m, use_check: bool = False, norm_type: float = 2.0, bad_rank: int = 1) -> dict:
    """Four Adam steps under Guard; at step 2 a NaN lands in ``bad_rank``'s gradient only.

    With ``use_check`` the loop steps the optimizer itself after ``guard.check()``, as the
    Lightning and Hugging Face integrations do.
    """
    model = wrap(make_model())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    guard = gg.Guard(model, clip=gg.ClipNorm(1.0, norm_type=norm_type), log_every=1)
    out = {}
    for step in range(4):
        backward(model, step, rank)
        if step == 2:
            if rank in (None, bad_rank):
                local(next(model.parameters()).grad).view(-1)[0] = math.nan
            params = [local(p).detach().clone() for p in model.parameters()]
            state = {k: {f: local(v).clone() for f, v in s.items()} for k, s in opt.state.items()}
        if use_check:
            guard.check()
            opt.step()
        else:
            guard.step(opt)
        if step == 2:
            out["params_unchanged"] = all(torch.equal(local(p), q) for p, q in zip(model.parameters(), params))
            out["state_unchanged"] = all(
                torch.equal(local(v), state[k][f]) for k, s in opt.state.items() for f, v in s.items()
            ) and len(opt.state) == len(state)
        opt.zero_grad()
    out["skipped"] = guard.history.skipped.tolist()
    out["skipped_steps"] = guard.skipped_steps
    out["final"] = [full(p) for p in model.parameters()]
    return out


# ---------------------------------------------------------------------------- rank workers
def worker(rank: int, world_size: int, store_dir: str) -> dict:
    """Everything the ranks do, in one spawn (starting processes costs more than the work)."""
    return {"ddp": ddp_part(rank, world_size), "fsdp2": fsdp2_part(rank, world_size), "store": store_part(rank, store_dir)}


def store_part(rank: int, store_dir: str) -> dict:
    """Six DDP steps under Guard with a run store, a NaN on rank 1 at step 3: who writes, what is found."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = DDP(make_model())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    guard = gg.Guard(model, clip=1.0, store=os.path.join(store_dir, "run.sqlite"), log_every=2)
    opened = guard.store is not None
    for step in range(6):
        backward(model, step, rank)
        if step == 3 and rank == 1:
            local(next(model.parameters()).grad).view(-1)[0] = math.nan
        guard.step(opt)
        opt.zero_grad()
    findings = [(f.code, f.severity, f.where) for f in guard.findings()]
    guard.close()
    return {"opened_store": opened, "findings": findings, "skipped": guard.history.skipped.tolist()}


def ddp_part(rank: int, world_size: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    out = {}
    for label, norm_type, make_clip in CASES:
        if label in DDP_CASES:
            model = DDP(make_model())
            backward(model, 0, rank)
            out[label] = measure(model, norm_type, make_clip())
    out["nan"] = train_with_nan(rank, DDP)
    return out


def fsdp2_part(rank: int, world_size: int) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    meshes = {
        "fsdp": init_device_mesh("cpu", (world_size,)),
        "hsdp": init_device_mesh("cpu", (world_size, 1), mesh_dim_names=("replicate", "shard")),
    }

    def shard(model, mesh):
        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        return fully_shard(model, mesh=mesh)

    out: dict = {"placements": {}}
    for mesh_name, mesh in meshes.items():
        for label, norm_type, make_clip in CASES:
            model = shard(make_model(), mesh)
            backward(model, 0, rank)
            out["placements"][mesh_name] = [str(p.grad.placements) for p in model.parameters()]
            calls = count_all_reduces(lambda: gg.grad_norms(model, norm_type))
            out[mesh_name, label] = dict(measure(model, norm_type, make_clip()), norm_all_reduces=calls)
        model = shard(make_model(), mesh)
        backward(model, 0, rank)
        guard = gg.Guard(model, clip=1.0, nonfinite="skip", log_every=1000)
        with HostReads() as reads:
            guard.check()
        out[mesh_name, "skip-policy-host-reads"] = reads.count
    fsdp = lambda m: shard(m, meshes["fsdp"])  # noqa: E731
    out["nan-step"] = train_with_nan(rank, fsdp)
    out["nan-check"] = train_with_nan(rank, fsdp, use_check=True)
    # The max norm reduces with MAX, which loses a NaN arriving from another rank unless sent as inf.
    out["nan-inf"] = train_with_nan(rank, fsdp, norm_type=math.inf)
    return out


def count_all_reduces(fn) -> int:
    real, calls = dist.all_reduce, []

    def counting(*args, **kwargs):
        calls.append(kwargs.get("group"))
        return real(*args, **kwargs)

    dist.all_reduce = counting
    try:
        fn()
    finally:
        dist.all_reduce = real
    return len(calls)


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def ranks(store_dir):
    return run_on_ranks(worker, str(store_dir), world_size=WORLD, timeout=150)


@pytest.fixture(scope="module")
def ddp_ranks(ranks):
    return [r["ddp"] for r in ranks]


@pytest.fixture(scope="module")
def fsdp2_ranks(ranks):
    return [r["fsdp2"] for r in ranks]


@pytest.fixture(scope="module")
def reference():
    """The same cases in this process, on the whole batch, without torch.distributed."""
    out = {}
    for label, norm_type, make_clip in CASES:
        model = make_model()
        backward(model, 0, None)
        out[label] = measure(model, norm_type, make_clip())
    out["nan"] = train_with_nan(None)
    out["nan-inf"] = train_with_nan(None, norm_type=math.inf)
    return out


def assert_rel(got: float, want: float, what: str) -> None:
    if math.isinf(want):  # the threshold when nothing clips
        assert got == want, f"{what}: {got!r} vs reference {want!r}"
        return
    assert abs(got - want) <= RTOL * abs(want), f"{what}: {got!r} vs reference {want!r}"


def assert_matches(got: dict, want: dict, *, clipped: bool = True) -> None:
    assert_rel(got["total"], want["total"], "total norm")
    assert got["per_tensor"].keys() == want["per_tensor"].keys()
    for name, value in want["per_tensor"].items():
        assert_rel(got["per_tensor"][name], value, f"norm of {name}")
    assert got["modules"] == want["modules"]
    for module, g, w in zip(want["modules"], got["module_norms"], want["module_norms"]):
        assert_rel(g, w, f"norm of module {module}")
    for key in ("norm_before", "norm_after", "threshold", "coef"):
        assert_rel(got["stats"][key], want["stats"][key], key)
    assert got["stats"]["clipped"] == want["stats"]["clipped"]
    if clipped:
        # Clipped gradients agree element-wise to 1e-6 of the largest pre-clip gradient entry.
        scale = max(want["per_tensor"].values())
        for name, g in want["grads"].items():
            err = (got["grads"][name] - g).abs().max().item()
            assert err <= RTOL * scale, f"{name}: clipped gradient differs by {err:.3g} (scale {scale:.3g})"


# ---------------------------------------------------------------------------- tests
def test_empty_gradient_has_zero_norm_for_every_p():
    """An FSDP2 rank can hold an empty shard; its norm is 0 (torch refuses the max of nothing)."""
    empty = nn.Parameter(torch.zeros(0, 3))
    empty.grad = torch.zeros(0, 3)
    other = nn.Parameter(torch.zeros(2))
    other.grad = torch.tensor([3.0, -4.0])
    for p in (1.0, 2.0, math.inf):
        norms = gg.grad_norms([("empty", empty), ("other", other)], p)
        assert float(norms.per_tensor["empty"]) == 0.0
    stats = gg.ClipValue(1.0)([("empty", empty), ("other", other)])
    assert bool(stats.clipped) and other.grad.tolist() == [1.0, -1.0]


def test_every_clipper_case_clips_in_the_reference(reference):
    """Otherwise comparing clipped gradients would compare unclipped ones."""
    for label, _, make_clip in CASES:
        assert reference[label]["stats"]["clipped"] == (make_clip() is not None), label


@pytest.mark.parametrize("label", DDP_CASES)
@pytest.mark.parametrize("rank", range(WORLD))
@pytest.mark.distributed
@needs_gloo
def test_ddp_norms_and_clipping_match_single_process(ddp_ranks, reference, rank, label):
    got = ddp_ranks[rank][label]
    assert_matches(got, reference[label])
    assert got["host_reads"] == 0


@pytest.mark.distributed
@needs_gloo
def test_ddp_nan_on_one_rank_skips_on_every_rank(ddp_ranks, reference):
    for rank, result in enumerate(ddp_ranks):
        nan = result["nan"]
        assert nan["skipped"] == [False, False, True, False], f"rank {rank}"
        assert nan["skipped_steps"] == 1
        assert nan["params_unchanged"] and nan["state_unchanged"], f"rank {rank} changed on the skipped step"
    # Ranks stayed in lockstep, and in step with one process that skipped the same step.
    for p0, p1, ref in zip(ddp_ranks[0]["nan"]["final"], ddp_ranks[1]["nan"]["final"], reference["nan"]["final"]):
        assert torch.equal(p0, p1)
        torch.testing.assert_close(p0, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("label", [c[0] for c in CASES])
@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.distributed
@needs_gloo
def test_fsdp2_norms_and_clipping_match_single_process(fsdp2_ranks, reference, mesh, label):
    for rank in range(WORLD):
        got = fsdp2_ranks[rank][mesh, label]
        assert_matches(got, reference[label])
        assert got["host_reads"] == 0, f"rank {rank}: {got['host_reads']} host reads in guard.check()"


@pytest.mark.distributed
@needs_gloo
def test_fsdp2_gradients_are_sharded_dtensors(fsdp2_ranks):
    """Guards against the test passing vacuously: FSDP2 really sharded (or replicated) every gradient."""
    placements = fsdp2_ranks[0]["placements"]
    assert all(p == "(Shard(dim=0),)" for p in placements["fsdp"])
    assert all(p == "(Replicate(), Shard(dim=0))" for p in placements["hsdp"])


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.distributed
@needs_gloo
def test_fsdp2_norm_reduction_is_one_all_reduce_per_mesh_dim(fsdp2_ranks, mesh):
    # One sharded mesh dimension in both meshes: the replicated one is not reduced over.
    for rank in range(WORLD):
        for label, *_ in CASES:
            assert fsdp2_ranks[rank][mesh, label]["norm_all_reduces"] == 1
        # The skip policy reads exactly one boolean: the non-finite flag all ranks agreed on.
        assert fsdp2_ranks[rank][mesh, "skip-policy-host-reads"] == 1


@pytest.mark.parametrize("path", ["nan-step", "nan-check", "nan-inf"])
@pytest.mark.distributed
@needs_gloo
def test_fsdp2_nan_on_one_rank_skips_on_every_rank(fsdp2_ranks, reference, path):
    for rank, result in enumerate(fsdp2_ranks):
        nan = result[path]
        assert nan["skipped"] == [False, False, True, False], f"rank {rank}"
        assert nan["skipped_steps"] == 1
        assert nan["params_unchanged"] and nan["state_unchanged"], f"rank {rank} changed on the skipped step"
    want = reference["nan-inf" if path == "nan-inf" else "nan"]["final"]
    for p0, p1, ref in zip(fsdp2_ranks[0][path]["final"], fsdp2_ranks[1][path]["final"], want):
        assert torch.equal(p0, p1)
        torch.testing.assert_close(p0, ref, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- the torchrun examples
@pytest.mark.parametrize("script", ["ddp_train.py", "fsdp2_train.py"])
@pytest.mark.distributed
@pytest.mark.slow
@needs_gloo
def test_example_runs_under_torchrun_on_two_cpu_ranks(script, tmp_path):
    # CPU ranks even on a GPU machine: two ranks cannot share one GPU under nccl.
    env = dict(os.environ, GRADGUARD_EXAMPLE_STEPS="6", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD), str(ROOT / "examples" / script)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = [line for line in proc.stdout.splitlines() if line.startswith("gradguard:")]
    assert len(summary) == 1, proc.stdout  # printed by rank 0 only
    assert "steps=6" in summary[0] and "skipped=1" in summary[0]


@pytest.mark.distributed
@needs_gloo
def test_only_rank_zero_writes_the_store_and_findings_agree(ranks, store_dir):
    parts = [r["store"] for r in ranks]
    assert [p["opened_store"] for p in parts] == [True] + [False] * (WORLD - 1)
    assert all(p["skipped"] == [False, False, False, True, False, False] for p in parts)
    assert all(p["findings"] == parts[0]["findings"] for p in parts)
    assert "NONFINITE" in [code for code, _, _ in parts[0]["findings"]]
    with gg.RunStore(store_dir / "run.sqlite") as store:
        assert store.steps()["step"].tolist() == [1, 2, 3, 4, 5, 6]
        assert [(f.code, f.severity) for f in store.findings()] == [(c, s) for c, s, _ in parts[0]["findings"]]
