"""Table 2: training-step overhead, Guard against a plain step that already clips.

The plain step is the loop most people run: ``zero_grad``, forward, backward,
``clip_grad_norm_(model.parameters(), 1.0)``, ``optimizer.step()``. The Guard step replaces the
last two lines with ``guard.step(optimizer, loss=loss)``. Each contender trains its own copy of
the model (same initial weights, same batches, AdamW; ``fused=True`` on a GPU, as Guard's
sync-free skip wants), so optimizer state and Guard state evolve as in a real run.

A contender's timed block is one period of its schedule (10 steps: Guard copies statistics to
the host every ``log_every`` = 10 steps and probes every ``probe_every`` steps; 100 steps for a
probe every 100), so every block holds its share of the expensive steps and the median block
gives the amortised cost per step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import gradguard as gg
from benchmarks._config import Config
from benchmarks._models import LSTMLM, TinyGPT, count, deep_cnn, human
from benchmarks._report import Table, ms
from benchmarks._timing import Task, interleave, summarize

PLAIN = "plain step with clip_grad_norm_"


@dataclass(frozen=True)
class Variant:
    """A Guard configuration timed against the plain step.

    ``guard_kwargs`` go to ``gg.Guard(model, clip=1.0, **guard_kwargs)``; a configuration this
    build of Guard does not accept (a TypeError or ValueError at construction) is reported as
    not measured, with the reason. ``period`` is the number of steps after which its cost
    pattern repeats.
    """

    label: str
    guard_kwargs: dict[str, Any] = field(default_factory=dict)
    period: int = 10
    target: float | None = None  # largest acceptable overhead, as a fraction of the plain step
    recurrent_only: bool = False


# Guard's probes are configured here and nowhere else (``probes`` and ``probe_every`` are Guard's
# own arguments; an int ``probe_every`` is the period of every probe but timesteps, which run 10x
# less often; a mapping sets periods per probe).
VARIANTS = (
    Variant("Guard, defaults (norms probe every 10 steps)", {}, period=10, target=0.02),
    Variant("Guard, norms probe every step", {"probe_every": {"norms": 1}}, period=10, target=0.02),
    Variant("Guard + activations, deltas every 10 steps", {"probes": "business", "probe_every": 10}, period=10, target=0.05),
    Variant(
        "Guard, full: + activations, deltas every 10, timesteps every 100 steps",
        {"probes": "full", "probe_every": {"norms": 10, "activations": 10, "deltas": 10, "timesteps": 100}},
        period=100,
        recurrent_only=True,
    ),
)


@dataclass
class Workload:
    name: str
    build: Callable[[], nn.Module]
    batch: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]]
    loss: Callable[[nn.Module, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]
    recurrent: bool = False


def lm_loss(model, batch):
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def cls_loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def token_batch(vocab: int, batch: int, seq: int):
    def make(gen):
        tokens = torch.randint(0, vocab, (batch, seq + 1), generator=gen)
        return tokens[:, :-1], tokens[:, 1:]

    return make


def image_batch(batch: int, size: int, classes: int = 10):
    def make(gen):
        return torch.randn(batch, 3, size, size, generator=gen), torch.randint(0, classes, (batch,), generator=gen)

    return make


def workloads(cfg: Config) -> list[Workload]:
    lstm = cfg.pick(smoke=(50, 8, 16, 2, 6), cpu=(2000, 128, 256, 16, 32), cuda=(10000, 512, 1024, 64, 64))
    gpt = cfg.pick(smoke=(50, 16, 2, 2, 2, 8), cpu=(512, 128, 4, 4, 16, 64), cuda=(8192, 512, 8, 8, 32, 256))
    cnn = cfg.pick(smoke=((4, 8), 2, 2, 8), cpu=((16, 32, 64), 6, 32, 16), cuda=((64, 128, 256), 6, 128, 32))
    v, e, h, b, t = lstm
    gv, gd, gl, gh, gb, gt = gpt
    stages, per_stage, cb, size = cnn
    return [
        Workload(f"2-layer LSTM LM (hidden {h}, seq {t})", lambda: LSTMLM(v, e, h, 2), token_batch(v, b, t), lm_loss, recurrent=True),
        Workload(f"transformer LM ({gl} layers, d {gd}, seq {gt})", lambda: TinyGPT(gv, gd, gl, gh, gt), token_batch(gv, gb, gt), lm_loss),
        Workload(f"deep CNN ({len(stages) * per_stage} conv layers)", lambda: deep_cnn(stages, per_stage), image_batch(cb, size), cls_loss),
    ]


def trainer(model: nn.Module, batches: list, loss_fn, guard: gg.Guard | None, fused: bool = False) -> Callable[[], None]:
    """One training step per call, cycling through ``batches``."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused or None)
    state = {"i": 0}

    def step():
        batch = batches[state["i"] % len(batches)]
        state["i"] += 1
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model, batch)
        loss.backward()
        if guard is None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        else:
            guard.step(opt, loss=loss)

    return step


