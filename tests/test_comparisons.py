"""Group comparisons (t-test, ANOVA, χ²) and the log-rank test across sites, against
scipy and lifelines on the pooled rows, under every backend."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lifelines.statistics import logrank_test, multivariate_logrank_test
from scipy import stats

from pet import codec, hypothesis
from pet.backends.central_dp import HEDP
from pet.backends.dp import LocalDP
from pet.backends.he import HE
from pet.backends.mpc import MPC
from pet.errors import QueryError
from pet.mpc.parties import PartyConfig
from pet.queries import Anova, ChiSquare, LogRank, TTest, parse
from pet.queries.base import Query
from pet.report import summarize
from pet.study import Study
from pet.workloads import Workload, cohort
from tests.conftest import NO_CELL_LIMIT

DAILY = tuple(range(1, 1101))
"""Every whole day of lung's follow-up: each distinct time is a grid point."""


@pytest.fixture(scope="module")
def cohort3() -> Workload:
    return cohort(600, 3, 11)


def subgroups(frame: pd.DataFrame, column: str, by: str) -> list[pd.Series]:
    """The column's non-missing values within each level of `by` that has any."""
    rows = frame.dropna(subset=[column, by])
    return [rows.loc[rows[by] == level, column] for level in pd.unique(rows[by])]


def t_reference(frame: pd.DataFrame, column: str, by: str, levels: tuple) -> hypothesis.Test:
    rows = frame.dropna(subset=[column, by])
    first, second = (rows.loc[rows[by] == level, column] for level in levels)
    result = stats.ttest_ind(first, second, equal_var=False)
    return hypothesis.Test("Welch's t-test", result.statistic, (result.df,), result.pvalue)


def anova_reference(frame: pd.DataFrame, column: str, by: str) -> hypothesis.Test:
    groups = subgroups(frame, column, by)
    result = stats.f_oneway(*groups)
    n = sum(len(g) for g in groups)
    return hypothesis.Test("one-way ANOVA", result.statistic,
                           (len(groups) - 1, n - len(groups)), result.pvalue)


def chi_reference(frame: pd.DataFrame, row: str, column: str, yates: bool) -> hypothesis.Test:
    table = pd.crosstab(frame[row], frame[column]).to_numpy()
    result = stats.chi2_contingency(table, correction=yates)
    return hypothesis.Test("χ² test", result.statistic, (result.dof,), result.pvalue)


def logrank_reference(frame: pd.DataFrame, time: str, event: str,
                      by: str) -> hypothesis.Test:
    """lifelines: the two-group test for two levels, the multivariate one for more."""
    levels = pd.unique(frame[by])
    if len(levels) == 2:
        a, b = (frame[frame[by] == level] for level in levels)
        result = logrank_test(a[time], b[time], a[event], b[event])
    else:
        result = multivariate_logrank_test(frame[time], frame[by], frame[event])
    return hypothesis.Test("log-rank test", result.test_statistic, (len(levels) - 1,),
                           result.p_value)


def stratified_reference(frame: pd.DataFrame, time: str, event: str, by: str,
                         strata: str) -> hypothesis.Test:
    """The stratified log-rank test written out: per stratum and distinct event time, the
    observed and expected events of each group and their hypergeometric covariance,
    added over times and strata, then χ² on the first k − 1 groups."""
    levels = list(pd.unique(frame[by]))
    k = len(levels)
    o_minus_e, covariance = np.zeros(k), np.zeros((k, k))
    for _, stratum in frame.groupby(strata, observed=True):
        for t in np.unique(stratum.loc[stratum[event].astype(bool), time]):
            at_risk = np.array([((stratum[by] == g) & (stratum[time] >= t)).sum()
                                for g in levels], dtype=float)
            died = np.array([((stratum[by] == g) & (stratum[time] == t)
                              & stratum[event].astype(bool)).sum() for g in levels], dtype=float)
            total, deaths = at_risk.sum(), died.sum()
            o_minus_e += died - deaths * at_risk / total
            if total > 1:
                share = at_risk / total
                covariance += (deaths * (total - deaths) / (total - 1)
                               * (np.diag(share) - np.outer(share, share)))
    z = o_minus_e[:-1]
    statistic = float(z @ np.linalg.solve(covariance[:-1, :-1], z))
    return hypothesis.Test("log-rank test", statistic, (k - 1,),
                           float(stats.chi2.sf(statistic, k - 1)))


