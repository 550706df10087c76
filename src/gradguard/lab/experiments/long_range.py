"""long-range: which cells learn dependencies T steps long, on the adding, copy and temporal-order tasks.

Each job trains one cell on one task at one length and stops early once it is solved: error at
most a tenth of the task's memoryless baseline (under 1% misclassified for temporal order),
checked every ``eval_every`` steps on a fixed set and confirmed at the end on fresh sequences.
Cells: a tanh RNN without clipping, with global-norm clipping, and with clipping plus Pascanu's
Omega; an IRNN (clipped); an LSTM and a GRU (clipped, as the uRNN paper trains them). The tanh
RNN is torch's fused ``nn.RNN``: the recurrence of ``gg.rnn.SimpleRNN``, several times faster.

The quick preset runs T = 50 only, with Adam at a high rate to fit in a minute; the literature
numbers are for T = 100-400 and 10^4-10^6 updates (the full preset, for a GPU or a long run).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

import gradguard as gg
from gradguard.lab.models import SeqModel
from gradguard.lab.registry import Context, Experiment, Figure, Verdict, register
from gradguard.lab.tasks import make_task
from gradguard.lab.train import evaluate, history_summary, make_optimizer

CLAIM = (
    "On the adding problem LSTM and GRU reach a tenth of the baseline error where a clipped tanh RNN stays at the "
    "baseline; copy and temporal order are reported against the literature."
)
ANCHOR = (
    "Arjovsky et al. 2016 (uRNN) 4.2: LSTM beats the adding baseline up to T = 400, tanh RNN and IRNN never; copy: LSTM "
    "stuck at the memoryless baseline for T >= 200; Pascanu et al. 2013 Fig. 7: tanh RNN + clipping + Omega solves "
    "temporal order up to T = 200"
)

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
    tasks: tuple = ("adding", "temporal-order")
    lengths: tuple = (50,)
    models: tuple = ("rnn-clip", "lstm", "gru")
    hidden: int = 64
    steps: int = 1000  # at most; a job stops once solved
    batch: int = 64
    optimizer: str = "adam"
    lr: float = 0.01  # high, to fit the quick budget; the uRNN paper uses RMSProp at 1e-3
    clip: float = 1.0  # global-norm threshold (uRNN: "LSTM and RNN needed gradient clipping at 1")
    omega: float = 2.0  # Pascanu's alpha
    eval_every: int = 100
    eval_size: int = 500
    test_size: int = 1000
    paper_steps: int = 20_000  # the uRNN reproduction's iterations: below this a failure is scale-limited


QUICK = Config()
FULL = Config(
    tasks=("adding", "copy", "temporal-order"),
    lengths=(50, 100, 200, 400),
    models=tuple(MODELS),
    hidden=128,
    steps=20_000,
    batch=20,
    optimizer="rmsprop",
    lr=1e-3,
    eval_every=500,
)
SMOKE = Config(tasks=("adding",), lengths=(10,), models=("rnn-clip", "lstm"), hidden=8, steps=20, eval_every=10, eval_size=50, test_size=50)


def variants(cfg: Config) -> list[str]:
    return [f"{task}:T{length}:{model}" for task in cfg.tasks for length in cfg.lengths for model in cfg.models]


def run(cfg: Config, variant: str, seed: int, ctx: Context) -> dict:
    task_name, length, model_name = variant.split(":")
    cell, clipped, use_omega = MODELS[model_name]
    task = make_task(task_name, length=int(length[1:]))
    x_eval, y_eval = task.batch(cfg.eval_size, torch.Generator().manual_seed(2_000_000 + seed))
    torch.manual_seed(seed)
    model = SeqModel(cell, task.input_size, task.output_size, cfg.hidden, readout="all" if task.per_step else "last").to(ctx.device)
    opt = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr)
    guard = gg.Guard(model, clip=cfg.clip if clipped else None, nonfinite="skip", max_consecutive_skips=cfg.steps, log_every=50, store=ctx.store_path(variant), name=f"long-range {variant}")
    omega = gg.rnn.NormPreservingPenalty(model.rnn, weight=cfg.omega) if use_omega else None
    gen = torch.Generator().manual_seed(seed)
    solved_at, curve = None, []
    for step in range(1, cfg.steps + 1):
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
            if task.solved(error):
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
        "solved": task.solved(test["error"]),
        "solved_at_step": solved_at,
        "error_curve": curve,
        **history_summary(guard.history),
    }


def judge(cfg: Config, jobs: list[dict]) -> Verdict:
    def solved_share(variant: str) -> float:
        values = [float(j["metrics"]["solved"]) for j in jobs if j["variant"] == variant]
        return sum(values) / len(values)

    share = {v: solved_share(v) for v in variants(cfg)}
    error = {v: statistics.median(j["metrics"]["test_error"] for j in jobs if j["variant"] == v) for v in variants(cfg)}
    # the adding problem at every length: gated cells solve it, the clipped tanh RNN does not
    checks = []
    adding_lengths = cfg.lengths if "adding" in cfg.tasks else ()
    for length in adding_lengths:
        checks += [share[f"adding:T{length}:{cell}"] >= 0.5 for cell in ("lstm", "gru") if cell in cfg.models]
        if "rnn-clip" in cfg.models:
            checks.append(share[f"adding:T{length}:rnn-clip"] < 0.5)
    passed = bool(checks) and all(checks)
    table = "; ".join(f"{v} {'solved' if share[v] >= 0.5 else 'not solved'} (error {error[v]:.3g})" for v in share)
    return Verdict(
        passed,
        "adding problem, at every length run: LSTM and GRU solve it (MSE < 1/60, a tenth of predicting 1) in at least half the seeds, the clipped tanh RNN in fewer than half",
        table,
        {"solved_share": share, "median_test_error": error},
        scale_limited=cfg.steps < cfg.paper_steps,
        headline="solved: " + (", ".join(v for v in share if share[v] >= 0.5) or "none") + "; not: " + (", ".join(v for v in share if share[v] < 0.5) or "none"),
    )


EXPERIMENT = register(
    Experiment(
        name="long-range",
        claim=CLAIM,
        anchor=ANCHOR,
        config=Config,
        presets={"quick": QUICK, "full": FULL, "smoke": SMOKE},
        variants=variants,
        run=run,
        judge=judge,
        quick_seconds=25.0,
        short_anchor="uRNN 2016 sec. 4.2: LSTM solves adding to T=400, tanh RNN never; Pascanu 2013 Fig. 7",
        seeds={"quick": 1, "full": 3, "smoke": 1},
        figures=(
            Figure(
                "error_curve",
                "Adding problem: evaluation MSE while training",
                x_label="training step",
                y_label="MSE on the evaluation set",
                log_y=True,
                variants=("adding:*",),
                hlines=((1 / 6, "baseline: predict 1"), (1 / 60, "solved: a tenth of it")),
                caption="One line per cell and length; a line ends where its job stopped, solved. Below the lower dotted line is solved.",
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
