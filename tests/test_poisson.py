"""Poisson regression for rates (log link, offset log person-time) across sites against
statsmodels' GLM Poisson on the pooled rows, under every backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from pet.backends.central_dp import HEDP
from pet.backends.dp import LocalDP
from pet.errors import QueryError
from pet.queries import PoissonRegression
from pet.queries.regression import PoissonFit
from pet.site import Site
from pet.study import Study
from pet.table import FrameTable
from pet.workloads import Workload, cohort
from tests.conftest import NO_CELL_LIMIT
from tests.test_regression import design

LUNG = ("age", "sex", "ph_ecog")
COHORT = ("age", "sex", "smoking", "diabetes")
SEX = {"sex": ["male", "female"]}


@pytest.fixture(scope="module")
def cohort3() -> Workload:
    return cohort(3000, 3, 5)


def glm(frame: pd.DataFrame, outcome: str, predictors: tuple[str, ...],
        categories: dict[str, list], exposure: str | None = None, **fit: str) -> object:
    """statsmodels' Poisson GLM of the pooled rows, offset log(exposure)."""
    offset = None if exposure is None else np.log(frame[exposure].astype(float))
    model = sm.GLM(frame[outcome].astype(float), design(frame, list(predictors), categories),
                   family=sm.families.Poisson(), offset=offset)
    return model.fit(tol=1e-12, **fit)


def test_death_rates_on_lung_match_statsmodels(lung3: Workload) -> None:
    """Deaths per day of follow-up, rows missing ph_ecog dropped as statsmodels drops them:
    coefficients, SEs and the full Poisson log-likelihood (with log y!) agree."""
    result = lung3.study(policy=NO_CELL_LIMIT).run(
        PoissonRegression("dead", LUNG, exposure="time"))
    pooled = lung3.pooled().dropna(subset=list(LUNG))
    reference = glm(pooled, "dead", LUNG, SEX, "time")
    fit = result.value
    assert isinstance(fit, PoissonFit) and fit.converged and not fit.robust
    assert fit.names == tuple(reference.params.index)
    assert result.rounds == fit.iterations and fit.n == len(pooled)
    np.testing.assert_allclose(fit.coef, reference.params, rtol=1e-9)
    np.testing.assert_allclose(fit.se, reference.bse, rtol=1e-8)
    assert fit.log_likelihood == pytest.approx(reference.llf, rel=1e-10)


def test_robust_errors_are_statsmodels_hc0(lung3: Workload) -> None:
    fit = lung3.study(policy=NO_CELL_LIMIT).run(
        PoissonRegression("dead", LUNG, exposure="time", robust=True)).value
    pooled = lung3.pooled().dropna(subset=list(LUNG))
    reference = glm(pooled, "dead", LUNG, SEX, "time", cov_type="HC0")
    assert fit.robust
    np.testing.assert_allclose(fit.coef, reference.params, rtol=1e-9)
    np.testing.assert_allclose(fit.se, reference.bse, rtol=1e-8)
    assert not np.allclose(fit.se, glm(pooled, "dead", LUNG, SEX, "time").bse, rtol=1e-2)


def test_an_integer_count_without_exposure(lung3: Workload) -> None:
    """A count outcome (the ECOG score, 0–4) with no offset and no intercept."""
    query = PoissonRegression("ph_ecog", ("age", "wt_loss"), intercept=False)
    fit = lung3.study(policy=NO_CELL_LIMIT).run(query).value
    pooled = lung3.pooled().dropna(subset=["ph_ecog", "age", "wt_loss"])
    reference = sm.GLM(pooled.ph_ecog.astype(float), pooled[["age", "wt_loss"]].astype(float),
                       family=sm.families.Poisson()).fit(tol=1e-12)
    np.testing.assert_allclose(fit.coef, reference.params, rtol=1e-8)
    np.testing.assert_allclose(fit.se, reference.bse, rtol=1e-8)
    assert fit.log_likelihood == pytest.approx(reference.llf, rel=1e-10)


def test_incidence_rate_ratios_on_the_cohort(cohort3: Workload) -> None:
    """The epidemiologist's example: CVD events per person-year of follow-up by age, sex,
    smoking and diabetes; rate ratios and their 95% CIs as exp of statsmodels'."""
    query = PoissonRegression("cvd_event", COHORT, exposure="cvd_time")
    fit = cohort3.study(policy=NO_CELL_LIMIT).run(query).value
    pooled = cohort3.pooled()
    categories = {"sex": ["female", "male"], "smoking": ["never", "former", "current"]}
    reference = glm(pooled, "cvd_event", COHORT, categories, "cvd_time")
    ratios = fit.rate_ratios()
    assert list(ratios.index) == list(reference.params.index)
    np.testing.assert_allclose(ratios.rate_ratio, np.exp(reference.params), rtol=1e-8)
    np.testing.assert_allclose(ratios[["ci_low", "ci_high"]], np.exp(reference.conf_int()),
                               rtol=1e-7)
    assert ratios.loc["diabetes", "ci_low"] > 1  # diabetes raises the CVD rate here