def assert_test(got: hypothesis.Test, want: hypothesis.Test, *, rtol: float,
                atol: float = 0.0, method: str | None = None) -> None:
    """Same test, statistic, p and degrees of freedom within `rtol` (or `atol`, for a
    statistic near 0 or a p-value near 1)."""
    assert isinstance(got, hypothesis.Test)
    assert got.method == (method or want.method)
    assert got.statistic == pytest.approx(want.statistic, rel=rtol, abs=atol)
    assert got.p == pytest.approx(want.p, rel=rtol, abs=atol)
    np.testing.assert_allclose(got.df, want.df, rtol=max(rtol, 1e-12))


# Exact answers against the pooled references.

T_CASES = [("lung3", "age", "sex", ("male", "female")),
           ("lung3", "wt_loss", "sex", ("male", "female")),
           ("breast", "mean_radius", "malignant", (False, True)),
           ("diabetes3", "bmi", "sex", (1, 2)),
           ("cohort3", "sbp", "diabetes", (False, True))]


@pytest.mark.parametrize(("workload", "column", "by", "levels"), T_CASES)
def test_t_test_equals_welch_on_the_pooled_rows(workload: str, column: str, by: str,
                                               levels: tuple, request) -> None:
    data: Workload = request.getfixturevalue(workload)
    result = data.study(policy=NO_CELL_LIMIT).run(TTest(column, by))
    assert_test(result.value, t_reference(data.pooled(), column, by, levels), rtol=1e-10)


def test_t_test_within_a_subgroup(cohort3: Workload) -> None:
    query = TTest("hdl", "sex", where="smoking == 'current'")
    got = cohort3.study(policy=NO_CELL_LIMIT).run(query).value
    pooled = cohort3.pooled()
    want = t_reference(pooled[pooled.smoking == "current"], "hdl", "sex", ("female", "male"))
    assert_test(got, want, rtol=1e-10)


@pytest.mark.parametrize(("workload", "column", "by"),
                         [("cohort3", "age", "smoking"), ("cohort3", "hba1c", "smoking"),
                          ("lung3", "meal_cal", "sex"), ("diabetes3", "progression", "sex")])
def test_anova_equals_f_oneway(workload: str, column: str, by: str, request) -> None:
    data: Workload = request.getfixturevalue(workload)
    result = data.study(policy=NO_CELL_LIMIT).run(Anova(column, by))
    assert_test(result.value, anova_reference(data.pooled(), column, by), rtol=1e-10)


def test_anova_leaves_out_levels_without_rows(cohort3: Workload) -> None:
    query = Anova("bmi", "smoking", where="smoking != 'former'")
    got = cohort3.study(policy=NO_CELL_LIMIT).run(query).value
    pooled = cohort3.pooled()
    want = anova_reference(pooled[pooled.smoking != "former"], "bmi", "smoking")
    assert got.df == (1.0, want.df[1])
    assert_test(got, want, rtol=1e-10)


@pytest.mark.parametrize(("workload", "row", "column"),
                         [("lung3", "sex", "dead"), ("cohort3", "smoking", "diabetes"),
                          ("cohort3", "sex", "prior_cvd")])
@pytest.mark.parametrize("yates", [True, False])
def test_chi_square_equals_chi2_contingency(workload: str, row: str, column: str, yates: bool,
                                            request) -> None:
    data: Workload = request.getfixturevalue(workload)
    got = data.study(policy=NO_CELL_LIMIT).run(ChiSquare(row, column, yates=yates)).value
    two_by_two = data.schema[row].bounds()[1] == data.schema[column].bounds()[1] == 1
    method = "χ² test (Yates)" if yates and two_by_two else "χ² test"
    assert_test(got, chi_reference(data.pooled(), row, column, yates), rtol=1e-10,
                method=method)


