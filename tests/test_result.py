"""A result as a table (`to_frame`), a report (`summary`) and plain JSON (`to_dict`), checked
against statsmodels and scipy on the pooled rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats

from pet.ledger import Ledger
from pet.plain import plain
from pet.queries import Count, KaplanMeier, LinearRegression, Mean, TTest
from pet.report import summarize
from pet.site import Site
from pet.study import Study
from pet.workloads import Workload


def _keys(data: Any) -> list[str]:
    """Every object key of a JSON structure, at any depth."""
    if isinstance(data, dict):
        return [*data, *(k for v in data.values() for k in _keys(v))]
    if isinstance(data, list):
        return [k for v in data for k in _keys(v)]
    return []


def test_a_linear_fit_as_a_frame_and_as_json_matches_statsmodels(lung3: Workload) -> None:
    result = lung3.study().run(LinearRegression("wt_loss", ("age", "sex")))
    pooled = lung3.pooled().dropna(subset=["wt_loss"])
    design = sm.add_constant(pd.DataFrame({
        "age": pooled.age, "sex[female]": (pooled.sex == "female").astype(float)}))
    ols = sm.OLS(pooled.wt_loss, design).fit()
    frame = result.to_frame()
    assert list(frame.index) == ["intercept", "age", "sex[female]"]
    np.testing.assert_allclose(frame.coef, ols.params, rtol=1e-9)
    np.testing.assert_allclose(frame.se, ols.bse, rtol=1e-9)
    np.testing.assert_allclose(frame.p, ols.pvalues, rtol=1e-7)

    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert not [k for k in _keys(data) if k.startswith("__")]  # no codec wrappers
    assert [row["term"] for row in data["table"]] == list(frame.index)
    np.testing.assert_allclose([row["coef"] for row in data["table"]], ols.params, rtol=1e-9)
    assert data["value"]["type"] == "LinearFit" and data["missing"] == {"wt_loss": 14}

    assert summarize(result.value).startswith("intercept ")
    report = result.summary()
    assert "214 rows from 3 sites (left out as missing: wt_loss 14)" in report
    assert frame.to_string() in report


def test_a_count_is_a_whole_number(lung3: Workload) -> None:
    result = lung3.study().run(Count(where="sex == 'female'"))
    assert result.value == 90 and isinstance(result.value, int)
    assert '"value": 90,' in json.dumps(result.to_dict())
    assert summarize(result.value) == "90"
    assert summarize(12345) == "12345"  # a count is never shown as 1.234e+04


def test_a_test_and_a_curve_as_frames(lung3: Workload) -> None:
    pooled = lung3.pooled()
    test = lung3.study().run(TTest("age", "sex")).to_frame()
    welch = stats.ttest_ind(pooled.age[pooled.sex == "male"], pooled.age[pooled.sex == "female"],
                            equal_var=False)
    assert abs(test.statistic[0]) == abs(welch.statistic)  # sign: first group against second
    assert abs(test.p[0] - welch.pvalue) < 1e-12
    curve = lung3.study().run(KaplanMeier("time", "dead", grid=(365, 1100)))
    frame = curve.to_frame()
    assert list(frame.index) == [365.0, 1100.0]
    assert frame.events.sum() == pooled.dead.sum()
    assert frame.at_risk.iloc[0] == len(pooled)


def test_a_dp_answer_s_frame_carries_its_interval(lung3: Workload, tmp_path: Path) -> None:
    sites = [Site(name, table, ledger=Ledger(tmp_path / f"{name}.sqlite"))
             for name, table in lung3.tables.items()]
    for site in sites:
        site.ledger.set_budget(site.dataset, 1.0, 1e-6)
    assert {site.dataset for site in sites} == {lung3.schema.name}  # the schema's name
    with Study(sites, backend="dp", epsilon=1.0, delta=1e-6) as study:
        frame = study.run(Mean("age")).to_frame()
    assert list(frame.columns) == ["value", "interval_low", "interval_high"]
    assert frame.interval_low[0] < frame.value[0] < frame.interval_high[0]


def test_plain_json_has_no_values_json_cannot_hold() -> None:
    values = {"na": pd.NA, "nat": pd.NaT, "nan": np.nan, "inf": -np.inf,
              "when": pd.Timestamp("2026-01-02T03:04:05"), "series": pd.Series([1, 2]),
              "flag": np.bool_(True), "count": np.int64(3)}
    assert json.loads(json.dumps(plain(values), allow_nan=False)) == {
        "na": None, "nat": None, "nan": None, "inf": None, "when": "2026-01-02T03:04:05",
        "series": [1, 2], "flag": True, "count": 3}
