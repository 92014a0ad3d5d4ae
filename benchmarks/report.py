"""Plots and a Markdown summary of a benchmark run's result table (one row per cell)."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from itertools import cycle
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, NullLocator

# Figures are built on matplotlib.figure.Figure directly, never through pyplot: nothing is
# registered with a GUI backend or kept in pyplot's global figure list, so rendering is
# headless (Agg, chosen by savefig for .png) and a figure is freed when it goes out of scope.

DPI = 120
NO_ROWS_SWEEP = "no rows-per-site sweep in this run"
NO_SITES_SWEEP = "no sites sweep in this run"
NO_DP_CELLS = "no differentially private cells in this run"
NO_OK_CELLS = "no successful cells in this run"

BACKEND_ORDER = ("plaintext", "he", "mpc", "dp", "he+dp", "mpc+dp")
_BACKEND_COLOURS = {
    "plaintext": "#4d4d4d",
    "he": "#1f77b4",
    "mpc": "#2ca02c",
    "dp": "#ff7f0e",
    "he+dp": "#9467bd",
    "mpc+dp": "#d62728",
}
_SPARE_COLOURS = ("#17becf", "#8c564b", "#e377c2", "#bcbd22", "#7f7f7f", "#aec7e8")
_LINE_STYLES = ("-", "--", ":", "-.")
_MISSING = "—"

_COST_COLUMNS = ("workload", "query", "backend", "sites", "rows_per_site", "status",
                 "latency_median_s", "latency_p95_s")
_ERROR_COLUMNS = ("workload", "query", "backend", "sites", "rows_per_site", "status",
                  "epsilon", "rel_error")
_SUMMARY_COLUMNS = ("workload", "query", "backend", "sites", "rows_per_site", "epsilon",
                    "status", "message", "latency_median_s", "latency_p95_s",
                    "throughput_rows_s", "bytes_total", "peak_mem_mb", "rel_error",
                    "epsilon_spent")

PanelKey = tuple[Hashable, Hashable]


# ---------------------------------------------------------------- human-readable numbers


def _scaled(value: float, units: Sequence[tuple[float, str]], *, integer_base: bool,
            trim: bool = False) -> str:
    """`value` in the largest unit it reaches, to three significant digits ("12.3 ms")."""
    if value is None or not math.isfinite(value):
        return _MISSING
    if value == 0:
        return f"0{units[0][1] if integer_base else units[-1][1]}"
    sign = "-" if value < 0 else ""
    magnitude = abs(value)
    index = 0
    while index + 1 < len(units) and magnitude >= units[index + 1][0]:
        index += 1
    scale, suffix = units[index]
    number = float(f"{magnitude / scale:.3g}")
    if number >= 1000 and index + 1 < len(units):  # rounding carried into the next unit
        scale, suffix = units[index + 1]
        number = float(f"{magnitude / scale:.3g}")
    if integer_base and scale == 1 and float(magnitude).is_integer():
        text = f"{int(magnitude):d}"
    elif number >= 100:
        text = f"{number:.0f}"
    else:
        decimals = 2 - math.floor(math.log10(number)) if number > 0 else 0
        text = f"{number:.{max(decimals, 0)}f}"
        if trim and "." in text:
            text = text.rstrip("0").rstrip(".")
    return f"{sign}{text}{suffix}"


_SECONDS = ((1e-9, " ns"), (1e-6, " µs"), (1e-3, " ms"), (1.0, " s"))
_COUNTS = ((1.0, ""), (1e3, "k"), (1e6, "M"), (1e9, "G"), (1e12, "T"))
_BYTES = ((1.0, " B"), (1e3, " kB"), (1e6, " MB"), (1e9, " GB"), (1e12, " TB"))


def human_seconds(seconds: float, *, trim: bool = False) -> str:
    """A duration in ns/µs/ms/s with three significant digits ("12.3 ms"); "—" if missing."""
    return _scaled(seconds, _SECONDS, integer_base=False, trim=trim)


def human_count(count: float, *, trim: bool = False) -> str:
    """A count or rate with a k/M/G/T suffix and three significant digits ("1.50k")."""
    return _scaled(count, _COUNTS, integer_base=True, trim=trim)


def human_bytes(n_bytes: float, *, trim: bool = False) -> str:
    """A size in decimal units B/kB/MB/GB/TB ("999 B", "1.00 kB"); "—" if missing."""
    return _scaled(n_bytes, _BYTES, integer_base=True, trim=trim)


def _number(value: float, spec: str = ".3g") -> str:
    """A plain number for the table, or "—" when missing."""
    return _MISSING if value is None or not np.isfinite(value) else format(value, spec)


def _integer(value: float) -> str:
    """An integer with thousands separators, or "—" when missing."""
    return _MISSING if value is None or not np.isfinite(value) else f"{int(value):,}"


# ---------------------------------------------------------------- selecting cells


def _require(frame: pd.DataFrame, columns: Iterable[str]) -> None:
    """Fail early, naming the columns a result table lacks."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"benchmark results lack column(s) {missing}; "
                         f"expected the harness's result table")


