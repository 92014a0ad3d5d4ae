"""Attacks on the DP accounting, clipping and intervals by a peer that holds the
coordinator's certificate (or an analyst): each request passes every check a site server
makes of a Contribute request, and each test fails without the defence it names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from statsmodels.stats import correlation_tools

from pet import intervals
from pet.backends.base import Limits
from pet.backends.central_dp import HEDP
from pet.backends.dp import LocalDP
from pet.backends.plaintext import decode
from pet.disclosure import DisclosurePolicy
from pet.errors import ArgumentError, DisclosureError, PetError, QueryError
from pet.layout import Block, Layout
from pet.limits import DEFAULT_LIMITS, LimitError, check_query
from pet.mechanisms import _block, plan
from pet.queries import (
    Correlation,
    Count,
    Histogram,
    KaplanMeier,
    LogisticRegression,
    Sum,
)
from pet.queries.marginals import Marginals
from pet.queries.regression import LogisticState
from pet.site import Site
from pet.workloads import Workload
from tests.conftest import NO_CELL_LIMIT


def _site(workload: Workload, folder: Path, epsilon: float, delta: float,
          policy: DisclosurePolicy = NO_CELL_LIMIT) -> Site:
    site = workload.sites(policy, ledgers=folder)[0]
    assert site.ledger is not None
    site.ledger.set_budget(site.dataset, epsilon, delta)
    return site


def test_a_clip_range_near_zero_is_refused_and_no_partial_passes_non_finite(
        lung3: Workload) -> None:
    """clip (0, 5e-324) is increasing and inside the schema, but its half-range divides
    every value to ±inf: one row would move a release by max_rows_per_site (a field of
    the request) under noise sized for 1."""
    query = Sum("wt_loss", where="wt_loss > 0", clip={"wt_loss": (0.0, 5e-324)})
    with pytest.raises(QueryError, match="narrower than 1e-09 of the schema's range"):
        check_query(query, lung3.schema, DEFAULT_LIMITS)
    layout = Layout((Block.counts("n", 1), Block.sums("sum", 2)))
    clamped = Limits(max_rows_per_site=10).clamp(np.array([1.0, np.nan, np.inf]), layout)
    np.testing.assert_array_equal(clamped, [1.0, 0.0, 10.0])


def test_no_query_is_too_cheap_for_the_ledger_to_charge(lung3: Workload,
                                                        tmp_path: Path) -> None:
    """ρ(10⁻⁹, 10⁻⁹) is 3·10⁻¹⁸, below the ledger's unit: such a query is refused, and
    the cheapest one allowed is charged, rounded up, never to nothing."""
    with pytest.raises(ArgumentError, match=r"epsilon must be a number in \[0.001"):
        LocalDP(epsilon=1e-9, delta=1e-9)
    site = _site(lung3, tmp_path, 1.0, 1e-6)
    site.contribute(Count(), None, LocalDP(epsilon=1e-3, delta=1e-9), request="cheap")
    assert site.ledger.budget(site.dataset).spent_rho > 0  # type: ignore[union-attr]


def test_a_round_must_carry_its_own_iteration(lung3: Workload, tmp_path: Path) -> None:
    """Iteration 0 of a one-round DP logistic regression has the whole budget; asked again
    under rounds 2, 3, … it would be a fresh full-budget release each time."""
    site = _site(lung3, tmp_path, 10.0, 0.0)
    backend = LocalDP(epsilon=1.0, delta=0.0)
    query = LogisticRegression("dead", ("age",), max_iter=20, dp_rounds=1)
    first = LogisticState(0, (0.0, 0.0))
    site.contribute(query, first, backend, request="peer", round=1)
    with pytest.raises(PetError, match="round 2 must carry iteration 1, not 0"):
        site.contribute(query, first, backend, request="peer", round=2)
    assert len(site.ledger.spends("peer", site.dataset)) == 1  # type: ignore[union-attr]


def test_many_blocks_are_refused_and_alike_blocks_calibrate_once(lung3: Workload) -> None:
    """500 000 one-column cliques fit the cells limit and a 4 MiB request: each block a
    calibration, a request could cost a site hours. The blocks limit refuses it, and
    blocks of one shape share one calibration."""
    with pytest.raises(LimitError) as refused:
        check_query(Marginals(cliques=(("dead",),) * 500_000), lung3.schema, DEFAULT_LIMITS)
    assert refused.value.limit == "blocks"
    layout = Layout((Block.counts("n", 1, weight=0.01),
                     *(Block(f"m{i}", 2, 1.0, 1.0, 1.0) for i in range(1000))))
    before = _block.cache_info().misses
    plan(layout, 0.7313, 0.0)
    assert _block.cache_info().misses - before <= 2  # n's shape and the cliques'


def test_a_huge_table_or_curve_gets_its_interval_without_a_jacobian(
        lung3: Workload, monkeypatch: pytest.MonkeyPatch) -> None:
    """A histogram of 2²⁰ − 1 bins would ask the analyst for a 2²⁰ × 2²⁰ Jacobian; its
    interval has a closed form. A survival curve past the Jacobian cap gets NaN."""
    def refuse(*args: object) -> np.ndarray:
        raise AssertionError("a Jacobian was asked for")

    monkeypatch.setattr(intervals, "_jacobian", refuse)
    bins = DEFAULT_LIMITS.cells - 1
    query = Histogram("age", tuple(np.linspace(18, 100, bins + 1)))
    check_query(query, lung3.schema, DEFAULT_LIMITS)
    layout = query.layout(lung3.schema)
    total = np.zeros(layout.size)
    total[0] = 100.0
    sd = np.ones(layout.size)
    answer = query.finalize(total, lung3.schema, error_bounds=sd, noise_sd=sd)
    low, high = query.interval(total, intervals.Spread("gaussian", sd), lung3.schema, None,
                               answer)
    values = np.ravel(answer)
    assert np.all(low == np.maximum(values - 2, 0)) and np.all(high == values + 2)  # 1.96σ
    curve = KaplanMeier("time", "dead", grid=4000)
    layout = curve.layout(lung3.schema)
    total = np.full(layout.size, 1.0)
    total[0] = 5000.0
    sd = np.ones(layout.size)
    answer = curve.finalize(total, lung3.schema, error_bounds=sd, noise_sd=sd)
    low, _ = curve.interval(total, intervals.Spread("gaussian", sd), lung3.schema, None,
                            answer)
    assert np.all(np.isnan(low))


def test_a_correlations_interval_never_runs_the_projection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The nearest-correlation projection can take seconds for many columns; the interval
    differentiates the raw ratios instead of running it twice per element."""
    from pet.schema import Continuous, Schema

    d = 32
    schema = Schema(tuple(Continuous(f"x{i}", lower=0.0, upper=1.0) for i in range(d)))
    query = Correlation(tuple(f"x{i}" for i in range(d)))
    layout = query.layout(schema)
    cross = np.resize([-30.0, 40.0, 10.0], d * (d + 1) // 2)
    cross[np.cumsum([0, *range(d, 1, -1)])] = 60.0
    total = layout.join({"n": np.array([200.0]), "missing": np.zeros(0),
                         "sum": np.zeros(d), "cross": cross})
    sd = np.full(layout.size, 5.0)
    answer = query.finalize(total, schema, error_bounds=sd, noise_sd=sd)
    calls = []
    monkeypatch.setattr(correlation_tools, "corr_nearest",  # imported where it is used
                        lambda matrix, **kw: calls.append(1) or np.eye(len(matrix)))
    low, high = query.interval(total, intervals.Spread("gaussian", sd), schema, None,
                               answer)
    assert not calls and np.all((low >= -1) & (high <= 1))


def test_min_cell_under_dp_never_depends_on_the_exact_rows(lung3: Workload,
                                                           tmp_path: Path) -> None:
    """A count of one patient and of none: under dp both are released and charged, the
    site's own noisy cells below 3 set to 0; under he+dp both are refused before the rows
    are read, charging nothing. Refusing only the one would say who is here, for free."""
    policy = DisclosurePolicy(min_cell=3, min_cell_under_dp=True)
    site = _site(lung3, tmp_path, 10.0, 1e-4, policy)
    ages = site.table.to_frame().age.value_counts()
    lonely = int(ages[ages == 1].index[0])
    queries = [Count(where=f"age == {age}") for age in (lonely, 17)]
    backend = LocalDP(epsilon=1.0, delta=1e-6)
    for k, query in enumerate(queries):
        message = site.contribute(query, None, backend, request=f"local-{k}").message
        n = decode(message, query.layout(site.schema))[0]
        assert n == 0 or n >= 3
    assert len(site.ledger.charges(site.dataset)) == 2  # type: ignore[union-attr]
    shared = HEDP(epsilon=1.0, delta=1e-6, sites=3, max_rows_per_site=10**4, max_sites=4)
    for k, query in enumerate(queries):
        with pytest.raises(DisclosureError, match="ask under dp"):
            site.contribute(query, None, shared, request=f"shared-{k}")
    assert len(site.ledger.charges(site.dataset)) == 2  # type: ignore[union-attr]