def test_log_rank_on_a_daily_grid_equals_lifelines(lung3: Workload) -> None:
    got = lung3.study(policy=NO_CELL_LIMIT).run(LogRank("time", "dead", "sex", DAILY)).value
    assert_test(got, logrank_reference(lung3.pooled(), "time", "dead", "sex"), rtol=1e-8)


def test_log_rank_of_three_groups_equals_lifelines(cohort3: Workload) -> None:
    pooled = cohort3.pooled()
    grid = tuple(np.unique(pooled.cvd_time))  # every distinct time, the last one 10
    got = cohort3.study(policy=NO_CELL_LIMIT).run(
        LogRank("cvd_time", "cvd_event", "smoking", grid)).value
    want = logrank_reference(pooled, "cvd_time", "cvd_event", "smoking")
    assert want.df == (2,)
    assert_test(got, want, rtol=1e-8)


def test_stratified_log_rank_adds_the_strata(cohort3: Workload) -> None:
    pooled = cohort3.pooled()
    grid = tuple(np.unique(pooled.cvd_time))
    study = cohort3.study(policy=NO_CELL_LIMIT)
    got = study.run(LogRank("cvd_time", "cvd_event", "smoking", grid, strata="sex")).value
    want = stratified_reference(pooled, "cvd_time", "cvd_event", "smoking", "sex")
    assert_test(got, want, rtol=1e-8)
    # the written-out reference is itself lifelines' test when there is one stratum
    one = stratified_reference(pooled.assign(all=0), "cvd_time", "cvd_event", "smoking", "all")
    assert_test(one, logrank_reference(pooled, "cvd_time", "cvd_event", "smoking"), rtol=1e-8)
    unstratified = study.run(LogRank("cvd_time", "cvd_event", "smoking", grid)).value
    assert abs(got.statistic - unstratified.statistic) > 1e-3  # the strata changed it


def test_a_coarse_grid_tests_the_times_rounded_up_to_its_ends(lung3: Workload) -> None:
    got = lung3.study(policy=NO_CELL_LIMIT).run(LogRank("time", "dead", "sex", grid=20)).value
    pooled = lung3.pooled()
    rounded = pooled.assign(time=np.ceil(pooled.time / 55.0) * 55.0)  # steps of 1100 / 20
    assert_test(got, logrank_reference(rounded, "time", "dead", "sex"), rtol=1e-8)
    exact = logrank_reference(pooled, "time", "dead", "sex")
    assert abs(got.statistic - exact.statistic) > 1e-3  # the grid is coarse enough to tell


# Exact backends: the same tests from encrypted or secret-shared sums.

def backend_queries() -> list[Query]:
    return [TTest("sbp", "diabetes"), Anova("bmi", "smoking"),
            ChiSquare("smoking", "sex", yates=False), ChiSquare("diabetes", "sex"),
            LogRank("cvd_time", "cvd_event", "smoking", grid=40, strata="sex")]


def compare_backend(study: Study, clear: Study, rtol: float) -> list[float]:
    """Each query's answer under `study` against plaintext within `rtol` (or 10⁻⁸ for the
    ANOVA's F of about 10⁻³); the relative errors."""
    errors = []
    for query in backend_queries():
        got, want = study.run(query).value, clear.run(query).value
        assert_test(got, want, rtol=rtol, atol=1e-8)
        errors.append(max(abs(got.statistic / want.statistic - 1), abs(got.p / want.p - 1)))
    return errors


def test_he_gives_the_plaintext_tests(cohort3: Workload) -> None:
    """Counts travel under BFV and are exact; CKKS sums carry a small error, well within
    1e-6 of the t and F statistics here."""
    backend = HE(max_rows_per_site=10**6, max_sites=8)
    clear = cohort3.study(policy=NO_CELL_LIMIT)
    errors = compare_backend(cohort3.study(backend, policy=NO_CELL_LIMIT), clear, 1e-6)
    assert errors[2:] == [0.0, 0.0, 0.0]  # count tables: exact