def _ok(frame: pd.DataFrame) -> pd.DataFrame:
    """The cells that ran successfully (status "ok")."""
    return frame[frame["status"].astype(str).str.strip().str.lower() == "ok"]


def _backend_key(name: str) -> tuple[int, str]:
    """Sort key putting known backends in their canonical order, others after by name."""
    order = BACKEND_ORDER.index(name) if name in BACKEND_ORDER else len(BACKEND_ORDER)
    return order, name


def _colours(frame: pd.DataFrame) -> dict[str, str]:
    """A fixed colour per backend, so a backend looks the same in every figure of a run."""
    names = sorted({str(b) for b in frame["backend"].dropna()}, key=_backend_key)
    spare = cycle(_SPARE_COLOURS)
    return {name: _BACKEND_COLOURS.get(name) or next(spare) for name in names}


def _cost_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Latency per (workload, query, backend, sites, rows), merged over ε (cost ≈ ε-free)."""
    ok = _ok(frame)
    ok = ok[np.isfinite(ok["latency_median_s"]) & (ok["latency_median_s"] > 0)]
    keys = ["workload", "query", "backend", "sites", "rows_per_site"]
    return (ok.groupby(keys, dropna=True)
            .agg(latency_median_s=("latency_median_s", "median"),
                 latency_p95_s=("latency_p95_s", "max"))
            .reset_index())


def _error_floor(values: Iterable[float]) -> float:
    """Where zero errors are drawn on a log axis: a decade below the smallest positive one."""
    positive = [v for v in values if np.isfinite(v) and v > 0]
    if not positive:
        return 1e-6
    return float(10.0 ** (math.floor(math.log10(min(positive))) - 1))


def _error_axis(ax: Axes, errors: Iterable[float], floor: float) -> None:
    """A log y axis of relative errors from just below `floor` (where zeros sit, marked
    "exact" when any is drawn) up to the next whole decade above the largest error."""
    values = [float(v) for v in errors if np.isfinite(v)]
    ax.set_yscale("log")
    top = max([floor * 10, *(10.0 ** math.ceil(math.log10(v)) for v in values if v > 0)])
    ax.set_ylim(floor / 3, top)
    if any(v <= 0 for v in values):
        ax.axhline(floor, color="0.6", linestyle=":", linewidth=1, zorder=1)
        ax.annotate(f"exact (0 error, drawn at {floor:g})", (0.99, floor),
                    xycoords=("axes fraction", "data"), xytext=(0, 2),
                    textcoords="offset points", ha="right", va="bottom", fontsize=8,
                    color="0.35")


# ---------------------------------------------------------------- figure scaffolding


def _note_figure(title: str, note: str) -> Figure:
    """A single panel carrying only a centred note, for runs without data for a plot."""
    fig = Figure(figsize=(6.4, 3.6), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.text(0.5, 0.5, note, ha="center", va="center", fontsize=14, color="0.35",
            transform=ax.transAxes)
    fig.suptitle(title, fontsize=13, fontweight="bold")
    return fig


def _panel_figure(n_panels: int, title: str) -> tuple[Figure, list[Axes]]:
    """A grid of up to three panels per row, with a bold overall title."""
    ncols = min(3, n_panels)
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(4.8 * ncols + 0.4, 3.6 * nrows + 1.2), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.remove()
    fig.suptitle(title, fontsize=13, fontweight="bold")
    return fig, list(axes[:n_panels])


def _shared_legend(fig: Figure, axes: Sequence[Axes]) -> None:
    """One legend below the panels with each label once, instead of one per panel."""
    entries: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    if entries:
        fig.legend(list(entries.values()), list(entries), loc="outside lower center",
                   ncols=min(len(entries), 4), frameon=False, fontsize=10)


def _panel_title(key: PanelKey) -> str:
    """A panel's title: the query, then its workload in brackets."""
    workload, query = key
    return f"{query} ({workload})"


