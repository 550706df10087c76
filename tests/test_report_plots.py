"""Plot functions: SVG when there is data, None when there is not, spikes kept when long runs shrink."""

from __future__ import annotations

import re

import numpy as np
import pytest

pytest.importorskip("matplotlib")
from gradguard.report import plots  # noqa: E402

NAN = np.full(4, np.nan)


def test_bin_max_keeps_a_one_step_spike_and_empty_bins():
    x = np.arange(10_000)
    y = np.ones(10_000)
    y[7_777] = 1e6
    y[:20] = np.nan
    xs, (ys,) = plots._bin_max(x, [y], limit=500)
    assert len(xs) == len(ys) == 500 and np.nanmax(ys) == 1e6
    assert np.isnan(ys[0]) and ys[1] == 1.0  # bin 0 (steps 0-19) had nothing finite
    xs, (ys,) = plots._bin_max(x[:100], [y[:100]], limit=500)
    assert len(xs) == 100  # short series are drawn as they are


def test_bin_max_matches_a_loop():
    rng = np.random.default_rng(0)
    y = rng.lognormal(size=3001)
    y[rng.random(3001) < 0.1] = np.nan
    xs, (ys,) = plots._bin_max(np.arange(3001), [y], limit=700)
    edges = np.linspace(0, 3001, 701).astype(int)
    for i in range(700):
        part = y[edges[i] : edges[i + 1]]
        part = part[np.isfinite(part)]
        assert (ys[i] == part.max()) if len(part) else np.isnan(ys[i])


@pytest.mark.parametrize(
    "call",
    [
        lambda: plots.gradient_flow(["a", "b", "c", "d"], NAN, None),
        lambda: plots.gradient_flow([], None, None),
        lambda: plots.norm_heatmap([1], ["a"], [[1.0]]),  # one step: nothing to show over training
        lambda: plots.norm_timeline([], []),
        lambda: plots.norm_timeline([1, 2, 3, 4], NAN),
        lambda: plots.overlaid_timelines({"only": ([1, 2], [1.0, 2.0])}),
        lambda: plots.timestep_heatmap([1], np.full((1, 5), np.nan)),
        lambda: plots.unit_bars(["a", "b", "c", "d"], NAN, NAN),
        lambda: plots.update_ratio([1, 2, 3, 4], ["a"], NAN[:, None]),
    ],
)
def test_missing_data_gives_none(call):
    assert call() is None


def test_each_plot_draws_svg_with_labelled_axes():
    steps = np.arange(1, 51)
    norms = np.exp(np.sin(steps / 5.0))
    svgs = {
        "flow": plots.gradient_flow(["a", "b", "c"], [1e-3, 1e-2, 1.0], [1e-4, np.nan, 0.5], 50, 41),
        "heat": plots.norm_heatmap(steps, ["a", "b"], np.stack([norms, 2 * norms], 1)),
        "timeline": plots.norm_timeline(steps, norms, np.minimum(norms, 1.5), np.full(50, 1.5), steps % 17 == 0, 1.0 / steps),
        "skips only": plots.norm_timeline(steps[:3], [np.nan] * 3, skipped=[True] * 3),
        "overlay": plots.overlaid_timelines({"a": (steps, norms), "b": (steps, 2 * norms)}),
        "timesteps": plots.timestep_heatmap([1, 11], np.array([0.9 ** np.arange(20)[::-1]] * 2), "rnn"),
        "one step": plots.timestep_heatmap([1], np.array([0.9 ** np.arange(20)[::-1]])),
        "units": plots.unit_bars(["a", "b"], [0.5, np.nan], [0.1, 0.0]),
        "ratio": plots.update_ratio(steps[::10], ["a", "b"], np.full((5, 2), 1e-3)),
        "ratio, many modules": plots.update_ratio(steps[::10], [f"m{i}" for i in range(20)], np.full((5, 20), 1e-3)),
    }
    for name, svg in svgs.items():
        assert svg is not None and svg.startswith("<svg") and svg.rstrip().endswith("</svg>"), name
        assert "<script" not in svg
    labels = {
        "flow": ["norm (log scale)", "module (input side \u2192 output side)", "weight gradient \u2016dL/dW\u2016 (step 50)"],
        "heat": ["training step", "log10 gradient norm"],
        "timeline": ["training step", "total gradient norm", "loss", "clipping threshold", "skipped step (2)"],
        "timesteps": ["time step t", "training step", "log10 \u2016dL/dh_t\u2016", "at step 11"],
        "units": ["saturated units (%)", "dead units (%)"],
        "ratio": ["training step", "\u2016update\u2016 / \u2016weight\u2016"],
    }
    for name, expected in labels.items():
        texts = set(re.findall(r"<!-- (.*?) -->", svgs[name]))  # matplotlib keeps each text as a comment
        assert set(expected) <= texts, (name, set(expected) - texts)


def test_the_same_data_gives_the_same_bytes():
    args = (["a", "b"], [1.0, 2.0], [0.5, 1.0])
    assert plots.gradient_flow(*args) == plots.gradient_flow(*args)
