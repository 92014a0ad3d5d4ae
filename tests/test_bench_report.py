"""The benchmark report draws valid, data-bearing PNGs and a Markdown summary in human units."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from benchmarks.report import (
    NO_DP_CELLS,
    NO_OK_CELLS,
    NO_ROWS_SWEEP,
    NO_SITES_SWEEP,
    error_vs_epsilon_figure,
    human_bytes,
    human_count,
    human_seconds,
    latency_vs_rows_figure,
    latency_vs_sites_figure,
    markdown_summary,
    plot_all,
    tradeoff_figure,
)

NAN = float("nan")
EPSILONS = (0.1, 1.0, 10.0)
# Rows sweep at 4 sites, sites sweep at 10k rows per site (sharing the (4, 10k) cell).
SIZES = ((4, 1_000), (4, 10_000), (4, 100_000), (2, 10_000), (8, 10_000))
FAILED_MESSAGE = "site-3 timed out after 30 s"
MACHINE = {"cpu": "Test CPU 9000", "cores": "16", "python": "3.11.9", "numpy": "2.4.6"}
PNG_NAMES = ["latency_vs_rows.png", "latency_vs_sites.png", "error_vs_epsilon.png",
             "tradeoff.png"]


def _cell(workload: str, query: str, backend: str, sites: int, rows: float,
          epsilon: float) -> dict[str, object]:
    """One ok result row whose metrics follow simple, known formulas."""
    n = (rows if math.isfinite(rows) else 57) * sites
    latency = 1e-4 * n / 1000 * (1.5 if backend == "dp" else 1.0) * (2 if query == "mean" else 1)
    private = math.isfinite(epsilon)
    return {
        "workload": workload, "query": query, "backend": backend, "sites": sites,
        "rows_per_site": rows, "epsilon": epsilon, "repeats": 5,
        "latency_median_s": latency, "latency_p95_s": 1.3 * latency,
        "throughput_rows_s": n / latency, "cpu_s": 0.9 * latency,
        "bytes_total": 200.0 * sites, "bytes_per_site": 200.0, "peak_mem_mb": 80.0,
        "abs_error": 100.0 / (epsilon * n) if private else 0.0,
        "rel_error": 10.0 / (epsilon * n) if private else 0.0,
        "rho": epsilon**2 / 2 if private else NAN,
        "epsilon_spent": epsilon if private else NAN,
        "delta": 1e-6 if private else NAN,
        "status": "ok", "message": "",
    }


def _results() -> pd.DataFrame:
    """Two cohort queries over a rows and a sites sweep under plaintext and dp at three ε,
    one fixed-size lung cell pair, and one failed cell."""
    rows = []
    for query in ("count", "mean"):
        for sites, n in SIZES:
            rows.append(_cell("cohort", query, "plaintext", sites, n, NAN))
            rows.extend(_cell("cohort", query, "dp", sites, n, eps) for eps in EPSILONS)
    rows.append(_cell("lung", "count", "plaintext", 3, NAN, NAN))
    rows.append(_cell("lung", "count", "dp", 3, NAN, 1.0))
    frame = pd.DataFrame(rows)
    failed = ((frame["query"] == "mean") & (frame["backend"] == "dp") & (frame["sites"] == 8)
              & (frame["epsilon"] == 0.1))
    metrics = ["latency_median_s", "latency_p95_s", "throughput_rows_s", "cpu_s",
               "bytes_total", "bytes_per_site", "peak_mem_mb", "abs_error", "rel_error",
               "rho", "epsilon_spent", "delta"]
    frame.loc[failed, metrics] = NAN
    frame.loc[failed, ["status", "message"]] = ["error", FAILED_MESSAGE]
    # One row with hand-picked numbers, to check the table's formatting exactly.
    known = ((frame["query"] == "count") & (frame["backend"] == "plaintext")
             & (frame["sites"] == 4) & (frame["rows_per_site"] == 1_000))
    frame.loc[known, ["latency_median_s", "latency_p95_s", "throughput_rows_s", "bytes_total",
                      "peak_mem_mb"]] = [0.0123, 0.0456, 325_203.25, 1_536, 101.3]
    return frame


@pytest.fixture(scope="module")
def results() -> pd.DataFrame:
    return _results()


def _texts(fig: Figure) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def _legend_labels(fig: Figure) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def _check_png(path: Path) -> np.ndarray:
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert 300 <= width <= 4000 and 200 <= height <= 4000
    assert image[..., :3].std() > 0.01  # something is drawn on the white canvas
    return image


# ---------------------------------------------------------------- human units


@pytest.mark.parametrize(("seconds", "text"), [
    (0.0, "0 s"),
    (5e-10, "0.500 ns"),
    (999.4e-9, "999 ns"),
    (999.6e-9, "1.00 µs"),
    (12.34e-6, "12.3 µs"),
    (1e-3, "1.00 ms"),
    (0.0123, "12.3 ms"),
    (0.9996, "1.00 s"),
    (1.0, "1.00 s"),
    (125.4, "125 s"),
    (NAN, "—"),
])
def test_human_seconds(seconds: float, text: str) -> None:
    assert human_seconds(seconds) == text


@pytest.mark.parametrize(("count", "text"), [
    (0, "0"),
    (7, "7"),
    (12.34, "12.3"),
    (999, "999"),
    (999.6, "1.00k"),
    (1_000, "1.00k"),
    (325_203.25, "325k"),
    (2_500_000, "2.50M"),
    (3e9, "3.00G"),
    (NAN, "—"),
])
def test_human_count(count: float, text: str) -> None:
    assert human_count(count) == text


@pytest.mark.parametrize(("n_bytes", "text"), [
    (0, "0 B"),
    (999, "999 B"),
    (1_000, "1.00 kB"),
    (1_536, "1.54 kB"),
    (999_499, "999 kB"),
    (999_500, "1.00 MB"),
    (1_500_000, "1.50 MB"),
    (2e9, "2.00 GB"),
    (NAN, "—"),
])
def test_human_bytes(n_bytes: float, text: str) -> None:
    assert human_bytes(n_bytes) == text


def test_trimmed_units_drop_trailing_zeros_for_tick_labels() -> None:
    assert human_seconds(1e-3, trim=True) == "1 ms"
    assert human_seconds(1.5e-4, trim=True) == "150 µs"
    assert human_count(10_000, trim=True) == "10k"


# ---------------------------------------------------------------- figures


def test_plot_all_writes_four_valid_pngs(results: pd.DataFrame, tmp_path: Path) -> None:
    paths = plot_all(results, tmp_path / "plots")
    assert [p.name for p in paths] == PNG_NAMES
    for path in paths:
        _check_png(path)


def test_latency_vs_rows_has_a_panel_per_swept_query_and_a_line_per_backend(
        results: pd.DataFrame) -> None:
    fig = latency_vs_rows_figure(results)
    titles = [ax.get_title() for ax in fig.axes]
    # lung has no rows sweep; one site count is swept, so it is named in the titles.
    assert titles == ["count (cohort) — 4 sites", "mean (cohort) — 4 sites"]
    assert _legend_labels(fig) == ["plaintext", "dp"]
    plaintext = fig.axes[0].lines[0]
    assert list(plaintext.get_xdata()) == [1_000, 10_000, 100_000]
    assert plaintext.get_ydata()[0] == pytest.approx(0.0123)


def test_latency_vs_rows_labels_lines_with_sites_when_several_are_swept(
        results: pd.DataFrame) -> None:
    extra = results[(results["sites"] == 4) & (results["workload"] == "cohort")].assign(sites=16)
    fig = latency_vs_rows_figure(pd.concat([results, extra], ignore_index=True))
    assert {"plaintext, 4 sites", "plaintext, 16 sites", "dp, 16 sites"} <= set(
        _legend_labels(fig))


def test_latency_vs_sites_uses_the_largest_rows_with_a_sites_sweep(
        results: pd.DataFrame) -> None:
    fig = latency_vs_sites_figure(results)
    assert [ax.get_title() for ax in fig.axes] == ["count (cohort) — 10k rows/site",
                                                   "mean (cohort) — 10k rows/site"]
    assert list(fig.axes[0].lines[0].get_xdata()) == [2, 4, 8]


def test_error_vs_epsilon_plots_each_dp_panel_at_its_fullest_setting(
        results: pd.DataFrame) -> None:
    fig = error_vs_epsilon_figure(results)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["count (cohort) — 4 sites, 100k rows/site",
                      "mean (cohort) — 4 sites, 100k rows/site",
                      "count (lung) — 3 sites, full data"]
    dp_line = next(line for line in fig.axes[0].lines if line.get_label() == "dp")
    assert list(dp_line.get_xdata()) == list(EPSILONS)
    expected = [10.0 / (eps * 400_000) for eps in EPSILONS]
    assert list(dp_line.get_ydata()) == pytest.approx(expected)
    assert "plaintext (no DP)" in _legend_labels(fig)


def test_tradeoff_draws_one_point_per_successful_cell(results: pd.DataFrame) -> None:
    fig = tradeoff_figure(results)
    points = sum(len(c.get_offsets()) for c in fig.axes[0].collections)
    assert points == int((results["status"] == "ok").sum())
    labels = _legend_labels(fig)
    assert labels[:2] == ["plaintext (no DP)", "dp"]
    assert "ε spent = 1" in labels


def test_unknown_backend_names_are_drawn_too(results: pd.DataFrame) -> None:
    renamed = results.replace({"backend": {"dp": "quantum+dp"}})
    for figure in (latency_vs_rows_figure, latency_vs_sites_figure, error_vs_epsilon_figure,
                   tradeoff_figure):
        assert "quantum+dp" in _legend_labels(figure(renamed))


def test_a_single_cell_gives_the_fallback_notes(results: pd.DataFrame, tmp_path: Path) -> None:
    one = results[(results["backend"] == "plaintext")].head(1)
    assert NO_ROWS_SWEEP in _texts(latency_vs_rows_figure(one))
    assert NO_SITES_SWEEP in _texts(latency_vs_sites_figure(one))
    assert NO_DP_CELLS in _texts(error_vs_epsilon_figure(one))
    assert len(tradeoff_figure(one).axes[0].collections) == 1
    for path in plot_all(one, tmp_path):
        _check_png(path)


def test_a_run_where_everything_failed_still_plots(results: pd.DataFrame,
                                                    tmp_path: Path) -> None:
    failed = results.head(3).assign(status="error", message="boom", latency_median_s=NAN,
                                     rel_error=NAN)
    assert NO_OK_CELLS in _texts(tradeoff_figure(failed))
    for path in plot_all(failed, tmp_path):
        _check_png(path)


def test_missing_columns_are_named() -> None:
    with pytest.raises(ValueError, match="latency_p95_s"):
        latency_vs_rows_figure(_results().drop(columns="latency_p95_s"))


# ---------------------------------------------------------------- Markdown


def _table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| query |")]


def test_markdown_has_a_row_per_successful_cell_in_human_units(results: pd.DataFrame) -> None:
    text = markdown_summary(results, MACHINE)
    rows = _table_lines(text)
    assert len(rows) == int((results["status"] == "ok").sum())
    assert ("| count | plaintext | 4 | 1,000 | — | 12.3 ms | 45.6 ms | 325k | 1.54 kB | "
            "101.3 | 0 | — |") in rows
    # dp, count, 4 sites × 1,000 rows, ε = 0.1: latency 0.6 ms, rel. error 10 / (0.1 × 4000).
    assert ("| count | dp | 4 | 1,000 | 0.1 | 600 µs | 780 µs | 6.67M | 800 B | 80.0 | "
            "0.025 | 0.1 |") in rows
    assert "| count | plaintext | 3 | — | — |" in text  # lung: fixed size, no rows/site
    assert text.index("## Workload `cohort`") < text.index("## Workload `lung`")


def test_markdown_sorts_by_query_backend_sites_rows(results: pd.DataFrame) -> None:
    text = markdown_summary(results.sample(frac=1.0, random_state=3), MACHINE)
    cohort = text.split("## Workload `cohort`")[1].split("## Workload")[0]
    keys = [tuple(c.strip() for c in line.split("|")[1:6]) for line in _table_lines(cohort)]
    backend_rank = {"plaintext": 0, "dp": 1}
    sort_key = [(q, backend_rank[b], int(s), int(r.replace(",", "")),
                 -1.0 if e == "—" else float(e)) for q, b, s, r, e in keys]
    assert sort_key == sorted(sort_key)
    assert keys[0] == ("count", "plaintext", "2", "10,000", "—")


def test_markdown_lists_machine_and_failed_cells(results: pd.DataFrame) -> None:
    text = markdown_summary(results, MACHINE)
    for key, value in MACHINE.items():
        assert f"- **{key}**: {value}" in text
    failures = text.split("## Failed cells")[1].strip().splitlines()
    assert failures == [f"- `cohort` / mean / dp / 8 sites / 10,000 rows/site / ε=0.1: "
                        f"{FAILED_MESSAGE}"]
    assert f"{len(results)} cells: {len(results) - 1} ok, 1 failed." in text


def test_markdown_without_failures_has_no_failure_section(results: pd.DataFrame) -> None:
    assert "Failed cells" not in markdown_summary(results[results["status"] == "ok"], MACHINE)


def test_markdown_is_the_same_after_a_csv_round_trip(results: pd.DataFrame,
                                                      tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    results.to_csv(path, index=False)
    assert markdown_summary(pd.read_csv(path), MACHINE) == markdown_summary(results, MACHINE)
