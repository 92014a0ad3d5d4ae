"""The `dp` backend: each site's release is noised by OpenDP and charged to its ledger
before it leaves; intervals hold their coverage; iterative queries pay up front.
Statistical checks allow 5.5 standard errors (false failure below 10⁻⁶ in all)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from pet.backends.central_dp import HEDP, MPCDP, CentralDP
from pet.backends.dp import LocalDP
from pet.disclosure import DisclosurePolicy
from pet.errors import DisclosureError, PetError
from pet.layout import Block, Layout
from pet.ledger import BudgetError
from pet.mechanisms import plan, release_rho, rho_of
from pet.queries import (
    Correlation,
    Count,
    Covariance,
    ExactQuantiles,
    Histogram,
    KaplanMeier,
    LogisticRegression,
    Mean,
)
from pet.queries.regression import LogisticState
from pet.releases import ReleaseError
from pet.study import Study
from pet.workloads import Workload, cohort
from tests.conftest import NO_CELL_LIMIT

Z = 5.5


@pytest.fixture(scope="module")
def cohort_small() -> Workload:
    return cohort(600, 3, 11)


def _study(workload: Workload, tmp_path: Path, backend: LocalDP, budget: float = 100.0) -> Study:
    sites = workload.sites(NO_CELL_LIMIT, ledgers=tmp_path)
    for site in sites:
        site.ledger.set_budget(site.dataset, budget, 1e-5)
    return Study(sites, backend=backend)


@pytest.mark.parametrize(("delta", "draws"), [(0.0, 400), (1e-6, 2000)])
def test_the_reported_interval_covers_the_noise(lung3: Workload, delta: float,
                                                draws: int) -> None:
    """Gaussian noise sums exactly, so its interval covers 95%; the Laplace union bound
    covers at least 95%."""
    backend = LocalDP(epsilon=1.0, delta=delta)
    query = Mean("age")
    layout = query.layout(lung3.schema)
    partials = [site.partial(query) for site in lung3.sites()]
    exact = np.sum(partials, axis=0)
    outside = 0
    at = layout.split(np.arange(layout.size))["sum"][0]
    for _ in range(draws):
        aggregate = backend.reveal(backend.combine(
            [backend.protect(p, layout) for p in partials], layout), layout)
        outside += abs(aggregate.total[at] - exact[at]) > aggregate.error_bounds[at]
    se = Z * math.sqrt(0.05 * 0.95 / draws)
    assert outside / draws <= 0.05 + se
    if delta > 0:
        assert outside / draws >= 0.05 - se


def test_every_release_is_charged_first_and_counts_stay_whole(lung3: Workload,
                                                              tmp_path: Path) -> None:
    study = _study(lung3, tmp_path, LocalDP(epsilon=0.5, delta=0.0))
    result = study.run(Histogram("age", (18, 50, 60, 70, 100)))
    assert result.privacy.epsilon == 0.5 and result.privacy.delta == 0.0
    assert np.all(result.value >= 0) and np.all(result.value == np.rint(result.value))
    for site in study.sites:  # ε = 0.5 of pure DP composes in zCDP as ρ = ε²/2
        assert site.ledger.budget(site.dataset).spent_rho == pytest.approx(0.125, rel=1e-12)


def test_an_iterative_query_is_one_charge_whatever_its_rounds(lung3: Workload,
                                                               tmp_path: Path) -> None:
    """A logistic regression's rounds spend shares of one (ε, δ) charge: each site's
    ledger holds one charge of ρ(ε, δ), and its rounds' spends add up to that ρ."""
    query = LogisticRegression("dead", ("age",))
    study = _study(lung3, tmp_path, LocalDP(epsilon=3.0), budget=11.0)
    result = study.run(query)
    rho = rho_of(3.0, 1e-6)  # OpenDP's conversion, independently of the ledger
    for site in study.sites:
        (charge,) = site.ledger.charges(site.dataset)
        assert charge.rho == pytest.approx(rho, rel=1e-12)
        spends = site.ledger.spends(charge.request, site.dataset)
        assert len(spends) == result.rounds > 1
        assert sum(spends) == pytest.approx(rho, rel=1e-9)
    study = _study(lung3, tmp_path / "less", LocalDP(epsilon=3.0), budget=2.0)
    with pytest.raises(BudgetError, match="cannot pay"):
        study.run(query)  # ρ(3, 10⁻⁶) does not fit in (2, 10⁻⁵): refused before any round
    assert all(site.ledger.budget(site.dataset).releases == 0 for site in study.sites)