def test_mpc_gives_the_plaintext_tests(cohort3: Workload) -> None:
    """Counts are exact in MPC's fixed point; sums of scaled values are rounded to its
    2⁻¹⁶ resolution per site, which moves the t and F statistics by about 10⁻⁸ and, far
    in a tail, their p-values by up to 10⁻⁵ of themselves."""
    backend = MPC(max_rows_per_site=10**7, max_sites=8, parties=PartyConfig(timeout_s=60))
    clear = cohort3.study(policy=NO_CELL_LIMIT)
    with Study(cohort3.sites(NO_CELL_LIMIT), backend=backend) as study:
        errors = compare_backend(study, clear, 1e-4)
    assert errors[2:] == [0.0, 0.0, 0.0]


# DP: post-processing of noisy sums.

def dp_study(workload: Workload, tmp_path: Path, backend, budget: float = 10.0) -> Study:
    sites = workload.sites(NO_CELL_LIMIT, ledgers=tmp_path)
    for site in sites:
        site.ledger.set_budget(site.dataset, budget, 1e-5)
    return Study(sites, backend=backend)


def test_dp_at_a_large_epsilon_gives_the_reference(cohort3: Workload, tmp_path: Path) -> None:
    study = dp_study(cohort3, tmp_path, LocalDP(epsilon=1500.0, delta=1e-6), budget=1e4)
    clear = cohort3.study(policy=NO_CELL_LIMIT)
    for query in backend_queries():
        result = study.run(query)
        assert result.privacy.differentially_private and result.interval is None
        assert_test(result.value, clear.run(query).value, rtol=2e-2, atol=1e-2)


def test_central_dp_at_a_large_epsilon_gives_the_reference(lung3: Workload,
                                                          tmp_path: Path) -> None:
    with dp_study(lung3, tmp_path, HEDP(epsilon=3e3, delta=1e-6), budget=1e4) as study:
        for query in (TTest("age", "sex"), ChiSquare("sex", "dead"),
                      LogRank("time", "dead", "sex", grid=20)):
            want = lung3.study(policy=NO_CELL_LIMIT).run(query).value
            assert_test(study.run(query).value, want, rtol=2e-2, atol=1e-2)


def test_dp_at_a_small_epsilon_answers_a_test_or_nans(lung3: Workload, tmp_path: Path) -> None:
    study = dp_study(lung3, tmp_path, LocalDP(epsilon=0.05), budget=100.0)
    queries = [TTest("age", "sex"), Anova("wt_loss", "sex"), ChiSquare("sex", "dead"),
               LogRank("time", "dead", "sex", grid=20),
               TTest("age", "sex", where="age < 40"), Anova("age", "sex", where="age < 40"),
               LogRank("time", "dead", "sex", grid=20, where="age < 40")]
    for _ in range(3):
        for query in queries:
            value = study.run(query).value
            assert isinstance(value, hypothesis.Test)
            assert math.isnan(value.p) or 0 <= value.p <= 1
            assert math.isnan(value.statistic) == math.isnan(value.p)


def test_t_test_noise_widens_the_test_by_the_delta_method(lung3: Workload) -> None:
    """Given the noise SD of every element, the t statistic's variance gains the noise's
    variance on the difference of means, here by a numerical Jacobian."""
    query = TTest("age", "sex")
    schema = lung3.schema
    layout = query.layout(schema)
    total = np.sum([site.partial(query) for site in lung3.sites(NO_CELL_LIMIT)], axis=0)
    sd = np.full(layout.size, 3.0)
    plain = query.finalize(total, schema)
    noisy = query.finalize(total, schema, error_bounds=sd, noise_sd=sd)

    def difference(vector: np.ndarray) -> float:
        parts = layout.split(vector)
        _, mean, _ = query.moments(parts, schema)
        return float(mean[0] - mean[1])

    step = 1e-4
    slope = np.array([(difference(total + step * e) - difference(total - step * e)) / (2 * step)
                      for e in np.eye(layout.size)])
    noise_var = float(np.sum((slope * sd) ** 2))
    sampling_var = (difference(total) / plain.statistic) ** 2
    assert noise_var > 0.01 * sampling_var  # the check below can tell the two apart
    want = difference(total) / math.sqrt(sampling_var + noise_var)
    assert noisy.statistic == pytest.approx(want, rel=1e-6)
    assert noisy.p > plain.p and noisy.df == plain.df


