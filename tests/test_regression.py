"""Linear and logistic regression across sites against statsmodels on the pooled rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from pet.errors import QueryError
from pet.queries import LinearRegression, LogisticRegression
from pet.workloads import Workload
from tests.conftest import NO_CELL_LIMIT


def design(frame: pd.DataFrame, predictors: list[str], categories: dict[str, list]) -> pd.DataFrame:
    """Pooled model matrix with an intercept and reference-coded categories."""
    columns = {"intercept": np.ones(len(frame))}
    for name in predictors:
        if name in categories:
            for level in categories[name][1:]:
                columns[f"{name}[{level}]"] = (frame[name] == level).astype(float).to_numpy()
        else:
            columns[name] = frame[name].astype(float).to_numpy()
    return pd.DataFrame(columns, index=frame.index)


def test_ols_on_diabetes_matches_statsmodels(diabetes3: Workload) -> None:
    predictors = ["age", "sex", "bmi", "bp", "tc", "ldl", "hdl", "tch", "ltg", "glu"]
    fit = diabetes3.study(policy=NO_CELL_LIMIT).run(
        LinearRegression("progression", tuple(predictors))).value
    pooled = diabetes3.pooled()
    reference = sm.OLS(pooled.progression.astype(float),
                       design(pooled, predictors, {"sex": [1, 2]})).fit()
    assert fit.names == tuple(reference.params.index)
    np.testing.assert_allclose(fit.coef, reference.params, rtol=1e-7)
    np.testing.assert_allclose(fit.se, reference.bse, rtol=1e-7)
    np.testing.assert_allclose(fit.pvalues(), reference.pvalues, rtol=1e-6, atol=1e-12)
    assert fit.r2 == pytest.approx(reference.rsquared, rel=1e-9)
    assert fit.adj_r2 == pytest.approx(reference.rsquared_adj, rel=1e-9)
    assert fit.sigma == pytest.approx(np.sqrt(reference.scale), rel=1e-9)
    assert fit.dof == reference.df_resid


def test_ols_on_lung_drops_incomplete_rows_like_statsmodels(lung3: Workload) -> None:
    predictors = ["age", "sex", "ph_ecog", "meal_cal"]
    result = lung3.study(policy=NO_CELL_LIMIT).run(LinearRegression("wt_loss", tuple(predictors)))
    pooled = lung3.pooled().dropna(subset=["wt_loss", *predictors])
    reference = sm.OLS(pooled.wt_loss.astype(float),
                       design(pooled, predictors, {"sex": ["male", "female"]})).fit()
    np.testing.assert_allclose(result.value.coef, reference.params, rtol=1e-7)
    np.testing.assert_allclose(result.value.se, reference.bse, rtol=1e-7)
    assert result.n == len(pooled)


def test_ols_without_intercept_matches_statsmodels(diabetes3: Workload) -> None:
    fit = diabetes3.study(policy=NO_CELL_LIMIT).run(
        LinearRegression("progression", ("bmi", "bp"), intercept=False)).value
    pooled = diabetes3.pooled()
    reference = sm.OLS(pooled.progression, pooled[["bmi", "bp"]]).fit()
    np.testing.assert_allclose(fit.coef, reference.params, rtol=1e-8)
    np.testing.assert_allclose(fit.se, reference.bse, rtol=1e-8)
    assert fit.r2 == pytest.approx(reference.rsquared, rel=1e-9)


def test_logistic_on_breast_cancer_matches_statsmodels(breast: Workload) -> None:
    predictors = ["mean_radius", "mean_texture", "mean_smoothness", "worst_concave_points"]
    result = breast.study(policy=NO_CELL_LIMIT).run(
        LogisticRegression("malignant", tuple(predictors)))
    pooled = breast.pooled()
    reference = sm.Logit(pooled.malignant.astype(float), design(pooled, predictors, {})).fit(
        disp=0, tol=1e-12, maxiter=100)
    fit = result.value
    assert fit.converged
    assert result.rounds == fit.iterations
    np.testing.assert_allclose(fit.coef, reference.params, rtol=1e-6)
    np.testing.assert_allclose(fit.se, reference.bse, rtol=1e-6)
    assert fit.log_likelihood == pytest.approx(reference.llf, rel=1e-8)


def test_logistic_on_lung_with_categories_matches_statsmodels(lung3: Workload) -> None:
    predictors = ["age", "sex", "ph_ecog"]
    result = lung3.study(policy=NO_CELL_LIMIT).run(LogisticRegression("dead", tuple(predictors)))
    pooled = lung3.pooled().dropna(subset=predictors)
    reference = sm.Logit(pooled.dead.astype(float),
                         design(pooled, predictors, {"sex": ["male", "female"]})).fit(disp=0)
    np.testing.assert_allclose(result.value.coef, reference.params, rtol=1e-6)
    np.testing.assert_allclose(result.value.se, reference.bse, rtol=1e-6)


def test_logistic_stops_at_max_iter_and_says_so(breast: Workload) -> None:
    result = breast.study(policy=NO_CELL_LIMIT).run(
        LogisticRegression("malignant", ("mean_radius",), max_iter=2))
    assert result.rounds == 2
    assert not result.value.converged


def test_collinear_predictors_get_a_clear_error(lung3: Workload) -> None:
    with pytest.raises(QueryError, match="collinear"):
        lung3.study(policy=NO_CELL_LIMIT).run(
            LinearRegression("wt_loss", ("age", "sex"), where="sex == 'female'"))


@pytest.mark.parametrize(
    ("query", "words"),
    [
        (LinearRegression("sex", ("age",)), "must be numeric"),
        (LogisticRegression("age", ("sex",)), "must be boolean"),
        (LinearRegression("age", ("age",)), "distinct"),
        (LinearRegression("age", ("height",)), "unknown column 'height'"),
    ],
)
def test_bad_models_are_refused_before_any_data_is_read(lung3: Workload, query,
                                                        words: str) -> None:
    with pytest.raises(QueryError, match=words):
        lung3.study().run(query)