def test_dp_refuses_what_it_cannot_protect(lung3: Workload, tmp_path: Path) -> None:
    with pytest.raises(PetError, match="site 'site-1' keeps no privacy ledger"):
        Study(lung3.sites(), backend=LocalDP()).run(Count())
    study = _study(lung3, tmp_path, LocalDP())
    with pytest.raises(PetError, match="releases a record's own value"):
        study.run(ExactQuantiles("age", (0.5,)))
    assert all(site.ledger.budget(site.dataset).releases == 0 for site in study.sites)
    with pytest.raises(PetError, match=r"epsilon must be a number in \[0.001, 10000\]"):
        LocalDP(epsilon=0.0)


@pytest.mark.parametrize("backend_class", [HEDP, MPCDP])
def test_shared_noise_has_exactly_the_central_variance(backend_class: type[CentralDP]) -> None:
    """Three sites each add a Gaussian share; the revealed sum's noise must be the central
    mechanism's N(0, σ²): mean, variance and 95% coverage over 4 × 2000 draws."""
    layout = Layout((Block.counts("n", 1), Block.sums("s", 1999)))
    backend = backend_class(epsilon=1.0, delta=1e-6, max_rows_per_site=10**4, max_sites=4)
    backend.open(3)
    try:
        partials = [np.full(layout.size, float(i)) for i in range(3)]
        noise, outside = [], 0
        for _ in range(4):
            aggregate = backend.reveal(backend.combine(
                [backend.protect(p, layout) for p in partials], layout), layout)
            noise.append(aggregate.total[1:] - 3.0)
            outside += np.sum(np.abs(noise[-1]) > aggregate.error_bounds[1:])
    finally:
        backend.close()
    noise = np.concatenate(noise)
    sigma = plan(layout, 1.0, 1e-6).scales()[1]
    n = noise.size
    assert abs(noise.mean()) <= Z * sigma / math.sqrt(n)
    assert abs(noise.var() - sigma**2) <= Z * sigma**2 * math.sqrt(2 / n)
    assert outside / n <= 0.05 + Z * math.sqrt(0.05 * 0.95 / n)  # the interval covers


def test_shared_noise_needs_delta_and_an_open_session() -> None:
    with pytest.raises(PetError, match="he\\+dp needs δ > 0"):
        HEDP(epsilon=1.0, delta=0.0)
    backend = HEDP(epsilon=1.0, delta=1e-6, max_rows_per_site=100, max_sites=2)
    layout = Layout((Block.counts("n", 1),))
    with pytest.raises(PetError, match="must be opened with the number of sites first"):
        backend.protect(np.ones(1), layout)


def test_noisy_answers_are_made_consistent(cohort_small: Workload, tmp_path: Path) -> None:
    """At a small ε the raw noisy sums break every consistency a user expects; the answers
    come back whole, non-negative, adding up, monotone and positive semi-definite."""
    study = _study(cohort_small, tmp_path, LocalDP(epsilon=0.05), budget=10.0)
    for _ in range(3):
        result = study.run(Histogram("age", tuple(range(30, 91, 5))))
        counts = result.value
        assert np.all(counts >= 0) and np.all(counts == np.rint(counts))
        assert counts.sum() == result.n
        curve = study.run(KaplanMeier("cvd_time", "cvd_event", grid=12)).value
        assert np.all(np.diff(curve.survival) <= 0)
        assert np.all((curve.survival >= 0) & (curve.survival <= 1))
        covariance = study.run(Covariance(("age", "bmi", "sbp", "hdl"))).value
        assert np.linalg.eigvalsh(covariance)[0] >= -1e-9 * np.abs(covariance).max()
    assert "post-processed for consistency" in result.privacy.confidentiality


def test_consistency_leaves_exact_answers_alone(lung3: Workload) -> None:
    study = lung3.study()
    pooled = lung3.pooled()
    edges = (18, 50, 60, 70, 100)
    want, _ = np.histogram(pooled["age"].dropna(), bins=edges)
    np.testing.assert_array_equal(study.run(Histogram("age", edges)).value, want)
    columns = ["age", "meal_cal", "wt_loss"]
    np.testing.assert_allclose(study.run(Covariance(tuple(columns))).value,
                               pooled[columns].dropna().cov().to_numpy(), rtol=1e-9)