# Bad input, thin data, text and wire forms.

@pytest.mark.parametrize(("query", "message"), [
    (TTest("age", "ph_ecog"), "'ph_ecog' is a integer column; groups come from a categorical"),
    (TTest("sex", "dead"), "column 'sex' is categorical"),
    (TTest("age", "age"), "compare 'age' across the levels of another column"),
    (Anova("age", "wt_loss"), "'wt_loss' is a continuous column"),
    (ChiSquare("age", "sex"), "'age' is a integer column"),
    (ChiSquare("sex", "sex"), "test 'sex' against another column"),
    (LogRank("time", "dead", "age"), "'age' is a integer column"),
    (LogRank("time", "dead", "dead"), "must be columns other than 'time', 'dead'"),
    (LogRank("time", "dead", "sex", strata="sex"), "must be columns other than"),
    (LogRank("age", "dead", "sex"), "must be a time_to_event column"),
    (LogRank("time", "dead", "sex", grid=(10.0, 500.0)), "must reach the schema's upper"),
])
def test_wrong_columns_are_refused_by_name(lung3: Workload, query: Query, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        lung3.study(policy=NO_CELL_LIMIT).run(query)


def test_a_t_test_needs_exactly_two_levels(cohort3: Workload) -> None:
    with pytest.raises(QueryError, match="'smoking' has 3 levels but a t-test compares "
                                         "exactly 2; use Anova"):
        cohort3.study(policy=NO_CELL_LIMIT).run(TTest("age", "smoking"))
    with pytest.raises(QueryError, match="yates must be true or false"):
        ChiSquare("sex", "dead", yates="no")  # type: ignore[arg-type]


@pytest.mark.parametrize(("query", "message"), [
    (TTest("age", "sex", where="sex == 'male'"),
     "level 'female' of 'sex' has 0 rows; Welch's t-test needs at least 2 in each group"),
    (Anova("age", "sex", where="sex == 'female'"),
     "only 1 level\\(s\\) of 'sex' have rows; ANOVA compares at least 2"),
    (ChiSquare("sex", "dead", where="sex == 'female'"),
     "rows fall in 1 level\\(s\\) of 'sex' and 2 of 'dead'"),
    (LogRank("time", "dead", "sex", where="sex == 'male'"),
     "only 1 level\\(s\\) of 'sex' have rows; the log-rank test compares at least 2"),
])
def test_exact_data_too_thin_for_a_test_is_refused(lung3: Workload, query: Query,
                                                   message: str) -> None:
    with pytest.raises(QueryError, match=message):
        lung3.study(policy=NO_CELL_LIMIT).run(query)


def test_text_wire_and_report_forms(lung3: Workload) -> None:
    query = parse('LogRank("time", "dead", "sex", grid=20, strata=None)')
    assert query == LogRank("time", "dead", "sex", grid=20)
    assert parse('TTest("age", "sex")') == TTest("age", "sex")
    assert parse('ChiSquare("sex", "dead", yates=False)') == ChiSquare("sex", "dead", False)
    value = lung3.study(policy=NO_CELL_LIMIT).run(TTest("age", "sex")).value
    assert codec.loads(codec.dumps(value)) == value
    assert summarize(value) == str(value)
    assert str(value).startswith("Welch's t-test: statistic 1.863 (df 194.7), p = 0.0639")
