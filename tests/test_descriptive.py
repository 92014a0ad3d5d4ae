"""Descriptive statistics, tables and covariances across sites against numpy/pandas on the
pooled rows (complete cases of the subgroup, as pet documents)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pet.backends import Backend, LocalDP, Plaintext
from pet.backends.base import Conclusion
from pet.errors import QueryError
from pet.queries import (
    Contingency,
    Correlation,
    Count,
    Covariance,
    Histogram,
    LinearRegression,
    Mean,
    Quantiles,
    Query,
    StdDev,
    Sum,
    Variance,
)
from pet.schema import Schema
from pet.workloads import Workload
from tests.conftest import NO_CELL_LIMIT


def run(workload: Workload, query):
    return workload.study(policy=NO_CELL_LIMIT).run(query)


@pytest.mark.parametrize(
    ("column", "where", "mask"),
    [
        ("age", None, lambda f: f.index >= 0),
        ("wt_loss", None, lambda f: f.index >= 0),
        ("meal_cal", "sex == 'female' and age >= 60",
         lambda f: (f.sex == "female") & (f.age >= 60)),
        ("ph_karno", "not ph_ecog in [0, 1] or dead == 0",
         lambda f: f.ph_ecog.notna() & (~f.ph_ecog.isin([0, 1]) | (f.dead == 0))),
    ],
)
def test_moments_on_lung_match_pandas(lung3: Workload, column: str, where, mask) -> None:
    pooled = lung3.pooled()
    values = pooled.loc[mask(pooled), column]
    observed = values.dropna()
    assert run(lung3, Sum(column, where=where)).value == pytest.approx(observed.sum(), rel=1e-12)
    assert run(lung3, Mean(column, where=where)).value == pytest.approx(observed.mean(), rel=1e-12)
    result = run(lung3, Variance(column, where=where))
    assert result.value == pytest.approx(observed.var(ddof=1), rel=1e-10)
    assert result.n == len(observed)
    if lung3.schema[column].nullable:
        assert result.missing[column] == values.isna().sum()
    else:  # a column that cannot be missing has no missing count (and no noise on one)
        assert column not in result.missing and not values.isna().any()
    assert run(lung3, StdDev(column, where=where)).value == pytest.approx(observed.std(), rel=1e-10)


def test_count_with_filter_matches_pandas(lung3: Workload) -> None:
    pooled = lung3.pooled()
    expected = ((pooled.sex == "female") & (pooled.age >= 50)).sum()
    assert run(lung3, Count(where="sex == 'female' and age >= 50")).value == expected


def test_filter_on_a_missing_value_counts_it_as_missing(lung3: Workload) -> None:
    result = run(lung3, Count(where="ph_ecog >= 2"))
    pooled = lung3.pooled()
    assert result.value == (pooled.ph_ecog >= 2).sum()
    assert result.missing == {"ph_ecog": pooled.ph_ecog.isna().sum()}


def test_breast_cancer_means_and_histogram(breast: Workload) -> None:
    pooled = breast.pooled()
    for column in ("mean_radius", "worst_area", "smoothness_error"):
        assert run(breast, Mean(column)).value == pytest.approx(pooled[column].mean(), rel=1e-12)
    edges = tuple(np.linspace(0, 50, 26))
    counts, _ = np.histogram(pooled.mean_radius, bins=edges)
    np.testing.assert_array_equal(run(breast, Histogram("mean_radius", edges)).value, counts)


def test_histogram_puts_the_upper_bound_in_the_last_bin(diabetes3: Workload) -> None:
    edges = (18, 40, 60, 100)
    counts, _ = np.histogram(diabetes3.pooled().age, bins=edges)
    np.testing.assert_array_equal(run(diabetes3, Histogram("age", edges)).value, counts)


def test_contingency_matches_pandas_crosstab(lung3: Workload) -> None:
    pooled = lung3.pooled()
    expected = pd.crosstab(pooled.sex, pooled.dead).reindex(index=["male", "female"],
                                                            columns=[False, True])
    np.testing.assert_array_equal(run(lung3, Contingency(("sex", "dead"))).value,
                                  expected.to_numpy())


def test_three_way_marginal_with_binned_numeric_column(lung3: Workload) -> None:
    edges = (18, 50, 65, 100)
    pooled = lung3.pooled().dropna(subset=["ph_ecog"])
    age_bin = pd.cut(pooled.age, edges, right=False, labels=False)
    result = run(lung3, Contingency(("sex", "dead", "age"), bins={"age": edges},
                                    where="ph_ecog <= 1"))
    mask = (pooled.ph_ecog <= 1).to_numpy()
    expected = np.zeros((2, 2, 3))
    for sex, dead, age in zip(pooled.sex[mask], pooled.dead[mask], age_bin[mask], strict=True):
        expected[["male", "female"].index(sex), int(dead), int(age)] += 1
    np.testing.assert_array_equal(result.value, expected)


@pytest.mark.parametrize("probs", [(0.1, 0.5, 0.9), (0.25, 0.75), (0.01, 0.99)])
def test_quantiles_lie_within_one_grid_bin_of_numpy(diabetes3: Workload, probs) -> None:
    pooled = diabetes3.pooled()
    query = Quantiles("bmi", probs, bins=2000)
    expected = np.quantile(pooled.bmi, probs, method="inverted_cdf")
    value = run(diabetes3, query).value
    assert np.all(np.abs(value - expected) <= query.resolution(diabetes3.schema))


def test_covariance_and_correlation_match_numpy(diabetes3: Workload) -> None:
    columns = ("age", "bmi", "bp", "ltg", "progression")
    pooled = diabetes3.pooled()[list(columns)].to_numpy(dtype=float)
    np.testing.assert_allclose(run(diabetes3, Covariance(columns)).value,
                               np.cov(pooled, rowvar=False), rtol=1e-10)
    np.testing.assert_allclose(run(diabetes3, Correlation(columns)).value,
                               np.corrcoef(pooled, rowvar=False), rtol=1e-10, atol=1e-12)


def test_covariance_uses_complete_cases(lung3: Workload) -> None:
    columns = ("age", "meal_cal", "wt_loss")
    pooled = lung3.pooled()[list(columns)].dropna()
    result = run(lung3, Covariance(columns))
    np.testing.assert_allclose(result.value, pooled.cov().to_numpy(), rtol=1e-10)
    assert result.n == len(pooled)


def test_a_constant_column_has_no_correlation_as_in_pandas(lung3: Workload) -> None:
    columns = ["age", "dead", "wt_loss"]
    pooled = lung3.pooled()
    expected = pooled[pooled.dead == 1][columns].dropna().corr().to_numpy()
    value = run(lung3, Correlation(tuple(columns), where="dead == 1")).value
    np.testing.assert_allclose(value, expected, rtol=1e-10, equal_nan=True)


def conclude(backend: Backend, query: Query, schema: Schema, vector: object) -> Conclusion:
    """The answer a backend gives when the sites' summed partials come to `vector` (for DP,
    the noisy sum itself: its noise is already in it)."""
    layout = query.layout(schema)
    message = np.asarray(vector, dtype="<f8").tobytes()
    combined = backend.combine([message], layout)
    return backend.conclude(query, schema, None, combined, layout)


def test_a_noisy_count_below_zero_is_answered_zero_with_its_guarantee(lung3: Workload) -> None:
    conclusion = conclude(LocalDP(epsilon=0.1, delta=0.0), Count(where="age > 80"),
                          lung3.schema, [-2.6])
    assert conclusion.outcome == 0.0
    assert conclusion.privacy.epsilon == 0.1 and conclusion.error_bound > 0
    with pytest.raises(QueryError, match="no complete rows matched"):
        conclude(Plaintext(), Count(where="age > 80"), lung3.schema, [0.0])


def nan(shape: tuple[int, ...]) -> np.ndarray:
    return np.full(shape, np.nan)


@pytest.mark.parametrize(("query", "expected"), [
    (Mean("age"), None),  # the midpoint of the public bounds, below
    (Variance("age"), np.nan),
    (StdDev("age"), np.nan),
    (Covariance(("age", "wt_loss")), nan((2, 2))),
    (Correlation(("age", "wt_loss")), nan((2, 2))),
])
def test_statistics_that_divide_by_a_noisy_n_of_zero_are_answered(
        lung3: Workload, query: Query, expected: object) -> None:
    schema = lung3.schema
    vector = np.zeros(query.layout(schema).size)
    vector[0] = -3.0  # the noisy n; every sum is noise about zero
    value = conclude(LocalDP(epsilon=0.5, delta=0.0), query, schema, vector).outcome
    lower, upper = schema["age"].bounds()
    np.testing.assert_array_equal(value, (lower + upper) / 2 if expected is None else expected)
    vector[0] = 0.0
    with pytest.raises(QueryError, match="no complete rows matched"):
        conclude(Plaintext(), query, schema, vector)


def test_a_regression_on_a_noisy_n_too_small_has_nan_coefficients(lung3: Workload) -> None:
    query = LinearRegression("wt_loss", ("age", "sex"))
    vector = np.zeros(query.layout(lung3.schema).size)
    vector[0] = 2.0  # fewer noisy rows than the three parameters
    fit = conclude(LocalDP(epsilon=0.5, delta=0.0), query, lung3.schema, vector).outcome
    assert fit.names == ("intercept", "age", "sex[female]") and fit.n == 2
    assert np.isnan(fit.coef).all() and np.isnan(fit.se).all()
    with pytest.raises(QueryError, match="2 rows cannot fit 3 parameters"):
        conclude(Plaintext(), query, lung3.schema, vector)


def test_a_noisy_mean_stays_within_the_public_bounds(lung3: Workload) -> None:
    query = Mean("age")
    lower, upper = lung3.schema["age"].bounds()
    for noisy_sum, bound in ((40.0, upper), (-40.0, lower)):  # |Σ scaled| > n = 4
        value = conclude(LocalDP(epsilon=0.5, delta=0.0), query, lung3.schema,
                         [4.0, noisy_sum]).outcome
        assert value == bound
    exact = conclude(Plaintext(), query, lung3.schema, [4.0, 2.0]).outcome
    assert exact == pytest.approx(lower + (upper - lower) * 0.75)


def test_variance_of_one_noisy_row_is_nan_but_of_one_exact_row_an_error(
        lung3: Workload) -> None:
    vector = [1.0, 0.5, 0.25]  # n, Σs, Σs² (age is never missing)
    assert np.isnan(conclude(LocalDP(epsilon=0.5, delta=0.0), Variance("age"), lung3.schema,
                             vector).outcome)
    with pytest.raises(QueryError, match="at least 2 rows"):
        conclude(Plaintext(), Variance("age"), lung3.schema, vector)
