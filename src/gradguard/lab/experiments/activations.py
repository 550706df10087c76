"""activations: f and f' of six activations, the largest derivative of each, and where each saturates.

An error signal crossing a layer is multiplied by diag(f'(a)), so max |f'| bounds how much of it
can get through: Pascanu et al.'s gamma. Each job evaluates one activation and its derivative
(by autograd) on a fine grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gradguard.lab.models import ACTIVATIONS
from gradguard.lab.registry import Context, Experiment, Figure, Verdict, register

CLAIM = "The sigmoid's derivative never exceeds 1/4 and tanh's never exceeds 1, so a sigmoid layer shrinks the back-propagated error at least 4x; both saturate (f' ~ 0) for large |x|, ReLU for every x < 0."
ANCHOR = "Pascanu et al. 2013, section 2.1: ||diag(f'(x))|| <= gamma with gamma = 1/4 for sigmoid, 1 for tanh"


@dataclass
class Config:
    x_max: float = 8.0  # the grid covers [-x_max, x_max]; tanh' is 4.5e-7 at 8, so nothing is missed
    points: int = 16001  # grid points; the maximum of f' is read off the grid (spacing 1e-3)
    saturated_below: float = 0.01  # f'(x) below this passes less than 1% of the error: "saturated"
    curve_points: int = 161  # samples of f and f' kept in the result (for plots)


QUICK = Config()
FULL = Config(x_max=20.0, points=400001)
SMOKE = Config(points=801, curve_points=21)


def variants(cfg: Config) -> list[str]:
    return list(ACTIVATIONS)


def saturation_edge(x: torch.Tensor, d: torch.Tensor, limit: float, side: str) -> float | None:
    """The |x| beyond which f' stays below ``limit`` on one side (None: never saturates there)."""
    mask = x > 0 if side == "right" else x < 0
    xs, ds = x[mask], d[mask].abs()
    if side == "left":
        xs, ds = xs.flip(0), ds.flip(0)  # walk outward from 0 in both cases
    above = (ds >= limit).nonzero()
    if len(above) == 0:
        return 0.0  # saturated on the whole side (ReLU for x < 0)
    last = int(above[-1])
    if last == len(xs) - 1:
        return None  # still above the limit at the edge of the grid
    return float(xs[last + 1].abs())


def run(cfg: Config, variant: str, seed: int, ctx: Context) -> dict:
    # 1) f and f' on the grid, in float64, by autograd
    x = torch.linspace(-cfg.x_max, cfg.x_max, cfg.points, dtype=torch.float64, requires_grad=True)
    f = ACTIVATIONS[variant]()(x)
    (d,) = torch.autograd.grad(f.sum(), x)
    x, f = x.detach(), f.detach()
    # 2) the largest derivative (gamma) and where it sits
    i = int(d.abs().argmax())
    # 3) keep a coarse copy of the curves for plots
    keep = torch.linspace(0, cfg.points - 1, cfg.curve_points).round().long()
    return {
        "max_derivative": float(d.abs().max()),
        "argmax_x": float(x[i]),
        "saturates_left_beyond": saturation_edge(x, d, cfg.saturated_below, "left"),
        "saturates_right_beyond": saturation_edge(x, d, cfg.saturated_below, "right"),
        "curve": {"x": x[keep].tolist(), "f": f[keep].tolist(), "df": d[keep].tolist()},
    }


def judge(cfg: Config, jobs: list[dict]) -> Verdict:
    m = {j["variant"]: j["metrics"] for j in jobs if j["seed"] == 0}
    sig, tanh, relu = m["sigmoid"], m["tanh"], m["relu"]
    passed = (
        abs(sig["max_derivative"] - 0.25) < 1e-6
        and abs(tanh["max_derivative"] - 1.0) < 1e-6
        and relu["saturates_left_beyond"] == 0.0
        and sig["saturates_left_beyond"] is not None
        and tanh["saturates_left_beyond"] is not None
    )
    measured = {name: round(v["max_derivative"], 4) for name, v in m.items()}
    edges = ", ".join(f"{n} |x| > {v['saturates_right_beyond'] or v['saturates_left_beyond']:.2f}" for n, v in m.items() if n in ("sigmoid", "tanh"))
    headline = f"max f': sigmoid {measured['sigmoid']:g}, tanh {measured['tanh']:g}, ReLU {measured['relu']:g}, GELU {measured['gelu']:.3f}"
    return Verdict(
        passed,
        "max f' of sigmoid = 0.25 and of tanh = 1 (within 1e-6); sigmoid and tanh saturate on both sides; ReLU' = 0 for all x < 0",
        f"max f': sigmoid {measured['sigmoid']}, tanh {measured['tanh']}, GELU {measured['gelu']}; saturated (f' < {cfg.saturated_below}): {edges}",
        {"max_derivative": measured, "saturation": {n: [None if e is None else round(e, 3) for e in (v["saturates_left_beyond"], v["saturates_right_beyond"])] for n, v in m.items()}},
        headline=headline,
    )


EXPERIMENT = register(
    Experiment(
        name="activations",
        claim=CLAIM,
        anchor=ANCHOR,
        config=Config,
        presets={"quick": QUICK, "full": FULL, "smoke": SMOKE},
        variants=variants,
        run=run,
        judge=judge,
        quick_seconds=2.0,
        short_anchor="Pascanu 2013 sec. 2.1: gamma = 1/4 (sigmoid), 1 (tanh)",
        seeds={"quick": 1, "full": 1, "smoke": 1},
        parallel=False,
        figures=(
            Figure("curve.f", "The activations f(x)", x="curve.x", x_label="x", y_label="f(x)"),
            Figure(
                "curve.df",
                "Their derivatives f'(x)",
                x="curve.x",
                x_label="x",
                y_label="f'(x)",
                hlines=((0.25, "1/4: the sigmoid's largest f'"), (1.0, "1: tanh's largest f'")),
                caption="f' multiplies the error signal at every layer: where it is near 0 (large |x| for sigmoid and tanh, x < 0 for ReLU) "
                "the unit is saturated and passes almost nothing back.",
            ),
        ),
    )
)