def _decade_limits(ax: Axes, values: Iterable[float], *, axis: str = "y") -> None:
    """Extend a log axis to whole decades so that it always carries labelled ticks."""
    finite = [v for v in values if np.isfinite(v) and v > 0]
    if not finite:
        return
    low = math.floor(math.log10(min(finite)))
    high = math.ceil(math.log10(max(finite)))
    if high == low:
        high += 1
    limits = (10.0 ** low, 10.0 ** high)
    (ax.set_ylim if axis == "y" else ax.set_xlim)(*limits)


def _seconds_axis(ax: Axes, values: Iterable[float], *, axis: str = "y") -> None:
    """A log axis of durations labelled in human units ("1 ms", "100 µs")."""
    target = ax.yaxis if axis == "y" else ax.xaxis
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    _decade_limits(ax, values, axis=axis)
    target.set_major_formatter(FuncFormatter(lambda v, _: human_seconds(v, trim=True)))


def _value_ticks(ax: Axes, values: Iterable[float], label: Callable[[float], str]) -> None:
    """Put x ticks exactly at the swept values, labelled compactly."""
    ticks = sorted({float(v) for v in values})
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(ticks, [label(v) for v in ticks])


def _latency_line(ax: Axes, x: pd.Series, cells: pd.DataFrame, *, colour: str,
                  style: str, label: str) -> None:
    """Median latency as a line with markers, shaded up to the p95 latency."""
    ax.plot(x, cells["latency_median_s"], marker="o", color=colour, linestyle=style,
            linewidth=2, markersize=5, label=label)
    p95 = np.maximum(cells["latency_p95_s"].to_numpy(float),
                     cells["latency_median_s"].to_numpy(float))
    ax.fill_between(x.to_numpy(float), cells["latency_median_s"].to_numpy(float), p95,
                    color=colour, alpha=0.15, linewidth=0)


