"""The report's figures: one pure function per plot, data in, SVG text out (None when data is missing).

matplotlib is imported lazily (the ``report`` extra) and used through ``Figure`` objects, never
pyplot, so nothing global changes and no display is needed (the Agg/SVG backends render offline).
Long runs are drawn from at most ``MAX_POINTS`` columns: each column keeps its bin's maximum, so a
one-step spike stays visible however long the run.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np

from gradguard._extras import require

MAX_POINTS = 1500  # columns a timeline or heatmap is drawn from
MAX_LABELS = 40  # module names written on an axis; more are thinned
WIDTH = 9.0  # figure width in inches (at 96 dpi, about the report's column width)

COLORS = {
    "before": "#1f5fbf",
    "after": "#e07b00",
    "threshold": "#444444",
    "skip": "#c0262d",
    "error": "#7b3fb3",
    "grad": "#1f5fbf",
    "saturation": "#e07b00",
    "dead": "#6b7280",
}
CYCLE = ["#1f5fbf", "#e07b00", "#2a9d4b", "#c0262d", "#7b3fb3", "#8c564b", "#d6479c", "#6b7280", "#b5a000", "#17a2b8"]

_STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#e5e7eb",
    "grid.linewidth": 0.6,
    "axes.edgecolor": "#9ca3af",
    "xtick.color": "#374151",
    "ytick.color": "#374151",
    "legend.frameon": False,
    "legend.fontsize": 8,
    "svg.fonttype": "path",  # exact glyphs: the figure looks the same whatever fonts the viewer has
    "svg.hashsalt": "gradguard",  # deterministic ids: the same data gives the same bytes
}


def _figure(height: float, ncols: int = 1, width_ratios: Sequence[float] | None = None, sharex: bool = False, nrows: int = 1, height_ratios=None):
    require("matplotlib", "the report's plots")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=sharex, gridspec_kw={"width_ratios": width_ratios, "height_ratios": height_ratios})
    if ncols > 1:
        fig.get_layout_engine().set(wspace=0.06)  # room between a colorbar's label and the next panel
    return fig, axes


def _svg(fig) -> str:
    from matplotlib.ticker import NullFormatter

    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() == "log":
                axis.set_minor_formatter(NullFormatter())  # unlabelled minor ticks: cleaner, and much faster to lay out
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": "gradguard"})
    text = buf.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog and DOCTYPE


def _styled(fn):
    """Render ``fn`` under the report style, in its own rc context."""

    def wrapper(*args, **kwargs):
        mpl = require("matplotlib", "the report's plots")
        with mpl.rc_context(_STYLE):
            return fn(*args, **kwargs)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    wrapper.__wrapped__ = fn
    return wrapper


def _positive(values) -> np.ndarray:
    """float array with NaN where a value is not finite or not > 0 (it cannot sit on a log axis)."""
    a = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(a) & (a > 0), a, np.nan)


def _has_positive(a) -> bool:
    return bool(np.isfinite(_positive(a)).any())


def _bin_max(x: np.ndarray, columns: list[np.ndarray], limit: int = MAX_POINTS):
    """Shrink to at most ``limit`` points: the first x and the max (NaN-aware) of each bin."""
    if len(x) <= limit:
        return x, columns
    starts = np.linspace(0, len(x), limit + 1).astype(int)[:-1]
    out = []
    for col in columns:
        col = np.asarray(col, dtype=np.float64)
        peak = np.maximum.reduceat(np.where(np.isfinite(col), col, -np.inf), starts)
        out.append(np.where(np.isfinite(peak), peak, np.nan))  # a bin with nothing finite stays empty
    return x[starts], out


def _edges(x: np.ndarray) -> np.ndarray:
    """Cell edges around sorted steps: halfway between neighbours, so irregular probe steps
    (an extra probe after an anomaly) get cells of their true width."""
    x = np.asarray(x, dtype=np.float64)
    mid = (x[1:] + x[:-1]) / 2
    return np.concatenate([[x[0] - (mid[0] - x[0])], mid, [x[-1] + (x[-1] - mid[-1])]])


def _label_log_axis(ax, values) -> None:
    """Tick labels on a log y axis whatever its span: matplotlib labels only powers of ten, so
    norms that stay within one decade (2 to 8, say) would get no label at all. Under one decade:
    plain ticks at round values; under two: 1-2-5 steps; wider: the default powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator

    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite) & (finite > 0)]
    if not finite.size:
        return
    span = finite.max() / finite.min()
    if span < 10:
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
    elif span < 100:
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    else:
        return
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _module_ticks(ax, names: Sequence[str], axis: str = "x") -> None:
    """Write module names on an axis, thinned to at most MAX_LABELS, shortened to 32 characters."""
    n = len(names)
    stride = max(1, math.ceil(n / MAX_LABELS))
    ticks = list(range(0, n, stride))
    labels = [_short(names[i]) for i in ticks]
    if axis == "x":
        slanted = n > 6 and max(len(label) for label in labels) > 3  # short names such as "12" fit upright
        ax.set_xticks(ticks, labels, rotation=60 if slanted else 0, ha="right" if slanted else "center", rotation_mode="anchor", fontsize=8)
    else:
        ax.set_yticks(ticks, labels, fontsize=8)