def test_dp_tables_answer_on_small_sites_unless_the_site_guards_them(
        lung3: Workload, tmp_path: Path) -> None:
    """Ten-year age bins leave cells below 3 at some site: exact backends refuse, a DP
    histogram answers; sites with `min_cell_under_dp` answer it under dp (each with its
    own noisy cells below 3 suppressed) and refuse it under he+dp, charging nothing."""
    query = Histogram("age", tuple(range(10, 111, 10)))
    with pytest.raises(DisclosureError):
        lung3.study(policy=DisclosurePolicy(min_cell=3)).run(query)
    sites = lung3.sites(DisclosurePolicy(min_cell=3), ledgers=tmp_path)
    for site in sites:
        site.ledger.set_budget(site.dataset, 10.0, 1e-5)
    counts = Study(sites, backend=LocalDP(epsilon=1.0)).run(query).value
    assert counts.shape == (10,)
    guarded = DisclosurePolicy(min_cell=3, min_cell_under_dp=True)
    sites = lung3.sites(guarded, ledgers=tmp_path / "guarded")
    for site in sites:
        site.ledger.set_budget(site.dataset, 10.0, 1e-5)
    assert Study(sites, backend=LocalDP(epsilon=1.0)).run(query).value.shape == (10,)
    with pytest.raises(DisclosureError, match="ask under dp"), \
            Study(sites, backend=HEDP(epsilon=1.0, delta=1e-6)) as shared:
        shared.run(query)
    assert all(site.ledger.budget(site.dataset).releases == 1 for site in sites)


def test_a_noisy_correlation_is_a_correlation_matrix_not_a_sign_pattern(
        lung3: Workload, tmp_path: Path) -> None:
    """On 228 patients at ε = 1 the noisy covariance is often indefinite; projecting it
    first collapsed it onto one direction, every correlation ±1. Now a column whose noisy
    spread does not stand out of its noise has NaN correlations (on lung at ε = 1 with
    the schema's bounds, every column: nothing is estimable), and the rest is the
    nearest correlation matrix: unit diagonal, positive semi-definite, and as far from
    ±1 as the data are (these columns correlate by |r| < 0.35)."""
    larger = cohort(5000, 3, 11)
    for workload, columns in ((lung3, ("age", "ph_karno", "wt_loss")),
                              (larger, ("age", "bmi", "hdl"))):
        exact = workload.pooled()[list(columns)].dropna().corr().to_numpy()
        assert np.max(np.abs(exact[np.triu_indices(3, 1)])) < 0.35
        study = _study(workload, tmp_path / workload.name, LocalDP(epsilon=1.0),
                       budget=1000.0)
        extreme, finite = [], []
        for _ in range(20):
            r = study.run(Correlation(columns)).value
            kept = np.isfinite(np.diag(r))
            inner = r[np.ix_(kept, kept)]
            assert np.all(np.isnan(r[~kept])) and np.all(np.isnan(r[:, ~kept]))
            assert np.allclose(np.diag(inner), 1.0) and np.all(np.abs(inner) <= 1.0)
            assert inner.size == 0 or np.linalg.eigvalsh(inner)[0] >= -1e-9
            off = inner[np.triu_indices(len(inner), 1)]
            extreme.extend(np.abs(off) > 0.99)
            finite.append(kept.all())
        if workload is larger:  # 15 000 rows: every spread is estimable
            assert all(finite) and np.mean(extreme) < 0.1


def test_a_pure_dp_query_cannot_be_released_past_its_epsilon(lung3: Workload,
                                                            tmp_path: Path) -> None:
    """A peer asks the last round of a pure-ε logistic regression (8/15 of its ε) twice,
    with different coefficients: two such releases would spend 16/15 of ε. Under the
    same round number the release store refuses the second; under the next one the
    site refuses a round that does not carry its iteration; and the ledger caps the
    request anyway: counted as ρ = (s·ε)²/2 three such releases would fit in ε²/2, so
    each spends s·ε²/2 instead."""
    sites = lung3.sites(NO_CELL_LIMIT, ledgers=tmp_path)
    site = sites[0]
    site.ledger.set_budget(site.dataset, 10.0)
    query = LogisticRegression("dead", ("age",))
    backend = LocalDP(epsilon=1.0, delta=0.0)
    site.contribute(query, LogisticState(3, (0.0, 0.0)), backend, request="peer", round=4)
    other = LogisticState(3, (0.1, 0.0))
    with pytest.raises(ReleaseError, match="another state"):
        site.contribute(query, other, backend, request="peer", round=4)
    with pytest.raises(PetError, match="round 5 must carry iteration 4, not 3"):
        site.contribute(query, other, backend, request="peer", round=5)
    with pytest.raises(BudgetError, match="cannot spend"):  # the ledger's own cap
        assert site.ledger is not None
        site.ledger.spend(site.dataset, "peer", release_rho(
            query.layout(site.schema, other), 1.0, 0.0, None), allowed=0.5, query="again")
    assert sum(site.ledger.spends("peer", site.dataset)) == pytest.approx(8 / 15 * 0.5)