def _save(fig: Figure, path: str | Path) -> Path:
    """Write a figure as PNG (creating the folder) and return where it went."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


# ---------------------------------------------------------------- the four figures

_ROWS_TITLE = "Latency vs rows per site (median; band up to p95)"
_SITES_TITLE = "Latency vs number of sites (median; band up to p95)"
_EPS_TITLE = "Relative error vs privacy budget ε"
_TRADEOFF_TITLE = "Cost–accuracy–privacy trade-off (one point per successful cell)"


def latency_vs_rows_figure(frame: pd.DataFrame) -> Figure:
    """Log–log latency against rows per site, a panel per query, a line per backend and
    site count; only (workload, query) pairs measured at several rows per site appear."""
    _require(frame, _COST_COLUMNS)
    cells = _cost_cells(frame)
    panels: dict[PanelKey, pd.DataFrame] = {}
    for key, group in cells.groupby(["workload", "query"], sort=True):
        per_sites = group.groupby("sites")["rows_per_site"].nunique()
        swept = per_sites[per_sites >= 2].index
        if len(swept):
            panels[key] = group[group["sites"].isin(swept)]
    if not panels:
        return _note_figure(_ROWS_TITLE, NO_ROWS_SWEEP)

    colours = _colours(frame)
    all_sites = sorted({s for g in panels.values() for s in g["sites"].unique()})
    styles = dict(zip(all_sites, cycle(_LINE_STYLES), strict=False))
    label_sites = len(all_sites) > 1
    fig, axes = _panel_figure(len(panels), _ROWS_TITLE)
    for ax, (key, group) in zip(axes, panels.items(), strict=True):
        lines = sorted(group.groupby(["backend", "sites"]),
                       key=lambda item: (_backend_key(item[0][0]), item[0][1]))
        for (backend, sites), line in lines:
            line = line.sort_values("rows_per_site")
            label = f"{backend}, {int(sites)} sites" if label_sites else str(backend)
            _latency_line(ax, line["rows_per_site"], line, colour=colours[backend],
                          style=styles[sites], label=label)
        title = _panel_title(key)
        if not label_sites:
            title += f" — {int(all_sites[0])} sites"
        ax.set_title(title)
        ax.set_xscale("log")
        _value_ticks(ax, group["rows_per_site"], lambda v: human_count(v, trim=True))
        _seconds_axis(ax, pd.concat([group["latency_median_s"], group["latency_p95_s"]]))
        ax.set_xlabel("rows per site (log)")
        ax.set_ylabel("latency (log)")
        ax.grid(True, which="major", alpha=0.3)
    _shared_legend(fig, axes)
    return fig


def latency_vs_sites_figure(frame: pd.DataFrame) -> Figure:
    """Latency against the number of sites, a panel per query and a line per backend, at
    the rows per site with the widest sweep of site counts (ties: the largest)."""
    _require(frame, _COST_COLUMNS)
    cells = _cost_cells(frame.assign(rows_per_site=frame["rows_per_site"].fillna(0)))
    panels: dict[PanelKey, tuple[float, pd.DataFrame]] = {}
    for key, group in cells.groupby(["workload", "query"], sort=True):
        per_rows = group.groupby("rows_per_site")["sites"].nunique()
        swept = per_rows[per_rows >= 2].index
        if len(swept):
            rows = max(swept, key=lambda r: (per_rows[r], r))  # the widest sweep
            panels[key] = (rows, group[group["rows_per_site"] == rows])
    if not panels:
        return _note_figure(_SITES_TITLE, NO_SITES_SWEEP)

    colours = _colours(frame)
    title = _SITES_TITLE + "\nat the rows/site with the widest sites sweep"
    fig, axes = _panel_figure(len(panels), title)
    for ax, (key, (rows, group)) in zip(axes, panels.items(), strict=True):
        for backend, line in sorted(group.groupby("backend"),
                                    key=lambda item: _backend_key(item[0])):
            line = line.sort_values("sites")
            _latency_line(ax, line["sites"], line, colour=colours[backend], style="-",
                          label=str(backend))
        # rows 0 stands for a fixed-size (real) workload, whose size is its own.
        size = f"{human_count(rows, trim=True)} rows/site" if rows > 0 else "full data"
        ax.set_title(f"{_panel_title(key)} — {size}")
        ax.set_xscale("log", base=2)
        _value_ticks(ax, group["sites"], lambda v: f"{int(v)}")
        _seconds_axis(ax, pd.concat([group["latency_median_s"], group["latency_p95_s"]]))
        ax.set_xlabel("number of sites (log₂)")
        ax.set_ylabel("latency (log)")
        ax.grid(True, which="major", alpha=0.3)
    _shared_legend(fig, axes)
    return fig


def _dp_configuration(group: pd.DataFrame) -> tuple[float, float]:
    """The (sites, rows) setting with the most ε values, ties going to the largest."""
    counts = group.groupby(["sites", "rows_per_site"])["epsilon"].nunique()
    return max(counts.index, key=lambda k: (counts[k], k[1], k[0]))


def error_vs_epsilon_figure(frame: pd.DataFrame) -> Figure:
    """Relative error against ε on log–log axes, a panel per (workload, query) and a line
    per DP backend; non-DP backends at the same size appear as dashed reference levels."""
    _require(frame, _ERROR_COLUMNS)
    ok = _ok(frame.assign(rows_per_site=frame["rows_per_site"].fillna(0)))
    ok = ok[np.isfinite(ok["rel_error"])]
    dp = ok[np.isfinite(ok["epsilon"]) & (ok["epsilon"] > 0)]
    if dp.empty:
        return _note_figure(_EPS_TITLE, NO_DP_CELLS)

    colours = _colours(frame)
    floor = _error_floor(ok["rel_error"])
    keys = sorted({(w, q) for w, q in zip(dp["workload"], dp["query"], strict=True)})
    fig, axes = _panel_figure(len(keys), _EPS_TITLE)
    for ax, key in zip(axes, keys, strict=True):
        in_panel = (ok["workload"] == key[0]) & (ok["query"] == key[1])
        sites, rows = _dp_configuration(dp[(dp["workload"] == key[0])
                                           & (dp["query"] == key[1])])
        same_size = ok[in_panel & (ok["sites"] == sites) & (ok["rows_per_site"] == rows)]
        private = same_size[np.isfinite(same_size["epsilon"])]
        for backend, line in sorted(private.groupby("backend"),
                                    key=lambda item: _backend_key(item[0])):
            line = line.groupby("epsilon")["rel_error"].median()
            ax.plot(line.index, np.maximum(line.to_numpy(float), floor), marker="o",
                    linewidth=2, color=colours[backend], label=str(backend))
        plain = same_size[~np.isfinite(same_size["epsilon"])]
        for backend, level in sorted(plain.groupby("backend")["rel_error"].median().items(),
                                     key=lambda item: _backend_key(item[0])):
            ax.axhline(max(level, floor), color=colours[backend], linestyle="--",
                       linewidth=1.2, label=f"{backend} (no DP)")
        size = f"{human_count(rows, trim=True)} rows/site" if rows > 0 else "full data"
        ax.set_title(f"{_panel_title(key)} — {int(sites)} sites, {size}")
        ax.set_xscale("log")
        _value_ticks(ax, private["epsilon"], lambda v: f"{v:g}")
        _error_axis(ax, same_size["rel_error"], floor)
        ax.set_xlabel("ε requested (log)")
        ax.set_ylabel("relative error vs plaintext (log)")
        ax.grid(True, which="major", alpha=0.3)
    _shared_legend(fig, axes)
    return fig


def _epsilon_area(epsilon: np.ndarray) -> np.ndarray:
    """Marker area growing with log ε spent, so 0.1, 1 and 10 are easy to tell apart."""
    return 20.0 + 60.0 * np.log10(1.0 + 10.0 * np.asarray(epsilon, dtype=float))


def tradeoff_figure(frame: pd.DataFrame) -> Figure:
    """Every successful cell as a point: median latency (x, log) against relative error
    (y, log), colour per backend, marker area per ε spent and hollow markers without DP."""
    _require(frame, ("backend", "status", "latency_median_s", "rel_error", "epsilon_spent"))
    ok = _ok(frame)
    ok = ok[np.isfinite(ok["latency_median_s"]) & (ok["latency_median_s"] > 0)
            & np.isfinite(ok["rel_error"])]
    if ok.empty:
        return _note_figure(_TRADEOFF_TITLE, NO_OK_CELLS)

    colours = _colours(frame)
    floor = _error_floor(ok["rel_error"])
    fig = Figure(figsize=(9.0, 6.0), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    handles: list[Line2D] = []
    for backend, cells in sorted(ok.groupby("backend"), key=lambda item: _backend_key(item[0])):
        x = cells["latency_median_s"].to_numpy(float)
        y = np.maximum(cells["rel_error"].to_numpy(float), floor)
        spent = cells["epsilon_spent"].to_numpy(float)
        private = np.isfinite(spent)
        colour = colours[backend]
        if private.any():
            ax.scatter(x[private], y[private], s=_epsilon_area(spent[private]), color=colour,
                       alpha=0.8, edgecolors="white", linewidths=0.6, zorder=3)
        if (~private).any():
            ax.scatter(x[~private], y[~private], s=60, facecolors="none", edgecolors=colour,
                       linewidths=1.8, zorder=3)
        label = str(backend) if private.any() else f"{backend} (no DP)"
        handles.append(Line2D([], [], linestyle="", marker="o", markersize=8, label=label,
                              color=colour, markerfacecolor=colour if private.any() else "none",
                              markeredgewidth=1.8))
    spent_all = ok["epsilon_spent"].to_numpy(float)
    spent_all = np.unique(spent_all[np.isfinite(spent_all)])
    if spent_all.size:
        shown = np.unique([float(f"{v:.2g}") for v in np.quantile(spent_all, [0, 0.5, 1])])
        handles.extend(Line2D([], [], linestyle="", marker="o", color="0.55",
                              markersize=math.sqrt(float(_epsilon_area(np.array([v]))[0])),
                              label=f"ε spent = {v:g}") for v in shown)
    _seconds_axis(ax, ok["latency_median_s"], axis="x")
    _error_axis(ax, ok["rel_error"], floor)
    ax.set_xlabel("median latency (log)")
    ax.set_ylabel("relative error vs plaintext (log)")
    ax.text(0.99, 0.99, "↙ better: faster and more accurate", transform=ax.transAxes,
            fontsize=9, color="0.35", ha="right", va="top")
    ax.grid(True, which="major", alpha=0.3)
    fig.legend(handles=handles, loc="outside right center", frameon=False, fontsize=10,
              title="backend · marker area = ε spent", title_fontsize=9)
    ax.set_title(_TRADEOFF_TITLE, fontsize=13, fontweight="bold")
    return fig


def plot_latency_vs_rows(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write the latency-vs-rows-per-site figure as PNG (see `latency_vs_rows_figure`)."""
    return _save(latency_vs_rows_figure(frame), path)