def _short(name: str, limit: int = 32) -> str:
    """A name as matplotlib should draw it: at most ``limit`` characters, and each "$" escaped,
    since two of them would start mathtext (a module named "$$x$$" fails to parse otherwise)."""
    return _cut(name, limit).replace("$", "\\$")


def _cut(name: str, limit: int = 32) -> str:
    return name if len(name) <= limit else "\u2026" + name[-(limit - 1) :]


# ---------------------------------------------------------------------- gradient flow
def flow_series(grad_norm, error_norm, grad_step, error_step, markers: tuple[str, str]) -> list[tuple[str, np.ndarray, str, str]]:
    """The gradient-flow figure's series, shared by the static and the interactive report:
    (label, values with NaN where not > 0, colour, marker) for the weight gradients and the
    back-propagated errors that have a positive value. ``markers``: the backend's names for
    a circle and a square."""
    series = []
    if grad_norm is not None and _has_positive(grad_norm):
        series.append(("weight gradient ‖dL/dW‖" + (f" (step {grad_step})" if grad_step is not None else ""), _positive(grad_norm), COLORS["grad"], markers[0]))
    if error_norm is not None and _has_positive(error_norm):
        series.append(("back-propagated error ‖dL/dh‖" + (f" (step {error_step})" if error_step is not None else ""), _positive(error_norm), COLORS["error"], markers[1]))
    return series


@_styled
def gradient_flow(
    modules: Sequence[str],
    grad_norm: Sequence[float] | None = None,
    error_norm: Sequence[float] | None = None,
    grad_step: int | None = None,
    error_step: int | None = None,
) -> str | None:
    """Norm per module on a log axis: weight gradients ‖dL/dW‖ and back-propagated errors ‖dL/dh‖.

    Modules run left to right in the order the store lists them (parameter order, input side first),
    so a vanishing gradient reads as a slope down towards the left, an exploding one as a slope up.
    """
    series = flow_series(grad_norm, error_norm, grad_step, error_step, markers=("o", "s"))
    if not series or not modules:
        return None
    fig, axes = _figure(3.6 if len(modules) <= 6 else 4.4)
    ax = axes[0, 0]
    x = np.arange(len(modules))
    for label, values, color, marker in series:
        ax.plot(x, values, marker=marker, markersize=4, linewidth=1.4, color=color, label=label)
    ax.set_yscale("log")
    _label_log_axis(ax, np.concatenate([values for _, values, _, _ in series]))
    ax.set_ylabel("norm (log scale)")
    ax.set_xlabel("module (input side \u2192 output side)")
    ax.set_xlim(-0.5, len(modules) - 0.5)
    _module_ticks(ax, modules)
    ax.legend(loc="best")
    return _svg(fig)


