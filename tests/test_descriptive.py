"""Descriptive statistics, tables and covariances across sites against numpy/pandas on the
pooled rows (complete cases of the subgroup, as pet documents)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pet.queries import (
    Contingency,
    Correlation,
    Count,
    Covariance,
    Histogram,
    Mean,
    Quantiles,
    StdDev,
    Sum,
    Variance,
)
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
    assert result.missing[column] == values.isna().sum()
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
