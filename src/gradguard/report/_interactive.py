"""Interactive figures for the HTML report, drawn with Bokeh: zoom and pan on the step axis, values
on hover, series shown and hidden from the legend.

Each function takes the same data as its static twin in ``plots`` and returns a Bokeh model (or
None when there is nothing to draw); ``embed`` turns the models of one page into the BokehJS
library, inlined, plus one script that builds them, so the page still opens offline.

Why Bokeh: its core script (``bokeh.min.js``, about 1.3 MB) is a quarter of plotly.js's full
bundle (4.8 MB, the only one the plotly package ships), and a report is often mailed or kept as a
CI artifact. Long runs are thinned with ``plots._bin_max`` (each bin's maximum), so a one-step spike
stays visible, and at most ``MAX_POINTS`` points per line travel in the file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from gradguard._extras import require
from gradguard.report.plots import (
    COLORS,
    CYCLE,
    _bin_max,
    _edges,
    _has_positive,
    _positive,
    flow_series,
)
from gradguard.report.plots import (
    _cut as _short,  # Bokeh draws "$" as is: no mathtext escaping
)

MAX_POINTS = 1500
HEATMAP_COLUMNS = 600  # columns of a heatmap image (steps are resampled onto a uniform grid)
HEIGHT = 300
STEP_TOOLS = "xpan,xwheel_zoom,xbox_zoom,reset,save"  # zoom acts on the step axis only


def _bokeh():
    return require("bokeh", "the interactive report")


def _step_figure(name: str, y_label: str, log_y: bool = True, height: int = HEIGHT, x_range=None, y_range=None):
    _bokeh()
    from bokeh.plotting import figure

    kwargs = {k: v for k, v in (("x_range", x_range), ("y_range", y_range)) if v is not None}
    p = figure(
        name=name,
        height=height,
        sizing_mode="stretch_width",
        y_axis_type="log" if log_y else ("auto" if y_range is not None else "linear"),  # "auto": categorical for a list of names
        tools=STEP_TOOLS,
        active_scroll="xwheel_zoom",
        active_drag="xpan",
        x_axis_label="training step",
        y_axis_label=y_label,
        **kwargs,
    )
    _style(p)
    return p


def _style(p) -> None:
    p.toolbar.logo = None  # the logo is a link to bokeh.org: nothing on the page points outside
    p.toolbar.autohide = True
    p.grid.grid_line_color = "#e5e7eb"
    p.outline_line_color = None
    p.axis.axis_line_color = "#9ca3af"
    p.axis.major_label_text_color = "#374151"
    p.axis.axis_label_text_font_style = "normal"
    p.min_border_left = 60


def _legend(p, outside: bool = False) -> None:
    if not p.legend:
        return
    legend = p.legend[0]
    legend.click_policy = "hide"  # a click on an entry shows or hides its series
    legend.label_text_font_size = "8pt"
    legend.background_fill_alpha = 0.8
    if outside:
        p.add_layout(legend, "right")
    else:
        legend.location = "top_left"


def _hover(p, renderers, y_label: str, x_label: str = "step", x_fmt: str = "{0}") -> None:
    from bokeh.models import HoverTool

    p.add_tools(HoverTool(renderers=list(renderers), tooltips=[("series", "$name"), (x_label, "@x" + x_fmt), (y_label, "@y{0.000e}")], mode="mouse"))


def _source(x, y):
    from bokeh.models import ColumnDataSource

    return ColumnDataSource({"x": np.asarray(x, dtype=np.float64), "y": np.asarray(y, dtype=np.float64)})


def _plain(text: str):
    """A label drawn as written: Bokeh would typeset ``$$...$$`` in an axis or tick label with
    MathJax, fetched from a CDN; a module name must never make the page go online."""
    from bokeh.models import PlainText

    return PlainText(text=text)


def _finite_or_nan(values) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(a), a, np.nan)


# ---------------------------------------------------------------------- gradient flow
def gradient_flow(modules: Sequence[str], grad_norm=None, error_norm=None, grad_step=None, error_step=None):
    """Norm per module, input side left, log axis (see ``plots.gradient_flow``)."""
    series = flow_series(grad_norm, error_norm, grad_step, error_step, markers=("circle", "square"))
    if not series or not modules:
        return None
    _bokeh()
    from bokeh.models import ColumnDataSource, HoverTool
    from bokeh.plotting import figure

    p = figure(name="gradient-flow", height=HEIGHT + 40, sizing_mode="stretch_width", y_axis_type="log", tools="pan,wheel_zoom,box_zoom,reset,save", active_scroll="wheel_zoom",
               x_axis_label="module (input side \u2192 output side)", y_axis_label="norm (log scale)")
    _style(p)
    x = np.arange(len(modules), dtype=np.float64)
    drawn = []
    for label, values, color, marker in series:
        src = ColumnDataSource({"x": x, "y": values, "module": list(modules)})
        drawn.append(p.line("x", "y", source=src, color=color, line_width=1.5, legend_label=label, name=label))
        drawn.append(p.scatter("x", "y", source=src, color=color, size=6, marker=marker, legend_label=label, name=label))
    p.add_tools(HoverTool(renderers=drawn, tooltips=[("series", "$name"), ("module", "@module"), ("norm", "@y{0.000e}")]))
    stride = max(1, int(np.ceil(len(modules) / 40)))
    p.xaxis.ticker = list(range(0, len(modules), stride))
    p.xaxis.major_label_overrides = {i: _plain(_short(modules[i])) for i in range(0, len(modules), stride)}
    if len(modules) > 6:
        p.xaxis.major_label_orientation = 1.0
    _legend(p)
    return p


def norm_heatmap(steps, modules: Sequence[str], values, label: str = "log10 gradient norm"):
    """Training step x module heatmap of log10(norm) (see ``plots.norm_heatmap``)."""
    values = _positive(values)
    steps = np.asarray(steps)
    if values.ndim != 2 or values.shape[0] < 2 or not np.isfinite(values).any():
        return None
    image, x0, width = _uniform_columns(steps, values)
    names = [_unique(m, i) for i, m in enumerate(modules)]
    p = _step_figure("gradient-heatmap", "", log_y=False, height=min(120 + 16 * len(modules), 520), y_range=list(reversed(names)))  # input side on top
    return _heatmap(p, np.log10(image), x0, width, len(modules), label, "module", names)


def _unique(name: str, i: int) -> str:
    return name if name else f"#{i}"


def _uniform_columns(steps: np.ndarray, values: np.ndarray):
    """Rows = rows of ``values`` resampled onto at most HEATMAP_COLUMNS equal columns over the
    steps' cells (``plots._edges``), each column the maximum of the measured steps in it, or the
    cell it falls in; so irregular probe steps keep their true width."""
    x, cols = _bin_max(steps, list(values.T), limit=HEATMAP_COLUMNS)
    grid = np.array(cols)  # rows x binned steps
    edges = _edges(x)
    n = min(HEATMAP_COLUMNS, max(len(x) * 4, 2))
    centers = edges[0] + (np.arange(n) + 0.5) * (edges[-1] - edges[0]) / n
    cell = np.clip(np.searchsorted(edges, centers, side="right") - 1, 0, len(x) - 1)
    return grid[:, cell], float(edges[0]), float(edges[-1] - edges[0])


def _heatmap(p, log_grid: np.ndarray, x0: float, width: float, rows: int, label: str, row_label: str, row_names=None):
    from bokeh.models import ColorBar, HoverTool, LinearColorMapper

    finite = log_grid[np.isfinite(log_grid)]
    mapper = LinearColorMapper(palette="Viridis256", low=float(finite.min()), high=float(finite.max()) if finite.max() > finite.min() else float(finite.min()) + 1, nan_color="rgba(0,0,0,0)")
    if row_names is not None:
        # a categorical y axis: draw each row as its own image strip at its factor
        from bokeh.models import ColumnDataSource

        src = ColumnDataSource({"image": [log_grid[i : i + 1] for i in range(rows)], "y": list(row_names), "name": list(row_names)})
        r = p.image(image="image", x=x0, y="y", dw=width, dh=1.0, source=src, color_mapper=mapper, anchor="center_left")
        p.add_tools(HoverTool(renderers=[r], tooltips=[(row_label, "@name"), ("step", "$x{0}"), (label, "@image{0.00}")]))
    else:
        r = p.image(image=[log_grid], x=x0, y=0.5, dw=width, dh=float(rows), color_mapper=mapper)
        p.add_tools(HoverTool(renderers=[r], tooltips=[("step", "$x{0}"), (row_label, "$y{0}"), (label, "@image{0.00}")]))
    p.add_layout(ColorBar(color_mapper=mapper, title=label, width=10), "right")
    p.grid.visible = False
    p.x_range.range_padding = 0
    return p


# ---------------------------------------------------------------------- total-norm timeline
def norm_timeline(steps, norm_before, norm_after=None, threshold=None, skipped=None, loss=None):
    """Total norm before/after clipping, the threshold, skipped steps, and the loss below, with
    one shared step axis (see ``plots.norm_timeline``)."""
    steps = np.asarray(steps)
    if not len(steps) or not (_has_positive(norm_before) or (skipped is not None and np.any(skipped))):
        return None
    _bokeh()
    from bokeh.layouts import column

    named = {"before": norm_before, "after": norm_after, "threshold": threshold}
    columns = {k: _positive(v) for k, v in named.items() if v is not None and _has_positive(v)}
    x, binned = _bin_max(steps, list(columns.values()), limit=MAX_POINTS)
    binned = dict(zip(columns, binned))
    p = _step_figure("timeline", "total gradient norm", log_y=bool(binned))
    drawn = []
    if "before" in binned:
        drawn.append(p.line("x", "y", source=_source(x, binned["before"]), color=COLORS["before"], line_width=1.2, legend_label="norm before clipping", name="norm before clipping"))
    if "after" in binned and not np.allclose(np.nan_to_num(binned["after"]), np.nan_to_num(binned.get("before", 0))):
        drawn.append(p.line("x", "y", source=_source(x, binned["after"]), color=COLORS["after"], line_width=1.2, legend_label="norm after clipping", name="norm after clipping"))
    if "threshold" in binned:
        drawn.append(p.line("x", "y", source=_source(x, binned["threshold"]), color=COLORS["threshold"], line_width=1.0, line_dash="dashed", legend_label="clipping threshold", name="clipping threshold"))
    if skipped is not None and np.any(skipped):
        skip_steps = steps[np.asarray(skipped, dtype=bool)]
        top = max((np.nanmax(v) for v in binned.values() if np.isfinite(v).any()), default=1.0) * 1.4
        label = f"skipped step ({len(skip_steps)})"
        drawn.append(p.scatter("x", "y", source=_source(skip_steps, np.full(len(skip_steps), top)), marker="inverted_triangle", size=9, color=COLORS["skip"], legend_label=label, name=label))
    _hover(p, drawn, "norm")
    _legend(p)
    has_loss = loss is not None and np.isfinite(np.asarray(loss, dtype=np.float64)).any()
    if not has_loss:
        return p
    lx, (lv,) = _bin_max(steps, [_finite_or_nan(loss)], limit=MAX_POINTS)
    finite = lv[np.isfinite(lv)]
    log_loss = bool(finite.size and finite.min() > 0 and finite.max() / finite.min() > 100)
    q = _step_figure("loss", "loss", log_y=log_loss, height=170, x_range=p.x_range)
    r = q.line("x", "y", source=_source(lx, lv), color="#374151", line_width=1.0, name="loss")
    _hover(q, [r], "loss")
    p.xaxis.axis_label = None
    return column(p, q, sizing_mode="stretch_width", name="timeline-with-loss")


def overlaid_timelines(runs: Mapping[str, tuple[Sequence[int], Sequence[float]]], name: str = "comparison", y_label: str = "total gradient norm before clipping", log_y: bool = True):
    """One series per run on a shared step axis; the legend names the runs and toggles them."""
    clean = _positive if log_y else _finite_or_nan
    drawable = {label: (np.asarray(s), clean(v)) for label, (s, v) in runs.items() if len(s) and np.isfinite(clean(v)).any()}
    if len(drawable) < 2:
        return None
    p = _step_figure(name, y_label, log_y=log_y)
    drawn = []
    for i, (label, (steps, values)) in enumerate(drawable.items()):
        x, (v,) = _bin_max(steps, [values], limit=MAX_POINTS)
        drawn.append(p.line("x", "y", source=_source(x, v), color=CYCLE[i % len(CYCLE)], line_width=1.2, legend_label=_short(label, 40), name=label))
    _hover(p, drawn, "value")
    _legend(p)
    return p


# ---------------------------------------------------------------------- recurrent runs
def timestep_heatmap(steps, values, module: str = ""):
    """‖dL/dh_t‖ over time step and training step, and its profile at the latest step."""
    values = _positive(values)
    steps = np.asarray(steps)
    if values.ndim != 2 or not values.size or not np.isfinite(values).any():
        return None
    _bokeh()
    from bokeh.layouts import row
    from bokeh.plotting import figure

    T = values.shape[1]
    parts = []
    if len(steps) >= 2:
        image, x0, width = _uniform_columns(steps, values)
        p = _step_figure("timestep-heatmap", "time step t", log_y=False, height=HEIGHT)
        parts.append(_heatmap(p, np.log10(image), x0, width, T, "log10 ‖dL/dh_t‖", "time step t"))
    rows = np.flatnonzero(np.isfinite(values).any(axis=1))
    last = rows[-1]
    prof = figure(name="timestep-profile", height=HEIGHT, width=320, y_axis_type="log", tools="pan,wheel_zoom,box_zoom,reset,save", active_scroll="wheel_zoom",
                  x_axis_label="time step t", y_axis_label="‖dL/dh_t‖", title=f"at step {int(steps[last])}")
    _style(prof)
    r = prof.line("x", "y", source=_source(np.arange(1, T + 1), values[last]), color=COLORS["error"], line_width=1.4, name=_short(module, 40) or "profile")
    _hover(prof, [r], "‖dL/dh_t‖", x_label="t")
    parts.append(prof)
    return row(*parts, sizing_mode="stretch_width", name="timesteps") if len(parts) > 1 else prof


# ---------------------------------------------------------------------- units
def unit_bars(modules: Sequence[str], saturation=None, dead_fraction=None):
    """Share of saturated and of dead units per module, horizontal bars in percent."""
    panels = []
    if saturation is not None and np.isfinite(np.asarray(saturation, dtype=np.float64)).any():
        panels.append(("saturated units (%)", np.asarray(saturation, dtype=np.float64), COLORS["saturation"]))
    if dead_fraction is not None and np.isfinite(np.asarray(dead_fraction, dtype=np.float64)).any():
        panels.append(("dead units (%)", np.asarray(dead_fraction, dtype=np.float64), COLORS["dead"]))
    if not panels or not modules:
        return None
    _bokeh()
    from bokeh.layouts import row
    from bokeh.models import ColumnDataSource, HoverTool
    from bokeh.plotting import figure

    keep = np.zeros(len(modules), dtype=bool)
    for _, values, _ in panels:
        keep |= np.isfinite(values)
    names = [_unique(m, i) for i, (m, k) in enumerate(zip(modules, keep)) if k]
    figs = []
    for label, values, color in panels:
        p = figure(name="units", height=min(80 + 22 * len(names), 640), sizing_mode="stretch_width", y_range=list(reversed(names)), x_range=(0, 100),
                   tools="ypan,ywheel_zoom,reset,save", x_axis_label=label, y_axis_label=None if figs else "module")
        _style(p)
        src = ColumnDataSource({"module": names, "value": np.nan_to_num(100.0 * values[keep])})
        r = p.hbar(y="module", right="value", height=0.7, source=src, color=color)
        p.add_tools(HoverTool(renderers=[r], tooltips=[("module", "@module"), (label, "@value{0.0}")]))
        if figs:
            p.y_range = figs[0].y_range
            p.yaxis.visible = False
        figs.append(p)
    return row(*figs, sizing_mode="stretch_width", name="units-panels") if len(figs) > 1 else figs[0]


def update_ratio(steps, modules: Sequence[str], values, reference: float = 1e-3):
    """‖update‖ / ‖weight‖ per module over training, with the 1e-3 rule of thumb dashed
    (see ``plots.update_ratio``); one legend entry per module, hidden and shown by a click."""
    values = _positive(values)
    steps = np.asarray(steps)
    if values.ndim != 2 or not np.isfinite(values).any():
        return None
    from bokeh.models import Span

    p = _step_figure("update-ratio", "‖update‖ / ‖weight‖")
    drawn = []
    shown = [j for j in range(values.shape[1]) if np.isfinite(values[:, j]).any()]
    for i, j in enumerate(shown):
        x, (v,) = _bin_max(steps, [values[:, j]], limit=MAX_POINTS)
        color = CYCLE[i % len(CYCLE)]
        label = _short(modules[j], 28)
        drawn.append(p.line("x", "y", source=_source(x, v), color=color, line_width=1.2, legend_label=label, name=modules[j]))
        drawn.append(p.scatter("x", "y", source=_source(x, v), color=color, size=4, legend_label=label, name=modules[j]))
    p.add_layout(Span(location=reference, dimension="width", line_dash="dashed", line_color=COLORS["threshold"], line_width=1))
    _hover(p, drawn, "ratio")
    _legend(p, outside=True)
    return p


# ---------------------------------------------------------------------- page
def embed(models: Sequence) -> tuple[str, str, list[str]]:
    """(library script, figures script, one ``<div>`` per model) for a page: BokehJS inlined,
    so the page needs no network. One document holds every model of the page."""
    _bokeh()
    from bokeh.embed import components
    from bokeh.resources import Resources

    library = Resources(mode="inline", components=["bokeh"]).render_js()
    script, divs = components(list(models))
    return library, script, list(divs)


def version() -> str:
    return _bokeh().__version__