@_styled
def norm_heatmap(steps: Sequence[int], modules: Sequence[str], values, label: str = "log10 gradient norm") -> str | None:
    """Training step x module heatmap of log10(norm); needs at least two measured steps."""
    values = _positive(values)
    steps = np.asarray(steps)
    if values.ndim != 2 or values.shape[0] < 2 or not np.isfinite(values).any():
        return None
    x, cols = _bin_max(steps, list(values.T))
    grid = np.log10(np.array(cols))  # modules x steps
    fig, axes = _figure(min(1.6 + 0.18 * len(modules), 6.0))
    ax = axes[0, 0]
    image = ax.pcolormesh(_edges(x), np.arange(len(modules) + 1) - 0.5, grid, cmap="viridis", rasterized=True)
    ax.invert_yaxis()  # input side on top, as in the tables
    ax.grid(False)
    _module_ticks(ax, modules, axis="y")
    ax.set_xlabel("training step")
    fig.colorbar(image, ax=ax, label=label, pad=0.01)
    return _svg(fig)


# ---------------------------------------------------------------------- total-norm timeline
@_styled
def norm_timeline(steps, norm_before, norm_after=None, threshold=None, skipped=None, loss=None) -> str | None:
    """Total gradient norm before and after clipping, the threshold, skipped steps, and the loss below."""
    steps = np.asarray(steps)
    if not len(steps) or not (_has_positive(norm_before) or (skipped is not None and np.any(skipped))):
        return None
    has_loss = loss is not None and np.isfinite(np.asarray(loss, dtype=np.float64)).any()
    fig, axes = _figure(4.6 if has_loss else 3.4, nrows=2 if has_loss else 1, sharex=True, height_ratios=[2.2, 1] if has_loss else None)
    ax = axes[0, 0]
    named = {"before": norm_before, "after": norm_after, "threshold": threshold}
    columns = {k: _positive(v) for k, v in named.items() if v is not None and _has_positive(v)}
    x, binned = _bin_max(steps, list(columns.values()))
    binned = dict(zip(columns, binned))
    if "before" in binned:
        ax.plot(x, binned["before"], color=COLORS["before"], linewidth=1.0, label="norm before clipping")
    if "after" in binned and not np.allclose(np.nan_to_num(binned["after"]), np.nan_to_num(binned.get("before", 0))):
        ax.plot(x, binned["after"], color=COLORS["after"], linewidth=1.0, label="norm after clipping")
    if "threshold" in binned:
        ax.plot(x, binned["threshold"], color=COLORS["threshold"], linewidth=1.0, linestyle="--", label="clipping threshold")
    if any(np.isfinite(v).any() for v in binned.values()):
        ax.set_yscale("log")
        _label_log_axis(ax, np.concatenate([v for v in binned.values()]))
    if skipped is not None and np.any(skipped):
        skip_steps = steps[np.asarray(skipped, dtype=bool)]
        if len(skip_steps) <= 200:
            for s in skip_steps:
                ax.axvline(s, color=COLORS["skip"], alpha=0.25, linewidth=0.8)
        # at the top edge (axes coordinates in y): a skipped step usually has no finite norm to plot
        ax.plot(skip_steps, np.full(len(skip_steps), 0.97), linestyle="none", marker="v", markersize=6, color=COLORS["skip"], transform=ax.get_xaxis_transform(), label=f"skipped step ({len(skip_steps)})", clip_on=False)
    ax.set_ylabel("total gradient norm")
    ax.legend(loc="upper left", ncols=4, bbox_to_anchor=(0, 1.14))
    if has_loss:
        lx, (lv,) = _bin_max(steps, [np.asarray(loss, dtype=np.float64)])
        axes[1, 0].plot(lx, lv, color="#374151", linewidth=1.0)
        axes[1, 0].set_ylabel("loss")
        finite = lv[np.isfinite(lv)]
        if finite.size and finite.min() > 0 and finite.max() / finite.min() > 100:  # a loss over decades reads better on a log axis
            axes[1, 0].set_yscale("log")
    axes[-1, 0].set_xlabel("training step")
    return _svg(fig)