@pytest.mark.parametrize("backend", ["he", "mpc"])
def test_encrypted_and_shared_fits_match_plaintext(cohort3: Workload, backend: str) -> None:
    """Same Newton path as plaintext: CKKS and fixed-point errors (the solve stays inside
    MPC, at 2⁻¹⁶ resolution) move the coefficients by under 5% of their SEs here."""
    query = PoissonRegression("cvd_event", COHORT, exposure="cvd_time")
    exact = cohort3.study(policy=NO_CELL_LIMIT).run(query).value
    with cohort3.study(backend, policy=NO_CELL_LIMIT) as study:
        result = study.run(query)
    fit = result.value
    assert fit.converged
    assert np.all(np.abs(fit.coef - exact.coef) <= 0.05 * exact.se)
    np.testing.assert_allclose(fit.se, exact.se, rtol=1e-3)
    assert fit.log_likelihood == pytest.approx(exact.log_likelihood, abs=1e-2)
    assert result.error_bound > 0


def test_robust_errors_are_refused_under_mpc(lung3: Workload) -> None:
    with lung3.study("mpc", policy=NO_CELL_LIMIT) as study, \
            pytest.raises(QueryError, match="robust"):
        study.run(PoissonRegression("dead", LUNG, exposure="time", robust=True))


@pytest.mark.parametrize("kind", [LocalDP, HEDP])
def test_dp_fit_is_one_charge_near_the_exact_fit(cohort3: Workload, tmp_path: Path,
                                                 kind: type) -> None:
    """Under DP the rounds share one charge; at a large ε the noisy fit's interval holds
    the exact fit (2.5 half-widths), at a small one the fit still answers."""
    sites = cohort3.sites(NO_CELL_LIMIT, ledgers=tmp_path)
    for site in sites:
        site.ledger.set_budget(site.dataset, 1000.0, 1e-3)
    query = PoissonRegression("cvd_event", COHORT, exposure="cvd_time")
    exact = cohort3.study(policy=NO_CELL_LIMIT).run(query).value
    with Study(sites, backend=kind(epsilon=300.0, delta=1e-6)) as study:
        result = study.run(query)
        assert result.rounds == query.dp_rounds
        assert all(len(site.ledger.charges(site.dataset)) == 1 for site in sites)
        low, high = result.interval
        assert np.all(np.isfinite(low))
        assert np.all(np.abs(result.value.coef - exact.coef) <= 2.5 * (high - low) / 2)
        small = study.run(PoissonRegression("cvd_event", COHORT, exposure="cvd_time",
                                            dp_rounds=2))
        assert np.all(np.isfinite(small.value.coef)) and small.rounds == 2


def test_bad_models_are_refused_by_name(lung3: Workload) -> None:
    study = lung3.study(policy=NO_CELL_LIMIT)
    cases = [(PoissonRegression("wt_loss", ("age",)), "must be a count"),
             (PoissonRegression("dead", ("age",), exposure="sex"), "numeric person-time"),
             (PoissonRegression("dead", ("age",), exposure="age"), "cannot also be"),
             (PoissonRegression("dead", ("age",), exposure="wt_loss"), "upper bound|person"),
             (PoissonRegression("dead", ("age",), dp_rounds=1), "dp_rounds")]
    for query, message in cases:
        with pytest.raises(QueryError, match=message):
            study.run(query)


def test_a_row_without_person_time_is_refused_naming_the_column(lung3: Workload) -> None:
    """A time-to-event column's public lower bound is 0, so a row with no follow-up can
    exist; its log offset is undefined, and the site says so instead of dropping it."""
    frame = lung3.pooled().reset_index(drop=True)
    frame.loc[3, "time"] = 0.0
    site = Site("site-1", FrameTable(frame, lung3.schema), policy=NO_CELL_LIMIT)
    query = PoissonRegression("dead", ("age",), exposure="time")
    with pytest.raises(QueryError, match="'time' is <= 0"):
        Study([site]).run(query)
    kept = Study([site]).run(PoissonRegression("dead", ("age",), exposure="time",
                                               where="time > 0"))
    assert kept.value.n == len(frame) - 1
