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


@pytest.mark.slow  # a training run of seconds: make test, not make test-fast
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


# ---------------------------------------------------------------------- lab figures
from gradguard.report.data import Curve  # noqa: E402


def _texts(svg):
    import html

    return {html.unescape(t) for t in re.findall(r"<!-- (.*?) -->", svg)}  # each text of the figure, as a comment


def lab_curves():
    k = np.arange(20.0)
    return [
        Curve("tanh-s0.5", k, 0.4**k, low=0.3**k, high=0.5**k, group=0, seeds=2),
        Curve("tanh-s0.5: bound", k, 0.5**k, reference=True, group=0),
        Curve("tanh-s3", k, 2.0**k, group=1),
        Curve("tanh-s3: bound", k, 3.0**k, reference=True, group=1),
        Curve("lstm", k, np.r_[0.7 ** k[:12], [np.nan] * 8], group=2),  # stops being finite at k = 11
    ]


def test_lab_figure_draws_lines_references_levels_and_labels():
    svg = plots.lab_figure(lab_curves(), title="Ratio k steps back", x_label="k", y_label="ratio", log_y=True, hlines=[(1.0, "level")], reference_label="bound s^k")
    assert svg.startswith("<svg") and "<script" not in svg
    expected = {"Ratio k steps back", "k", "ratio", "tanh-s0.5", "tanh-s3", "lstm (finite to x = 11)", "bound s^k", "last finite value", "level"}
    assert expected <= _texts(svg), expected - _texts(svg)
    assert "value \u2264 0 (off the log axis)" not in _texts(svg)


def test_lab_figure_marks_values_off_the_log_axis_and_empty_lines():
    x = np.arange(4.0)
    curves = [Curve("a", x, np.array([1.0, 0.1, 0.0, 0.01])), Curve("b", x, np.full(4, np.nan), group=1)]
    texts = _texts(plots.lab_figure(curves, log_y=True))
    assert {"value \u2264 0 (off the log axis)", "b (no value > 0)"} <= texts
    assert "a (finite to x = 3)" not in texts and "last finite value" not in texts  # 0 is finite: the line does not end


def test_lab_figure_without_data_is_none_and_log_falls_back_to_linear():
    x = np.arange(3.0)
    assert plots.lab_figure([]) is None
    assert plots.lab_figure([Curve("a", x, np.full(3, np.nan))], log_y=True) is None
    assert plots.lab_figure([Curve("ref only", x, np.ones(3), reference=True)]) is None  # a bound alone tells nothing
    svg = plots.lab_figure([Curve("a", x, np.array([-1.0, 0.0, 2.0]))], log_y=True)  # nothing > 0 but 2: still log
    assert "a" in _texts(svg)
    svg = plots.lab_figure([Curve("neg", x, np.array([-1.0, -2.0, -3.0]))], log_y=True, y_label="f")
    assert svg is not None and "f" in _texts(svg) and "neg" in _texts(svg)  # drawn on a linear axis


def test_references_shared_by_every_variant_are_drawn_once_in_grey():
    x = np.arange(3.0)
    same = [Curve(f"v{i}: init", x, np.array([1.0, 0.5, 0.25]), reference=True, group=i) for i in range(3)]
    own = Curve("v3: init", x, np.array([1.0, 0.9, 0.8]), reference=True, group=3)
    kept = plots._distinct_references([*same, own], plots._finite)
    assert [(c.label, color) for c, _, color in kept] == [("v0: init", "#6b7280"), ("v3: init", plots.CYCLE[3])]


@pytest.mark.slow  # a training run of seconds: make test, not make test-fast
def test_a_lab_figure_gives_the_same_bytes_for_the_same_data():
    kwargs = {"title": "t", "x_label": "k", "log_y": True, "hlines": [(1.0, "level")], "reference_label": "bound"}
    first = plots.lab_figure(lab_curves(), **kwargs)
    assert first == plots.lab_figure(lab_curves(), **kwargs)
    changed = lab_curves()
    changed[0].y = changed[0].y * 1.5
    assert plots.lab_figure(changed, **kwargs) != first
