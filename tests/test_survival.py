"""Kaplan–Meier across sites against lifelines' KaplanMeierFitter on the pooled rows."""

from __future__ import annotations

import numpy as np
import pytest
from lifelines import KaplanMeierFitter

from pet.errors import QueryError
from pet.queries import KaplanMeier
from pet.workloads import Workload
from tests.conftest import NO_CELL_LIMIT


def reference(frame, times: np.ndarray) -> KaplanMeierFitter:
    return KaplanMeierFitter().fit(frame.time, frame.dead, timeline=times)


def test_daily_grid_equals_exact_kaplan_meier(lung3: Workload) -> None:
    times = np.arange(1.0, 1101.0)
    curve = lung3.study(policy=NO_CELL_LIMIT).run(KaplanMeier("time", "dead", tuple(times))).value
    fitter = reference(lung3.pooled(), times)
    np.testing.assert_allclose(curve.survival, fitter.survival_function_.iloc[:, 0], atol=1e-12)
    bands = fitter.confidence_interval_survival_function_
    np.testing.assert_allclose(curve.lower, bands.iloc[:, 0], atol=1e-10)
    np.testing.assert_allclose(curve.upper, bands.iloc[:, 1], atol=1e-10)
    assert curve.at(0.5) == 1.0
    assert curve.at(365) == pytest.approx(fitter.predict(365), abs=1e-12)


def test_subgroup_curve_matches_lifelines_on_the_subgroup(lung3: Workload) -> None:
    times = np.arange(1.0, 1101.0)
    query = KaplanMeier("time", "dead", tuple(times), where="sex == 'female'")
    curve = lung3.study(policy=NO_CELL_LIMIT).run(query).value
    pooled = lung3.pooled()
    fitter = reference(pooled[pooled.sex == "female"], times)
    np.testing.assert_allclose(curve.survival, fitter.survival_function_.iloc[:, 0], atol=1e-12)


def test_coarse_grid_counts_events_and_risk_sets_per_interval(lung3: Workload) -> None:
    curve = lung3.study(policy=NO_CELL_LIMIT).run(KaplanMeier("time", "dead", grid=11)).value
    pooled = lung3.pooled()
    edges = np.concatenate([[-np.inf], curve.times])
    for k in range(len(curve.times)):
        inside = (pooled.time > edges[k]) & (pooled.time <= edges[k + 1])
        assert curve.events[k] == (inside & pooled.dead).sum()
        assert curve.at_risk[k] == (pooled.time > edges[k]).sum()
    assert np.all(np.diff(curve.survival) <= 0)
    assert np.all((curve.lower <= curve.survival) & (curve.survival <= curve.upper))


def test_grid_must_cover_follow_up(lung3: Workload) -> None:
    with pytest.raises(QueryError, match="must reach the schema's upper bound 1100"):
        lung3.study().run(KaplanMeier("time", "dead", (100.0, 500.0)))
    with pytest.raises(QueryError, match="time_to_event column"):
        lung3.study().run(KaplanMeier("age", "dead"))
