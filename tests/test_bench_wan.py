"""The wan profile's cost model: T(RTT) = T₀ + L·RTT, L read off the 80 ms cells."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.wan import fit, summary


def _cell(query: str, backend: str, rtt: float, seconds: float, **extra) -> dict:
    return {"workload": "lung", "query": query, "backend": backend, "sites": 3,
            "rtt_ms": rtt, "latency_median_s": seconds, "status": "ok", "rounds": 1,
            "comm_rounds": 0, **extra}


def test_a_latency_linear_in_the_round_trip_is_predicted_exactly() -> None:
    base, trips = 0.030, 4.0
    cells = [_cell("mean", "mpc", r, base + trips * r / 1000, comm_rounds=7)
             for r in (0, 1, 20, 80)]
    (model,) = fit(cells)
    slope, intercept = np.polyfit([r / 1000 for r in (0, 1, 20, 80)],
                                  [c["latency_median_s"] for c in cells], 1)
    assert model.round_trips == pytest.approx(slope) and model.base_s == pytest.approx(intercept)
    assert model.worst_error == pytest.approx(0, abs=1e-12) and model.comm_rounds == 7


def test_the_error_is_the_prediction_against_the_measured_median() -> None:
    cells = [_cell("count", "he", 0, 0.10), _cell("count", "he", 20, 0.14),
             _cell("count", "he", 80, 0.18)]  # L = 1, so 20 ms is predicted at 0.12
    (model,) = fit(cells)
    assert model.round_trips == pytest.approx(1.0)
    assert model.error(20) == pytest.approx(0.12 / 0.14 - 1)
    assert model.worst_error == pytest.approx(1 - 0.12 / 0.14)


def test_cells_without_both_fitting_points_or_that_failed_are_left_out() -> None:
    cells = [_cell("count", "dp", 0, 0.05), _cell("count", "dp", 20, 0.2),
             _cell("mean", "dp", 0, 0.05), {**_cell("mean", "dp", 80, 0.07), "status": "failed"},
             _cell("count", "plaintext", 0, 0.04), _cell("count", "plaintext", 80, 0.12)]
    assert [(f.query, f.backend) for f in fit(cells)] == [("count", "plaintext")]


def test_the_summary_ranks_the_private_backends_at_20_ms() -> None:
    cells = [_cell("mean", b, r, t0 + trips * r / 1000)
             for b, t0, trips in (("plaintext", 0.02, 1), ("he", 0.15, 1), ("mpc", 0.05, 8))
             for r in (0, 20, 80)]
    text = summary(fit(cells))
    assert "- lung mean: he 170 ms, mpc 210 ms\n" in text
    assert "| lung | mean | mpc | 50 ms | 210 ms | 690 ms | 8.0 |" in text


def test_more_sites_cost_their_bytes_at_the_bandwidth() -> None:
    """he: 3 sites sent 300 kB, so 100 sites send 10 MB through the coordinator's link;
    mpc: the busiest party sent 1 MB to 2 others, so to 99 others it sends 49.5 MB."""
    he = fit([_cell("mean", "he", r, 0.1 + r / 1000, bytes_total=300_000) for r in (0, 80)])[0]
    assert he.extended(100, 20, 100) == pytest.approx(0.12 + 9_700_000 * 8 / 1e8)
    assert he.extended(3, 20, 100) == pytest.approx(he.predicted(20))
    mpc = fit([_cell("mean", "mpc", r, 0.05 + 4 * r / 1000, bytes_total=1_000_020,
                     site_bytes=[1_000_000, 10, 10]) for r in (0, 80)])[0]
    expected = 0.13 + 1_000_000 * 48.5 * 8 / 1e8  # the parties' bytes, counted once
    assert mpc.extended(100, 20, 100) == pytest.approx(expected)
