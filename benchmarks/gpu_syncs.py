"""Table 4 (CUDA only): host-device synchronizations per step, Guard against the plain step and
the peers' ways of measuring.

A synchronization makes the CPU wait for the GPU to finish everything queued, so the CPU cannot
run ahead and queue the next step's kernels: a step that logs nothing should have none.
Counted with ``torch.cuda.set_sync_debug_mode("warn")``, which warns once for every
synchronizing call (``.item()``, ``bool(tensor)``, a blocking copy to or from the host, ...).
What is counted is the part of the step after ``backward()`` (``guard.step`` against
``clip_grad_norm_`` + ``optimizer.step()``), after warm-up steps so that one-time set-up (index
tensors, optimizer state) is over; one row counts a whole step, forward and backward included.

On a machine without CUDA the table is skipped. ``HostReads`` counts, on any device, the
operations that read a tensor's value on the host (the ones that synchronize on a GPU); the
smoke test runs the table with it to check the code paths.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import gradguard as gg
from benchmarks import peers
from benchmarks._config import Config
from benchmarks._models import TinyGPT, count, human
from benchmarks._report import Table

NEEDS_CUDA = True
WARM_STEPS = 12  # past step 1 (a probe step) and step 10 (a logging step): step 13 logs nothing


class CudaSyncs:
    """Counts synchronizing CUDA calls made inside the block."""

    name = "torch.cuda.set_sync_debug_mode('warn')"

    def __call__(self, fn: Callable[[], object]) -> int:
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            previous = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fn()
            finally:
                torch.cuda.set_sync_debug_mode(previous)
        return sum("synchroniz" in str(w.message) for w in caught)


class HostReads:
    """Counts the ops that read a tensor's value on the host: a stand-in for syncs off a GPU."""

    name = "host reads (_local_scalar_dense, nonzero) under a dispatch mode"

    def __call__(self, fn: Callable[[], object]) -> int:
        ops = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default}
        seen = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func in ops:
                    seen.append(func)
                return func(*args, **(kwargs or {}))

        with Mode():
            fn()
        return len(seen)


@dataclass(frozen=True)
class Case:
    label: str
    expected: str  # what the design promises, for the table
    guard_kwargs: dict | None = None  # None: no Guard (plain or a peer)
    fused: bool = True
    peer: str | None = None  # "lightning", "wandb", "zclip", "autoclip_reference"
    count_step: int = WARM_STEPS + 1  # which step is counted (1-based)
    whole_step: bool = False  # count forward and backward too


CASES = (
    Case("plain: clip_grad_norm_ + AdamW(fused=True)", "0"),
    Case("Guard, nonfinite='skip', fused AdamW, step that logs nothing", "0 (target)", {}),
    Case("Guard, nonfinite='ignore', fused AdamW, step that logs nothing", "0 (target)", {"nonfinite": "ignore"}),
    Case("Guard, 'skip', fused AdamW, whole step (forward + backward + guard.step)", "0 (target)", {}, whole_step=True),
    Case("Guard, 'skip', fused AdamW, activations + deltas probes armed, non-probe step", "0 (target)", {"probes": "business", "probe_every": 10}),
    Case("Guard, clip='autoclip', 'skip', fused AdamW, step that logs nothing", "0 (target)", {"clip": "autoclip"}),
    Case("Guard, clip='zclip', 'skip', fused AdamW, step that logs nothing", "0 (target)", {"clip": "zclip"}),
    Case("Guard, 'skip', fused AdamW, a step that logs (step 20, log_every=10)", "1 copy of the pending statistics", {}, count_step=20),
    Case("Guard, 'skip', fused AdamW, activations + deltas probe step (step 15, probe_every=5)", "not a target: probe steps read their results at the next flush", {"probes": "business", "probe_every": 5}, count_step=15),
    Case("Guard, 'skip', AdamW(foreach) (cannot skip on the device)", "1 (the skip decision)", {}, fused=False),
    Case("Guard, nonfinite='raise', fused AdamW", "1 (the raise decision)", {"nonfinite": "raise"}),
    Case("per-tensor .item() norms + clip_grad_norm_ (Lightning grad_norm)", "one per tensor", peer="lightning"),
    Case("64-bin histograms + clip_grad_norm_ (W&B watch)", "four or more per tensor", peer="wandb"),
    Case("zclip package ZClip.step", "1 or more", peer="zclip"),
    Case("AutoClip reference (per-tensor .item(), np.percentile)", "one per tensor", peer="autoclip_reference"),
)


def model_for(cfg: Config):
    return TinyGPT(512, 128, 4, 4, 64) if not cfg.smoke else TinyGPT(32, 16, 2, 2, 8)


def run(cfg: Config, counter: Callable[[Callable[[], object]], int] | None = None) -> list[Table]:
    counter = counter or CudaSyncs()
    torch.manual_seed(0)
    probe = model_for(cfg)
    n_params, n_tensors = count(probe)
    table = Table(
        "gpu_syncs",
        f"Host-device synchronizations per step ({cfg.device.type}, GPT {human(n_params)} params, {n_tensors} tensors)",
        ["case", "synchronizations", "expected"],
    )
    missing = {}
    for case in CASES:
        result = count_case(cfg, case, counter)
        if isinstance(result, str):
            missing[case.label] = result
            continue
        table.rows.append({"case": case.label, "synchronizations": result, "expected": case.expected})
        table.data[case.label] = result
    table.notes.append(f"Counted with {counter.name}, on step {WARM_STEPS + 1} unless the case says otherwise; only the part after backward() unless it says 'whole step'.")
    for label, why in missing.items():
        table.notes.append(f"Not measured: {label} ({why}).")
    return [table]


def count_case(cfg: Config, case: Case, counter) -> int | str:
    torch.manual_seed(0)
    with cfg.device:
        model = model_for(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=case.fused, foreach=None if case.fused else True)
    gen = torch.Generator().manual_seed(0)
    vocab, context = model.tok.num_embeddings, model.pos.num_embeddings
    tokens = torch.randint(0, vocab, (4, context + 1), generator=gen).to(cfg.device)
    x, y = tokens[:, :-1], tokens[:, 1:]
    params = list(model.parameters())
    after_backward = make_after_backward(case, model, opt, params)
    if isinstance(after_backward, str):
        return after_backward

    def forward_backward():
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        return loss

    for _ in range(case.count_step - 1):
        after_backward(forward_backward())
    if case.whole_step:
        return counter(lambda: after_backward(forward_backward()))
    loss = forward_backward()
    if cfg.cuda:
        torch.cuda.synchronize()
    return counter(lambda: after_backward(loss))


def make_after_backward(case: Case, model, opt, params) -> Callable | str:
    if case.guard_kwargs is not None:
        kwargs = {"clip": 1.0, **case.guard_kwargs}
        guard = gg.Guard(model, **kwargs)
        return lambda loss: guard.step(opt, loss=loss)
    if case.peer is None:
        return lambda loss: (torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0), opt.step())
    if case.peer == "lightning":
        return lambda loss: (peers.per_tensor_item_norms(model), torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0), opt.step())
    if case.peer == "wandb":
        return lambda loss: (peers.histograms_64(model), torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0), opt.step())
    if case.peer == "autoclip_reference":
        clipper = peers.AutoClipReference(model)
        return lambda loss: (clipper(), opt.step())
    if case.peer == "zclip":
        ZClip, why = peers.optional("zclip")
        if ZClip is None:
            return why
        zclip = ZClip(max_grad_norm=None)
        return lambda loss: (zclip.step(model), opt.step())
    raise ValueError(f"unknown peer {case.peer!r}")