@_styled
def overlaid_timelines(runs: Mapping[str, tuple[Sequence[int], Sequence[float]]]) -> str | None:
    """Norm before clipping of several runs on one log axis, one colour per run."""
    drawable = {name: (np.asarray(s), _positive(v)) for name, (s, v) in runs.items() if len(s) and _has_positive(v)}
    if len(drawable) < 2:
        return None
    fig, axes = _figure(3.4)
    ax = axes[0, 0]
    for i, (name, (steps, values)) in enumerate(drawable.items()):
        x, (v,) = _bin_max(steps, [values])
        ax.plot(x, v, linewidth=1.0, color=CYCLE[i % len(CYCLE)], label=_short(name, 40))
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("total gradient norm before clipping")
    ax.legend(loc="best")
    return _svg(fig)


# ---------------------------------------------------------------------- recurrent runs
@_styled
def timestep_heatmap(steps, values, module: str = "") -> str | None:
    """‖dL/dh_t‖ over time step t and training step (left), and its profile at the latest step (right)."""
    values = _positive(values)
    steps = np.asarray(steps)
    if values.ndim != 2 or not values.size or not np.isfinite(values).any():
        return None
    fig, axes = _figure(3.4, ncols=2, width_ratios=[2.2, 1])
    ax = axes[0, 0]
    T = values.shape[1]
    if len(steps) >= 2:
        x, cols = _bin_max(steps, list(values.T))
        grid = np.log10(np.array(cols))  # time steps x training steps
        image = ax.pcolormesh(_edges(x), np.arange(T + 1) + 0.5, grid, cmap="magma", rasterized=True)
        ax.grid(False)
        ax.set_xlabel("training step")
        ax.set_ylabel("time step t")
        fig.colorbar(image, ax=ax, label="log10 ‖dL/dh_t‖", pad=0.01)
    else:
        ax.set_axis_off()
        ax.text(0.5, 0.5, f"one measured step ({int(steps[0])}): profile on the right", ha="center", va="center", transform=ax.transAxes, color="#6b7280")
    prof = axes[0, 1]
    rows = np.flatnonzero(np.isfinite(values).any(axis=1))
    last = rows[-1]
    prof.plot(np.arange(1, T + 1), values[last], color=COLORS["error"], linewidth=1.2)
    prof.set_yscale("log")
    prof.set_xlabel("time step t")
    prof.set_ylabel("‖dL/dh_t‖")
    prof.set_title(f"at step {int(steps[last])}", fontsize=9)
    if module:
        fig.suptitle(_short(module, 60), fontsize=9, x=0.01, ha="left")
    return _svg(fig)


# ---------------------------------------------------------------------- units
@_styled
def unit_bars(modules: Sequence[str], saturation=None, dead_fraction=None) -> str | None:
    """Share of saturated units and of dead units per module, as horizontal bars in percent."""
    panels = []
    if saturation is not None and np.isfinite(np.asarray(saturation, dtype=np.float64)).any():
        panels.append(("saturated units (%)", np.asarray(saturation, dtype=np.float64), COLORS["saturation"]))
    if dead_fraction is not None and np.isfinite(np.asarray(dead_fraction, dtype=np.float64)).any():
        panels.append(("dead units (%)", np.asarray(dead_fraction, dtype=np.float64), COLORS["dead"]))
    if not panels or not modules:
        return None
    keep = np.zeros(len(modules), dtype=bool)
    for _, values, _ in panels:
        keep |= np.isfinite(values)
    names = [m for m, k in zip(modules, keep) if k]
    fig, axes = _figure(min(1.2 + 0.24 * len(names), 8.0), ncols=len(panels))
    y = np.arange(len(names))
    for ax, (label, values, color) in zip(axes[0], panels):
        v = 100.0 * values[keep]
        ax.barh(y, np.nan_to_num(v), color=color, height=0.7)
        ax.set_xlim(0, 100)
        ax.set_xlabel(label)
        ax.invert_yaxis()
        ax.grid(axis="y", visible=False)
        _module_ticks(ax, names, axis="y")
    for ax in axes[0][1:]:
        ax.set_yticklabels([])
    return _svg(fig)


