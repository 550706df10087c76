"""Table 1: the gradient pass, Guard's against clip_grad_norm_, one read of every gradient, and
the peers' ways of measuring.

Gradients are set once (random, total norm about 10) and every contender works on the same
tensors. Contenders, per model:

* ``clip_grad_norm_(model.parameters(), 1.0)`` (the baseline, as training loops write it): total
  norm, then every gradient scaled in place. Also timed on a parameter list built once, which
  saves walking the module tree each call.
* ``Guard.check``: what ``guard.step`` does before ``optimizer.step()``: one fused norm pass, the
  total and per-module norms, ClipNorm(1.0) reusing them, the non-finite check, and the step's
  statistics kept on the device (copied to the host every ``log_every`` = 10 calls).
* the same without spike detection, to show what the per-step spike detector costs.
* ``gg.grad_norms``: the fused norm pass alone (per-tensor and total norms).
* one read: ``torch._foreach_norm`` over every gradient, nothing else: the memory-bandwidth
  floor for anything that looks at every gradient once.
* per-tensor ``.item()``: how Lightning's ``grad_norm`` and the AutoClip reference measure.
* 64-bin histograms: how W&B's ``watch`` summarises each gradient.

The last two only measure (they do not clip); they are what a user adds on top of clipping to
see per-layer gradients with those tools.
"""

from __future__ import annotations

import torch

import gradguard as gg
from benchmarks import peers
from benchmarks._config import Config
from benchmarks._models import GRAD_MODELS, count, fill_grads, human
from benchmarks._report import Table, ms, ratio, spread
from benchmarks._timing import count_ops, interleave, summarize

TARGET = 1.10  # Guard's pass at most 1.10x clip_grad_norm_
BASELINE = "clip_grad_norm_"
GUARD = "Guard.check (norms, per-module, clip)"


def contenders(model: torch.nn.Module) -> dict:
    params = list(model.parameters())
    grads = [p.grad for p in params]
    guard = gg.Guard(model, clip=1.0)
    quiet = gg.Guard(model, clip=1.0, spike_z=None)
    return {
        BASELINE: lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0),
        "clip_grad_norm_ on a prebuilt parameter list": lambda: torch.nn.utils.clip_grad_norm_(params, 1.0),
        GUARD: guard.check,
        "Guard.check without spike detection (spike_z=None)": quiet.check,
        "gg.grad_norms (fused norm pass only)": lambda: gg.grad_norms(model),
        "one read of every gradient (_foreach_norm)": lambda: torch._foreach_norm(grads),
        "per-tensor .item() norms (Lightning, AutoClip)": lambda: peers.per_tensor_item_norms(model),
        "64-bin histograms (W&B watch)": lambda: peers.histograms_64(model),
    }


def run(cfg: Config) -> list[Table]:
    models = cfg.pick(
        smoke=["MLP tiny", "GPT tiny"],
        cpu=["MLP 1M", "GPT 1M", "MLP 30M", "GPT 30M"],
        cuda=["MLP 1M", "GPT 1M", "MLP 30M", "GPT 30M", "GPT 300M"],
    )
    rounds = cfg.pick(smoke=2, cpu=21, cuda=31)
    min_block = cfg.pick(smoke=0.0, cpu=0.02, cuda=0.005)
    table = Table(
        "grad_pass",
        f"Gradient pass: Guard against clip_grad_norm_ and the peers ({cfg.device.type})",
        ["model", "params (tensors)", "contender", "median ms", "IQR ms", "ratio of medians", "paired ratio: median (IQR)", "ops per call", "target"],
    )
    for name in models:
        torch.manual_seed(0)
        with cfg.device:  # parameters are created on the device: no host copy of a 300M model
            model = GRAD_MODELS[name]()
        fill_grads(model)
        n_params, n_tensors = count(model)
        fns = contenders(model)
        samples = interleave(fns, rounds=rounds, warmup=2, min_block=min_block, sync=cfg.sync, clock=cfg.clock)
        summaries = summarize(samples, BASELINE)
        ops = {label: count_ops(fn) for label, fn in fns.items()}  # after timing: it slows the call down
        table.data[name] = {"params": n_params, "tensors": n_tensors, "contenders": [{**s.as_dict(), "ops": ops[s.name]} for s in summaries]}
        for s in summaries:
            target = ""
            if s.name == GUARD:
                target = f"<= {TARGET:.2f}x: " + ("met" if s.ratio <= TARGET else f"missed by {100 * (s.ratio / TARGET - 1):.0f}%")
            table.rows.append({
                "model": name,
                "params (tensors)": f"{human(n_params)} ({n_tensors})",
                "contender": s.name,
                "median ms": ms(s.median),
                "IQR ms": f"{ms(s.q1)}-{ms(s.q3)}",
                "ratio of medians": ratio(s.ratio),
                "paired ratio: median (IQR)": f"{s.paired:.2f} ({spread(s.ratio_q1, s.ratio_q3)})",
                "ops per call": ops[s.name],
                "target": target,
            })
        del model
        if cfg.cuda:
            torch.cuda.empty_cache()
    table.notes += [
        f"{rounds} interleaved rounds per model after 2 warm-up rounds; each timed block repeats a call for at least {min_block * 1e3:.0f} ms.",
        "The per-tensor .item() and histogram rows only measure; clip_grad_norm_ and Guard also clip.",
        "Ratios are to clip_grad_norm_(model.parameters(), 1.0). Paired ratio: contender / baseline within each round.",
        "Ops per call: tensor operator calls (ATen, views included) in one call, counted after the timing; each is a few "
        "microseconds on a CPU thread and a kernel launch on a GPU, whatever its size.",
    ]
    return [table]
