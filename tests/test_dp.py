"""The `dp` backend: each site's release is noised by OpenDP and charged to its ledger
before it leaves; intervals hold their coverage; iterative queries pay up front.
Statistical checks allow 5.5 standard errors (false failure below 10⁻⁶ in all)."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import pytest

from pet.backends.central_dp import HEDP, MPCDP, CentralDP
from pet.backends.dp import LocalDP
from pet.errors import PetError
from pet.layout import Block, Layout
from pet.ledger import BudgetError
from pet.mechanisms import calibrate
from pet.queries import (
    Count,
    Covariance,
    ExactQuantiles,
    Histogram,
    KaplanMeier,
    LogisticRegression,
    Mean,
)
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
    for _ in range(draws):
        aggregate = backend.reveal(backend.combine(
            [backend.protect(p, layout) for p in partials], layout), layout)
        outside += abs(aggregate.total[2] - exact[2]) > aggregate.error_bounds[2]
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
    for site in study.sites:
        assert site.ledger.budget(site.dataset).spent_epsilon == 0.5


def test_iterative_queries_pay_every_round_up_front(lung3: Workload, tmp_path: Path) -> None:
    query = LogisticRegression("dead", ("age",), max_iter=4)
    study = _study(lung3, tmp_path, LocalDP(epsilon=3.0), budget=11.0)
    with pytest.raises(BudgetError, match="cannot pay ε=12"):
        study.run(query)  # 4 rounds × ε = 3 do not fit in 11: refused before any release
    assert all(site.ledger.budget(site.dataset).releases == 0 for site in study.sites)
    study = _study(lung3, tmp_path / "more", LocalDP(epsilon=3.0), budget=12.0)
    with contextlib.suppress(PetError):  # noise may make the Hessian indefinite;
        study.run(query)  # the charge stands either way
    assert [s.ledger.budget(s.dataset).spent_epsilon for s in study.sites] == [12.0] * 3


def test_dp_refuses_what_it_cannot_protect(lung3: Workload, tmp_path: Path) -> None:
    with pytest.raises(PetError, match="site 'site-1' keeps no privacy ledger"):
        Study(lung3.sites(), backend=LocalDP()).run(Count())
    study = _study(lung3, tmp_path, LocalDP())
    with pytest.raises(PetError, match="releases a record's own value"):
        study.run(ExactQuantiles("age", (0.5,)))
    assert all(site.ledger.budget(site.dataset).releases == 0 for site in study.sites)
    with pytest.raises(PetError, match=r"epsilon must be a number in \(0, 10000\]"):
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
    sigma = calibrate(layout, 1.0, 1e-6).scale
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