@_styled
def update_ratio(steps, modules: Sequence[str], values, reference: float = 1e-3) -> str | None:
    """‖update‖ / ‖weight‖ per module over training, log axis, with a dashed reference line.

    The reference 1e-3 is the common rule of thumb for SGD-like training (Karpathy, CS231n notes):
    far below it a layer barely learns, far above it the step is large for the weight's scale.
    """
    values = _positive(values)
    steps = np.asarray(steps)
    if values.ndim != 2 or not np.isfinite(values).any():
        return None
    fig, axes = _figure(3.4)
    ax = axes[0, 0]
    drawn = [j for j in range(values.shape[1]) if np.isfinite(values[:, j]).any()]
    marker = "o" if values.shape[0] < 30 else None
    if len(drawn) <= len(CYCLE):
        for i, j in enumerate(drawn):
            x, (v,) = _bin_max(steps, [values[:, j]])
            ax.plot(x, v, linewidth=1.0, marker=marker, markersize=3, color=CYCLE[i], label=_short(modules[j], 28))
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    else:  # many modules: the spread across modules per step
        with np.errstate(all="ignore"), _quiet():
            lo, med, hi = np.nanmin(values, axis=1), np.nanmedian(values, axis=1), np.nanmax(values, axis=1)
        x, (lo, med, hi) = _bin_max(steps, [lo, med, hi])
        ax.fill_between(x, lo, hi, color=CYCLE[0], alpha=0.2, linewidth=0, label=f"min to max over {len(drawn)} modules")
        ax.plot(x, med, color=CYCLE[0], linewidth=1.0, label="median module")
        ax.legend(loc="best")
    ax.axhline(reference, color=COLORS["threshold"], linestyle="--", linewidth=0.8)
    ax.annotate(f"rule of thumb {reference:g}", xy=(1, reference), xycoords=("axes fraction", "data"), xytext=(-2, 2), textcoords="offset points", ha="right", fontsize=7, color=COLORS["threshold"])
    ax.set_yscale("log")
    _label_log_axis(ax, np.concatenate([values[np.isfinite(values)], [reference]]))
    ax.set_xlabel("training step")
    ax.set_ylabel("‖update‖ / ‖weight‖")
    return _svg(fig)