def try_guard(model: nn.Module, variant: Variant) -> tuple[gg.Guard | None, str | None]:
    try:
        return gg.Guard(model, clip=1.0, **variant.guard_kwargs), None
    except (TypeError, ValueError) as exc:
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0][:200]


def run(cfg: Config) -> list[Table]:
    rounds = cfg.pick(smoke=2, cpu=21, cuda=21)
    table = Table(
        "train_step",
        f"Training-step overhead against a plain step that already clips ({cfg.device.type})",
        ["model", "params (tensors)", "contender", "ms per step", "IQR ms", "overhead (ratio of medians)", "paired overhead: median (IQR)", "target"],
    )
    missing: dict[str, str] = {}
    for work in workloads(cfg):
        torch.manual_seed(0)
        base = work.build().to(cfg.device)
        n_params, n_tensors = count(base)
        gen = torch.Generator().manual_seed(0)
        batches = [tuple(t.to(cfg.device) for t in work.batch(gen)) for _ in range(4)]
        contenders: dict[str, Callable[[], None] | None] = {PLAIN: None}  # set below; keeps the plain step first
        periods = {PLAIN: 10}
        for variant in VARIANTS:
            if variant.recurrent_only and not work.recurrent:
                continue
            model = copy.deepcopy(base)
            guard, why = try_guard(model, variant)
            if guard is None:
                missing[variant.label] = why
                continue
            contenders[variant.label] = trainer(model, batches, work.loss, guard, fused=cfg.cuda)
            periods[variant.label] = variant.period
        contenders[PLAIN] = trainer(copy.deepcopy(base), batches, work.loss, None, fused=cfg.cuda)
        blocks = {name: (1 if cfg.smoke else periods[name]) for name in contenders}
        tasks = {name: Task(_repeat(step, blocks[name]), units=blocks[name]) for name, step in contenders.items()}
        samples = interleave(tasks, rounds=rounds, warmup=1, sync=cfg.sync, clock=cfg.clock)
        summaries = summarize(samples, PLAIN)
        table.data[work.name] = {"params": n_params, "tensors": n_tensors, "steps_per_block": blocks, "contenders": [s.as_dict() for s in summaries]}
        for s in summaries:
            variant = next((v for v in VARIANTS if v.label == s.name), None)
            overhead = s.ratio - 1
            target = ""
            if variant is not None and variant.target is not None:
                target = f"<= {100 * variant.target:.0f}%: " + ("met" if overhead <= variant.target else f"missed by {100 * (overhead - variant.target):.1f} points")
            table.rows.append({
                "model": work.name,
                "params (tensors)": f"{human(n_params)} ({n_tensors})",
                "contender": s.name,
                "ms per step": ms(s.median),
                "IQR ms": f"{ms(s.q1)}-{ms(s.q3)}",
                "overhead (ratio of medians)": f"{100 * overhead:+.1f}%",
                "paired overhead: median (IQR)": f"{100 * (s.paired - 1):+.1f}% ({100 * (s.ratio_q1 - 1):+.1f} to {100 * (s.ratio_q3 - 1):+.1f})",
                "target": target,
            })
    table.notes.append(
        f"{rounds} interleaved rounds after one warm-up block. A block is one period of the contender's schedule "
        "(10 steps, or 100 with a probe every 100 steps); AdamW, lr 1e-4 (fused=True on a GPU, where it lets Guard skip "
        "non-finite steps on the device); overhead = ratio of medians - 1."
    )
    for label, why in missing.items():
        table.notes.append(f"Not measured: {label}. This build of Guard does not accept its options ({why}).")
    table.data["not_measured"] = missing
    return [table]


def _repeat(step: Callable[[], None], n: int) -> Callable[[], None]:
    def block():
        for _ in range(n):
            step()

    return block