def plot_latency_vs_sites(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write the latency-vs-sites figure as PNG (see `latency_vs_sites_figure`)."""
    return _save(latency_vs_sites_figure(frame), path)


def plot_error_vs_epsilon(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write the error-vs-ε figure as PNG (see `error_vs_epsilon_figure`)."""
    return _save(error_vs_epsilon_figure(frame), path)


def plot_tradeoff(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write the cost–accuracy–privacy trade-off figure as PNG (see `tradeoff_figure`)."""
    return _save(tradeoff_figure(frame), path)


PLOTS: dict[str, Callable[[pd.DataFrame, str | Path], Path]] = {
    "latency_vs_rows.png": plot_latency_vs_rows,
    "latency_vs_sites.png": plot_latency_vs_sites,
    "error_vs_epsilon.png": plot_error_vs_epsilon,
    "tradeoff.png": plot_tradeoff,
}


def plot_all(frame: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Write every figure of a run into `out_dir` and return the paths, in `PLOTS` order."""
    out = Path(out_dir)
    return [plot(frame, out / name) for name, plot in PLOTS.items()]


# ---------------------------------------------------------------- Markdown summary

_TABLE_HEADER = ("query", "backend", "sites", "rows/site", "ε", "latency median", "p95",
                 "throughput (rows/s)", "bytes total", "peak mem (MB)", "rel. error",
                 "ε spent")


def _sorted_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Cells by query, backend (canonical order), sites, rows per site, then ε."""
    order = frame.assign(_backend=[_backend_key(str(b)) for b in frame["backend"]])
    return order.sort_values(["query", "_backend", "sites", "rows_per_site", "epsilon"],
                             na_position="first", kind="stable").drop(columns="_backend")


def _cell_text(value: object) -> str:
    """Text safe inside a Markdown table cell or list item (one line, pipes escaped)."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _table_row(cell: pd.Series) -> str:
    """One table line for one successful cell."""
    values = (
        _cell_text(cell["query"]),
        _cell_text(cell["backend"]),
        _integer(cell["sites"]),
        _integer(cell["rows_per_site"]),
        _number(cell["epsilon"], "g"),
        human_seconds(cell["latency_median_s"]),
        human_seconds(cell["latency_p95_s"]),
        human_count(cell["throughput_rows_s"]),
        human_bytes(cell["bytes_total"]),
        _number(cell["peak_mem_mb"], ".1f"),
        _number(cell["rel_error"]),
        _number(cell["epsilon_spent"]),
    )
    return "| " + " | ".join(values) + " |"


def _failure_line(cell: pd.Series) -> str:
    """One list item naming a failed cell and why it failed."""
    where = [f"`{_cell_text(cell['workload'])}`", _cell_text(cell["query"]),
             _cell_text(cell["backend"]), f"{_integer(cell['sites'])} sites"]
    if np.isfinite(cell["rows_per_site"]):
        where.append(f"{_integer(cell['rows_per_site'])} rows/site")
    if np.isfinite(cell["epsilon"]):
        where.append(f"ε={cell['epsilon']:g}")
    message = cell["message"]
    reason = _cell_text(message) if isinstance(message, str) and message.strip() else (
        "no message")
    return f"- {' / '.join(where)}: {reason}"


def markdown_summary(frame: pd.DataFrame, machine: Mapping[str, str]) -> str:
    """A Markdown report: the machine as a bullet list, a table of successful cells per
    workload (human units), the service overhead where cells ran both ways, then every
    failed cell with its message."""
    _require(frame, _SUMMARY_COLUMNS)
    ok_mask = frame["status"].astype(str).str.strip().str.lower() == "ok"
    lines = ["# Benchmark results", "", "## Machine", ""]
    lines += [f"- **{_cell_text(k)}**: {_cell_text(v)}" for k, v in machine.items()]
    if not machine:
        lines.append("- (not recorded)")
    lines += ["", f"{len(frame)} cells: {int(ok_mask.sum())} ok, "
                  f"{int((~ok_mask).sum())} failed.", ""]
    labelled = by_transport(frame)
    for workload in sorted(frame["workload"].astype(str).unique()):
        cells = _sorted_cells(labelled[ok_mask & (frame["workload"].astype(str) == workload)])
        lines += [f"## Workload `{workload}`", ""]
        if cells.empty:
            lines += ["_No successful cells._", ""]
            continue
        lines.append("| " + " | ".join(_TABLE_HEADER) + " |")
        lines.append("|" + "|".join("---" if i < 2 else "---:"
                                    for i in range(len(_TABLE_HEADER))) + "|")
        lines += [_table_row(cell) for _, cell in cells.iterrows()]
        lines.append("")
    lines += service_overhead(frame[ok_mask])
    lines += engine_floor(frame[ok_mask])
    lines += bound_fit(frame[ok_mask])
    failed = by_transport(frame)[~ok_mask]
    if not failed.empty:
        lines += ["## Failed cells", ""]
        failed = _sorted_cells(failed).sort_values("workload", kind="stable")
        lines += [_failure_line(cell) for _, cell in failed.iterrows()]
        lines.append("")
    return "\n".join(lines)


def by_transport(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with cells measured through the services, or with the local pass on
    another engine, named as their own backend ("he via services", "plaintext on
    duckdb"), so figures and tables show them beside the others."""
    backend = frame["backend"].astype(str)
    if "transport" in frame:
        services = frame["transport"].astype(str) == "services"
        backend = backend.where(~services, backend + " via services")
    if "engine" in frame:
        engine = frame["engine"].fillna("pet").astype(str)
        backend = backend.where(engine == "pet", backend + " on " + engine)
    return frame.assign(backend=backend)


def engine_floor(frame: pd.DataFrame) -> list[str]:
    """Markdown lines: per query and size, each engine's local pass (one site's, median)
    against the bare scan of the same columns; nothing unless a cell ran on an engine
    other than pet's own pass; with the engine's start-up (a Spark session, a PostgreSQL
    server), paid once before any query."""
    if "engine" not in frame or set(frame["engine"].fillna("pet")) <= {"pet"}:
        return []
    cells = frame[frame["scan_s"].notna() & frame["local_s"].notna()]
    lines = ["## Local pass against the bare scan, by engine", "",
             "| query | rows/site | engine | local pass | bare scan | local ÷ scan "
             "| engine start |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for _, cell in cells.sort_values(["query", "rows_per_site", "engine"]).iterrows():
        ratio = cell["local_s"] / cell["scan_s"] / max(cell["rounds"], 1)
        start = cell.get("engine_start_s")
        started = human_seconds(start) if pd.notna(start) and start > 0 else ""
        lines.append(f"| {_cell_text(cell['query'])} | {_integer(cell['rows_per_site'])} "
                     f"| {_cell_text(cell['engine'])} | {human_seconds(cell['local_s'])} "
                     f"| {human_seconds(cell['scan_s'])} | {ratio:.2f}× | {started} |")
    return [*lines, ""]


def bound_fit(frame: pd.DataFrame) -> list[str]:
    """Markdown lines: per cell of an inexact backend without DP noise (he, mpc), how tight
    its numbers' error bounds were over the repeats (`harness._bound_fit`): the largest
    mean bound ÷ root-mean-square error, and the share of errors within their bounds."""
    if "bound_ratio" not in frame:
        return []
    cells = frame[frame["bound_ratio"].notna() & (frame["bound_ratio"] > 0)
                  & frame["epsilon_spent"].isna()]
    if cells.empty:
        return []
    lines = ["## Error bounds against the errors", "",
             "| workload | query | backend | rows/site | repeats | bound ÷ RMS error "
             "(largest) | errors within bound |",
             "|---|---|---|---:|---:|---:|---:|"]
    for _, cell in _sorted_cells(cells).iterrows():
        lines.append(f"| {_cell_text(cell['workload'])} | {_cell_text(cell['query'])} "
                     f"| {_cell_text(cell['backend'])} | {_integer(cell['rows_per_site'])} "
                     f"| {_integer(cell['repeats'])} | {cell['bound_ratio']:.1f} "
                     f"| {cell['bound_held']:.0%} |")
    return [*lines, ""]


def service_overhead(frame: pd.DataFrame) -> list[str]:
    """Markdown lines: for each cell measured both in-process and through the services,
    the two median latencies and what the services add (TLS, gRPC, the site servers'
    own processes); nothing when no cell was measured both ways."""
    if "transport" not in frame or frame["transport"].nunique() < 2:
        return []
    keys = ["workload", "query", "backend", "sites", "rows_per_site", "epsilon"]
    pairs = frame.pivot_table(index=keys, columns="transport", values="latency_median_s",
                              dropna=False).dropna()
    if pairs.empty:
        return []
    lines = ["## Service overhead", "",
             "| workload | query | backend | sites | rows/site | in-process | services "
             "| added | ratio |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for key, row in pairs.iterrows():
        local, remote = row["in-process"], row["services"]
        workload, query, backend, sites, rows, _ = key
        lines.append(f"| {workload} | {query} | {backend} | {_integer(sites)} | "
                     f"{_integer(rows)} | {human_seconds(local)} | {human_seconds(remote)} "
                     f"| {human_seconds(remote - local)} | {remote / local:.2f}× |")
    return [*lines, ""]