class _quiet:
    """Silence numpy's 'All-NaN slice' warnings for the duration of a block."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


# ---------------------------------------------------------------------- lab
@_styled
def lab_figure(curves: Sequence, title: str = "", x_label: str = "", y_label: str = "", log_y: bool = False, hlines: Sequence[tuple[float, str]] = (), reference_label: str = "") -> str | None:
    """One lab figure: a line per variant, the seeds' min-max as a band, references dashed.

    ``curves``: objects with ``label``, ``x``, ``y``, ``low``, ``high`` (None without a band),
    ``reference`` and ``group`` (``report.data.Curve``). A variant and its reference share the
    colour of their group; references identical across variants (a shared initial state) are
    drawn once, in grey. ``hlines``: constant levels, dotted and labelled. A line whose values
    stop being finite ends in a cross; on a log axis, values <= 0 show as triangles on the
    bottom edge. None when no line has a point to draw.
    """
    lines = [c for c in curves if not c.reference]
    if log_y and not any(_has_positive(c.y) for c in lines):
        log_y = False  # nothing could sit on a log axis: linear rather than an empty figure
    clean = _positive if log_y else _finite
    if not any(np.isfinite(clean(c.y)).any() for c in lines):
        return None
    from matplotlib.lines import Line2D

    fig, axes = _figure(3.6)
    ax = axes[0, 0]
    for c, y, color in _distinct_references([c for c in curves if c.reference], clean):
        ax.plot(np.asarray(c.x, dtype=np.float64), y, color=color, linewidth=1.0, linestyle="--", alpha=0.9)
    handles, crossed, below = [], False, False
    for c in lines:
        color = CYCLE[c.group % len(CYCLE)]
        x, raw = np.asarray(c.x, dtype=np.float64), np.asarray(c.y, dtype=np.float64)
        y = clean(raw)
        label = _short(c.label, 40)
        if not np.isfinite(y).any():
            handles.append(Line2D([], [], color=color, label=f"{label} (no {'value > 0' if log_y else 'finite value'})"))
            continue
        if c.low is not None and c.high is not None and len(c.low) == len(x):
            ax.fill_between(x, clean(c.low), clean(c.high), color=color, alpha=0.15, linewidth=0)
        finite = np.flatnonzero(np.isfinite(raw))
        last = finite[-1]
        if last < len(raw) - 1:  # the values stop being finite here (diverged): say where, and mark it
            label += f" (finite to x = {x[last]:.4g})"
            if np.isfinite(y[last]):
                ax.plot([x[last]], [y[last]], linestyle="none", marker="x", markersize=7, markeredgewidth=1.6, color=color)
                crossed = True
        marker = "o" if len(x) <= 30 or np.isfinite(y).sum() < 2 else None  # a few points, or one, stay visible
        (line,) = ax.plot(x, y, color=color, linewidth=1.3, marker=marker, markersize=3, label=label)
        handles.append(line)
        off = np.isfinite(raw) & ~np.isfinite(y)  # finite but <= 0: off a log axis
        if off.any():
            ax.plot(x[off], np.full(int(off.sum()), 0.02), linestyle="none", marker="v", markersize=5, color=color, transform=ax.get_xaxis_transform(), clip_on=False)
            below = True
    if any(c.reference for c in curves):
        handles.append(Line2D([], [], color="#374151", linestyle="--", linewidth=1.0, label=reference_label or "reference (dashed)"))
    if crossed:
        handles.append(Line2D([], [], color="#374151", linestyle="none", marker="x", markersize=6, label="last finite value"))
    if below:
        handles.append(Line2D([], [], color="#374151", linestyle="none", marker="v", markersize=5, label="value ≤ 0 (off the log axis)"))
    for value, label in hlines:
        if log_y and value <= 0:
            continue
        ax.axhline(value, color=COLORS["threshold"], linestyle=":", linewidth=1.0)
        ax.annotate(label, xy=(1, value), xycoords=("axes fraction", "data"), xytext=(-2, 2), textcoords="offset points", ha="right", fontsize=7, color=COLORS["threshold"],
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.75, "pad": 0.5})  # readable over the lines
    if log_y:
        ax.set_yscale("log")
        values = np.concatenate([clean(c.y)[np.isfinite(clean(c.y))] for c in lines])
        if values.max() / values.min() < 100:  # under two decades: label 1-2-5 steps, not one lonely power of 10
            from matplotlib.ticker import FuncFormatter, LogLocator

            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    if title:
        ax.set_title(title, loc="left")
    if len(handles) > 5:  # many entries: beside the axes, where they cover no line
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    else:
        ax.legend(handles=handles, loc="best")
    return _svg(fig)


def _finite(values) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(a), a, np.nan)


def _distinct_references(refs: Sequence, clean) -> list[tuple]:
    """(curve, cleaned y, colour) per reference, each distinct one once: the variant's colour, or
    grey when several variants share it (e.g. the same initial network in every variant)."""
    kept: list[list] = []
    for c in refs:
        y = clean(c.y)
        same = next((k for k in kept if len(k[1]) == len(y) and np.array_equal(k[1], y, equal_nan=True) and np.array_equal(k[0].x, c.x)), None)
        if same is not None:
            same[2] += 1
        else:
            kept.append([c, y, 1])
    return [(c, y, "#6b7280" if count > 1 else CYCLE[c.group % len(CYCLE)]) for c, y, count in kept]
