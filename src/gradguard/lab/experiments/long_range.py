"""long-range: which cells learn dependencies T steps long, on the adding, copy and temporal-order tasks.

Each job trains one cell on one problem (task and length) and stops early once the evaluation
error is at most ``stop_fraction`` of the bar (checked every ``eval_every`` steps on a fixed
set); the verdict reads the error on fresh test sequences. Cells: a tanh RNN without clipping,
with global-norm clipping, and with clipping plus Pascanu's Omega; an IRNN (clipped); an LSTM and
a GRU (clipped, as the uRNN paper trains them). The tanh RNN is torch's fused ``nn.RNN``: the
recurrence of ``gg.rnn.SimpleRNN``, several times faster.

Judged: on the adding problem at every length run, LSTM and GRU reach test MSE < 0.01 (the
conventional "solved" bar), and the clipped tanh RNN ends within 0.7-1.5x the baseline MSE 1/6
(stuck at the baseline, not diverged); on copy at T = 100, the LSTM ends below 0.95x the
memoryless baseline 10 ln 8 / (T + 20) (the uRNN's LSTM beats it there only). Reported only (not
judged): temporal order, copy beyond T = 100, the IRNN, the unclipped and Omega RNNs.

Scale. The uRNN paper trains 20,000 RMSProp iterations. With Adam at 3e-3, batch 64, hidden 64
and clipping at 1, an LSTM gets below 0.01 MSE at T = 100 by about step 1,500 and at T = 200 by
about step 2,700 (our measurement, one CPU core), so at up to ``shown_steps`` = 3,000 steps a
failure on the adding problem at T <= 200 is a plain "fail". On copy at T = 100 the same LSTM
sits on the memoryless plateau (1.00x the baseline) until about step 2,700, then leaves it: 0.95x
at step 3,000, 0.91x at 4,000 (our measurement, seed 0), so copy gets its own budget
``copy_steps`` = 4,000 and a copy failure at that budget is a plain "fail" too. It does not leave
the plateau in every seed: in three seeds run for 8,000 steps, seeds 0 and 2 were at 0.91x by
step 4,000 (0.83x and 0.87x at 8,000), seed 1 stayed at 1.00x throughout. The standard preset
runs seed 0; ``--seeds 3`` judges the median of three (0.91x at 4,000 steps). Only a problem
the presets have not been shown to solve at their budget (adding beyond T = 200, a smaller copy
budget) can read "not reproduced at quick scale".

Presets and cost, in CPU seconds per job as the job records give them, measured with one
thread on a shared, loaded machine (an idle core is faster; the T = 200 LSTM alone took 137 s
there): quick, adding at T = 100 (RNN 65 s, LSTM 45 s, GRU 40 s on an idle core: 2.5 CPU minutes); standard,
adding at T = 100 and 200 and copy at T = 100 with the LSTM only (T = 200: RNN 141 s, LSTM 245 s,
GRU 130 s; copy LSTM 155 s: 851 s, about 14 CPU minutes in all); the IRNN and the other cells
on copy run in full only, which runs every task at T up to 400 with the uRNN setup.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import torch

import gradguard as gg
from gradguard.lab.models import SeqModel
from gradguard.lab.registry import Context, Experiment, Figure, Verdict, register
from gradguard.lab.tasks import make_task
from gradguard.lab.train import evaluate, history_summary, make_optimizer

CLAIM = (
    "On the adding problem LSTM and GRU get below 0.01 MSE where a clipped tanh RNN stays at the baseline "
    "(without diverging); on copy at T = 100 the LSTM beats the memoryless baseline."
)
ANCHOR = (
    "Arjovsky et al. 2016 (uRNN) sec. 4.2: LSTM beats the adding baseline MSE 0.167 up to T = 400, tanh RNN and IRNN "
    "never; sec. 4.1: on copy the LSTM beats the memoryless baseline 10 ln 8 / (T + 20) only at T = 100. Pascanu et "
    "al. 2013 Fig. 7 (temporal order) is the regularization experiment's."
)

ADDING_BAR = 0.01  # "solved" on the modern adding problem: test MSE below this (the conventional bar)
RNN_BAND = (0.7, 1.5)  # the clipped tanh RNN's test MSE over the baseline: stuck there, not diverged
COPY_MARGIN = 0.95  # the LSTM's copy cross-entropy must be below this times the memoryless baseline
COPY_SHOWN_STEPS = 4000  # copy at T = 100: the LSTM was below COPY_MARGIN x the baseline by this step (see above)

# cell name -> (SeqModel cell, clip, Omega)
MODELS = {
    "rnn": ("rnn", False, False),
    "rnn-clip": ("rnn", True, False),
    "rnn-clip-omega": ("rnn", True, True),
    "irnn-clip": ("irnn", True, False),
    "lstm": ("lstm", True, False),
    "gru": ("gru", True, False),
}


@dataclass
class Config:
    problems: tuple = ("adding:100",)  # task:length
    models: tuple = ("rnn-clip", "lstm", "gru")
    copy_models: tuple = ("lstm",)  # the cells run on copy (only the LSTM is judged there)
    hidden: int = 64
    steps: int = 3000  # at most; a job stops once solved
    copy_steps: int = 4000  # the copy task's budget: the LSTM leaves the memoryless plateau after about 2,700 steps
    batch: int = 64
    optimizer: str = "adam"
    lr: float = 3e-3  # the tanh RNN does not diverge at this rate with clipping at 1; the uRNN paper: RMSProp 1e-3
    clip: float = 1.0  # global-norm threshold (uRNN: "LSTM and RNN needed gradient clipping at 1")
    omega: float = 2.0  # Pascanu's alpha (the Omega arm; reported only here)
    eval_every: int = 100
    eval_size: int = 500
    test_size: int = 1000
    stop_fraction: float = 0.7  # stop once the evaluation error is below this share of the bar
    shown_steps: int = 3000  # the budget at which the adding claim was shown to hold for T <= 200 (see above)


QUICK = Config()
STANDARD = Config(problems=("adding:100", "adding:200", "copy:100"))
FULL = Config(
    problems=tuple(f"{t}:{n}" for t in ("adding", "copy", "temporal-order") for n in (100, 200, 400)),
    models=tuple(MODELS),
    copy_models=tuple(MODELS),
    hidden=128,
    steps=20_000,
    copy_steps=20_000,
    batch=20,
    optimizer="rmsprop",
    lr=1e-3,
    eval_every=500,
)
SMOKE = Config(problems=("adding:10",), models=("rnn-clip", "lstm"), hidden=8, steps=20, eval_every=10, eval_size=50, test_size=50)


def variants(cfg: Config) -> list[str]:
    out = []
    for problem in cfg.problems:
        task, length = problem.split(":")
        out += [f"{task}:T{length}:{model}" for model in (cfg.copy_models if task == "copy" else cfg.models)]
    return out


def bar(task_name: str, baseline: float) -> float:
    """The error a job must get below: 0.01 MSE on adding, the memoryless baseline on copy,
    under 1% misclassified on temporal order."""
    if task_name == "adding":
        return ADDING_BAR
    if task_name == "copy":
        return COPY_MARGIN * baseline
    return 0.01


def run(cfg: Config, variant: str, seed: int, ctx: Context) -> dict:
    task_name, length, model_name = variant.split(":")
    cell, clipped, use_omega = MODELS[model_name]
    task = make_task(task_name, length=int(length[1:]))
    target = bar(task_name, task.baseline().error)
    steps = cfg.copy_steps if task_name == "copy" else cfg.steps
    x_eval, y_eval = task.batch(cfg.eval_size, torch.Generator().manual_seed(2_000_000 + seed))
    torch.manual_seed(seed)
    model = SeqModel(cell, task.input_size, task.output_size, cfg.hidden, readout="all" if task.per_step else "last").to(ctx.device)
    opt = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr)
    guard = gg.Guard(model, clip=cfg.clip if clipped else None, nonfinite="skip", max_consecutive_skips=steps, log_every=50, store=ctx.store_path(variant), name=f"long-range {variant}")
    omega = gg.rnn.NormPreservingPenalty(model.rnn, weight=cfg.omega) if use_omega else None
    gen = torch.Generator().manual_seed(seed)
    solved_at, curve = None, []
    for step in range(1, steps + 1):
        x, y = task.batch(cfg.batch, gen)
        loss = task.loss(model(x.to(ctx.device)), y.to(ctx.device))
        loss.backward()
        if omega is not None:
            omega.add_grad()  # Omega's gradient before clipping (Pascanu et al., footnote 4)
        guard.step(opt, loss=loss)
        opt.zero_grad(set_to_none=True)
        if step % cfg.eval_every == 0:
            error = evaluate(model, task, x_eval, y_eval)["error"]
            curve.append((step, error))
            if error < cfg.stop_fraction * target:
                solved_at = step
                break
    guard.close()
    if omega is not None:
        omega.close()
    x_test, y_test = task.batch(cfg.test_size, torch.Generator().manual_seed(3_000_000 + seed))
    test = evaluate(model, task, x_test, y_test)
    return {
        "test_error": test["error"],
        "baseline_error": task.baseline().error,
        "bar": target,
        "below_bar": test["error"] < target,
        "solved_at_step": solved_at,
        "error_curve": curve,
        **history_summary(guard.history),
    }


def judge(cfg: Config, jobs: list[dict]) -> Verdict:
    error = {v: statistics.median(j["metrics"]["test_error"] for j in jobs if j["variant"] == v) for v in variants(cfg)}
    baseline = {v: next(j["metrics"]["baseline_error"] for j in jobs if j["variant"] == v) for v in error}
    checks: list[tuple[str, bool, bool]] = []  # (what, held, shown to hold at this budget)
    for problem in cfg.problems:
        task, length = problem.split(":")
        if task == "adding":
            shown = int(length) <= 200 and cfg.steps >= cfg.shown_steps
        else:  # copy: the LSTM beats the memoryless baseline at T = 100 only (uRNN 2016), here by COPY_SHOWN_STEPS
            shown = task == "copy" and int(length) == 100 and cfg.copy_steps >= COPY_SHOWN_STEPS
        for cell in ("lstm", "gru"):
            v = f"{task}:T{length}:{cell}"
            if task == "adding" and v in error:
                checks.append((f"{v} MSE {error[v]:.3g} < {ADDING_BAR}", error[v] < ADDING_BAR, shown))
        v = f"{task}:T{length}:rnn-clip"
        if task == "adding" and v in error:
            ratio = error[v] / baseline[v]
            inside = RNN_BAND[0] <= ratio <= RNN_BAND[1] if math.isfinite(ratio) else False
            checks.append((f"{v} MSE {error[v]:.3g} = {ratio:.2f}x the baseline, in {RNN_BAND[0]}-{RNN_BAND[1]}x", inside, shown))
        v = f"{task}:T{length}:lstm"
        if task == "copy" and int(length) == 100 and v in error:  # longer copies: the paper's LSTM stays at the baseline
            checks.append((f"{v} cross-entropy {error[v]:.3g} < {COPY_MARGIN} x baseline {baseline[v]:.3g}", error[v] < COPY_MARGIN * baseline[v], shown))
    judged = {c[0].split(" ")[0] for c in checks}
    reported = {v: error[v] for v in error if v not in judged}
    passed = bool(checks) and all(held for _, held, _ in checks)
    failed = [c for c in checks if not c[1]]
    summary = "; ".join(f"{what}: {'yes' if held else 'NO'}" for what, held, _ in checks)
    if reported:
        summary += ". Reported only (not judged): " + ", ".join(f"{v} error {e:.3g} (baseline {baseline[v]:.3g})" for v, e in reported.items())
    return Verdict(
        passed,
        f"adding, every length run: LSTM and GRU median test MSE < {ADDING_BAR}; the clipped tanh RNN within {RNN_BAND[0]}-{RNN_BAND[1]}x "
        f"the baseline 1/6 (stuck, not diverged). copy at T = 100: LSTM cross-entropy < {COPY_MARGIN} x the memoryless baseline. "
        "Temporal order, copy beyond T = 100, IRNN, unclipped and Omega RNNs: reported only",
        summary,
        {"median_test_error": error, "baseline_error": baseline, "checks": {what: held for what, held, _ in checks}, "reported_only": reported},
        scale_limited=bool(failed) and not any(shown for _, _, shown in failed),
        headline=", ".join(f"{v.replace(':T', ' T=')} {error[v]:.3g}" for v in error if v in judged),
    )


EXPERIMENT = register(
    Experiment(
        name="long-range",
        claim=CLAIM,
        anchor=ANCHOR,
        config=Config,
        presets={"quick": QUICK, "standard": STANDARD, "full": FULL, "smoke": SMOKE},
        variants=variants,
        run=run,
        judge=judge,
        quick_seconds=75.0,
        short_anchor="uRNN 2016: LSTM beats adding baseline 0.167 to T=400, tanh RNN never; copy: LSTM only at T=100",
        seeds={"quick": 1, "standard": 1, "full": 3, "smoke": 1},
        figures=(
            Figure(
                "error_curve",
                "Adding problem: evaluation MSE while training",
                x_label="training step",
                y_label="MSE on the evaluation set",
                log_y=True,
                variants=("adding:*",),
                hlines=((1 / 6, "baseline: predict 1"), (ADDING_BAR, "solved: MSE 0.01")),
                caption="One line per cell and length; a line ends where its job stopped, below the bar. Below the lower dotted line is solved.",
            ),
            Figure(
                "error_curve",
                "Temporal order: share misclassified while training",
                x_label="training step",
                y_label="share misclassified (evaluation set)",
                variants=("temporal-order:*",),
                hlines=((0.75, "chance (4 classes)"), (0.01, "solved: under 1%")),
                caption="One line per cell and length; a line ends where its job stopped, solved.",
            ),
            Figure(
                "error_curve",
                "Copy memory: evaluation cross-entropy while training",
                x_label="training step",
                y_label="cross-entropy on the evaluation set",
                log_y=True,
                variants=("copy:*",),
                caption="The memoryless baseline is 10 ln 8 / (T + 20): it differs per length, so the verdict table carries it.",
            ),
        ),
    )
)
