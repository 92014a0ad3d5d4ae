"""Table 1 across sites against pandas/scipy on the pooled rows: every cell under plaintext,
HE and MPC; one DP charge for the whole table, near the reference at large ε; the text,
Markdown and HTML layouts; bad input refused by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pet import codec
from pet.backends.central_dp import HEDP
from pet.backends.dp import LocalDP
from pet.backends.he import HE
from pet.backends.mpc import MPC
from pet.errors import DisclosureError, QueryError
from pet.mechanisms import rho_of
from pet.mpc.parties import PartyConfig
from pet.queries import Quantiles, TableOne, TableOneResult, parse
from pet.queries.table_one import QUARTILES
from pet.report import RESULT_HEADERS, result_row, summarize, table
from pet.result import answer_vector
from pet.schema import Categorical, Schema
from pet.site import Site
from pet.study import Study
from pet.table import FrameTable
from pet.workloads import Workload
from tests.conftest import NO_CELL_LIMIT

LUNG_COLUMNS = ("age", "ph_ecog", "wt_loss", "sex", "dead")
BREAST_COLUMNS = ("mean_radius", "worst_area", "smoothness_error")
ECOG = Categorical("ecog", ("0", "1", "2+"), nullable=True)
"""A categorical column with a missing value, from the physician's ECOG score."""


@pytest.fixture(scope="module")
def lung_ecog(lung3: Workload) -> Workload:
    """lung with `ecog`: ph_ecog as a nullable categorical (one row has none)."""
    schema = Schema((*lung3.schema.columns, ECOG), name="lung")
    tables = {}
    for name, site in lung3.tables.items():
        frame = site.to_frame()
        frame["ecog"] = frame.ph_ecog.map({0.0: "0", 1.0: "1", 2.0: "2+", 3.0: "2+"})
        tables[name] = FrameTable(frame, schema)
    return Workload("lung_ecog", schema, tables)


def run(workload: Workload, query: TableOne, backend="plaintext") -> TableOneResult:
    return workload.study(backend, policy=NO_CELL_LIMIT).run(query).value


def groups_of(frame: pd.DataFrame, by: str, labels: tuple[str, ...]) -> list[pd.DataFrame]:
    """The pooled rows of each group (by's value as text, e.g. booleans "True"), Overall
    (every row with a `by` value) first."""
    key = frame[by].astype(str).where(frame[by].notna())
    return [frame[key.notna()], *(frame[key == label] for label in labels)]


def check_against_pandas(result: TableOneResult, workload: Workload, by: str) -> None:
    """Every cell of a plaintext table against pandas/scipy on the pooled rows."""
    frame = workload.pooled()
    parts = groups_of(frame, by, result.groups)
    assert result.sizes.tolist() == [len(p) for p in parts]
    assert result.unassigned == frame[by].isna().sum()
    for i, name in enumerate(result.variables):
        assert result.missing[i].tolist() == [p[name].isna().sum() for p in parts], name
        if result.levels[i]:
            check_counts(result, i, parts, frame, by)
        else:
            check_numeric(result, i, parts, workload, by)


def check_counts(result: TableOneResult, i: int, parts: list[pd.DataFrame],
                 frame: pd.DataFrame, by: str) -> None:
    name = result.variables[i]
    expected = [[(p[name].astype(str) == level).sum() for p in parts]
                for level in result.levels[i]]
    np.testing.assert_array_equal(result.counts[i], expected, err_msg=name)
    table = pd.crosstab(frame[name], frame[by])
    assert result.p[i] == pytest.approx(stats.chi2_contingency(table).pvalue, abs=1e-10)


def check_numeric(result: TableOneResult, i: int, parts: list[pd.DataFrame],
                  workload: Workload, by: str) -> None:
    name = result.variables[i]
    values = [p[name].dropna().to_numpy() for p in parts]
    np.testing.assert_allclose(result.mean[i], [v.mean() for v in values], rtol=1e-10)
    np.testing.assert_allclose(result.sd[i], [v.std(ddof=1) for v in values], rtol=1e-10)
    width = np.diff(workload.schema[name].bounds())[0] / 200
    assert result.resolution[i] == pytest.approx(width, rel=1e-12)
    for got, v in zip(result.quartiles[i], values, strict=True):  # the grid's own bound
        assert np.all(np.abs(got - np.quantile(v, QUARTILES, method="inverted_cdf"))
                      <= width * (1 + 1e-9)), name
    overall = f"{by} in {list(result.groups)!r}" if result.unassigned else None
    wheres = [overall, *(f"{by} == {label}" if label in ("True", "False")
                         else f"{by} == {label!r}" for label in result.groups)]
    study = workload.study(policy=NO_CELL_LIMIT)
    for got, where in zip(result.quartiles[i], wheres, strict=True):  # as pet's Quantiles
        np.testing.assert_array_equal(got, study.run(Quantiles(name, QUARTILES, bins=200,
                                                               where=where)).value)
    test = (stats.ttest_ind(*values[1:], equal_var=False) if len(values) == 3
            else stats.f_oneway(*values[1:]))
    assert result.p[i] == pytest.approx(test.pvalue, abs=1e-10), name


def test_lung_by_sex_matches_pandas_and_scipy(lung3: Workload) -> None:
    result = run(lung3, TableOne(LUNG_COLUMNS, by="sex"))
    assert result.groups == ("male", "female")
    assert result.tests == ("Welch's t-test",) * 3 + ("χ² test (Yates)",) * 2
    check_against_pandas(result, lung3, "sex")


def test_lung_by_dead_a_boolean_group(lung3: Workload) -> None:
    result = run(lung3, TableOne(("age", "wt_loss", "sex"), by="dead"))
    assert result.groups == ("False", "True")
    check_against_pandas(result, lung3, "dead")


def test_three_groups_use_anova_and_rows_without_a_group_are_counted(
        lung_ecog: Workload) -> None:
    result = run(lung_ecog, TableOne(("age", "wt_loss", "sex"), by="ecog"))
    assert result.unassigned == 1 and result.tests[:2] == ("one-way ANOVA",) * 2
    check_against_pandas(result, lung_ecog, "ecog")
    assert result.sizes[0] == lung_ecog.n_rows - 1
    assert "1 rows with no ecog value are left out of every column." in result.notes()


def test_a_categorical_column_with_missing_values(lung_ecog: Workload) -> None:
    """Its missing values are counted per group; percentages are of the known values."""
    result = run(lung_ecog, TableOne(("ecog", "age"), by="sex"))
    check_against_pandas(result, lung_ecog, "sex")
    assert result.missing[0].sum() == 2 * 1  # one row, counted in Overall and its group
    frame = result.to_frame()
    known = result.sizes[0] - 1
    assert frame.loc[("ecog, n (%)", "1"), "Overall"] == (
        f"{result.counts[0][1, 0]:.0f} ({100 * result.counts[0][1, 0] / known:.1f})")


def test_breast_cancer_by_diagnosis_and_overall_only(breast: Workload) -> None:
    result = run(breast, TableOne((*BREAST_COLUMNS, "malignant"), by="malignant"))
    check_against_pandas(result, breast, "malignant")
    overall = run(breast, TableOne(BREAST_COLUMNS))
    assert overall.groups == () and overall.sizes.tolist() == [breast.n_rows]
    np.testing.assert_allclose(overall.mean[:, 0], result.mean[:3, 0], rtol=1e-12)
    np.testing.assert_array_equal(overall.quartiles[:, 0], result.quartiles[:3, 0])
    assert np.all(np.isnan(overall.p)) and overall.tests == ("", "", "")
    assert list(overall.to_frame().columns) == ["Missing", "Overall"]


def test_a_row_missing_one_column_still_counts_for_the_others(lung3: Workload) -> None:
    result = run(lung3, TableOne(("wt_loss", "age")))
    assert result.missing[:, 0].tolist() == [14, 0]
    assert result.sizes[0] == lung3.n_rows  # age's mean is over every row
    assert result.mean[1, 0] == pytest.approx(lung3.pooled().age.mean(), rel=1e-12)


def test_without_medians_a_table_passes_the_sites_cell_rule(lung3: Workload) -> None:
    """Under default disclosure control (3 rows a cell) small sites refuse the medians'
    fine histograms by name; without them the table answers, its other numbers those of
    the full table and no median row shown."""
    guarded = lung3.study()
    with pytest.raises(DisclosureError, match="'age:grid' cell"):
        guarded.run(TableOne(("age", "sex"), by="dead"))
    result = guarded.run(TableOne(("age", "sex"), by="dead", medians=False)).value
    full = run(lung3, TableOne(("age", "sex"), by="dead"))
    np.testing.assert_array_equal(result.mean, full.mean)
    np.testing.assert_array_equal(result.counts[1], full.counts[1])
    np.testing.assert_array_equal(result.p, full.p)
    assert np.all(np.isnan(result.quartiles)) and "median" not in result.to_text()
    assert "age, mean (SD)" in result.to_text()


def test_he_matches_plaintext_within_its_bound(lung3: Workload) -> None:
    query = TableOne(LUNG_COLUMNS, by="sex")
    plain = run(lung3, query)
    secret = run(lung3, query, HE(max_rows_per_site=10**6, max_sites=8))
    for got, want in zip(secret.counts, plain.counts, strict=True):  # rounded back: exact
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(secret.sizes, plain.sizes)
    np.testing.assert_array_equal(secret.quartiles, plain.quartiles)
    np.testing.assert_allclose(secret.mean, plain.mean, rtol=1e-6)
    np.testing.assert_allclose(secret.sd, plain.sd, rtol=1e-6)
    np.testing.assert_allclose(secret.p, plain.p, atol=1e-6)


def test_mpc_matches_plaintext(lung3: Workload) -> None:
    query = TableOne(("age", "wt_loss", "sex"), by="sex")
    backend = MPC(max_rows_per_site=10**6, max_sites=4, parties=PartyConfig(timeout_s=60))
    with Study(lung3.sites(NO_CELL_LIMIT), backend=backend) as study:
        result = study.run(query)
    plain = run(lung3, query)
    assert result.backend == "mpc"
    np.testing.assert_array_equal(result.value.sizes, plain.sizes)
    np.testing.assert_array_equal(result.value.counts[2], plain.counts[2])
    np.testing.assert_array_equal(result.value.quartiles, plain.quartiles)
    np.testing.assert_allclose(answer_vector(result.value), answer_vector(plain), rtol=1e-6)
    np.testing.assert_allclose(result.value.p, plain.p, atol=1e-6)


def dp_study(workload: Workload, tmp_path: Path, backend) -> Study:
    sites = workload.sites(NO_CELL_LIMIT, ledgers=tmp_path)
    for site in sites:
        site.ledger.set_budget(site.dataset, 1e4, 1e-5)
    return Study(sites, backend=backend)


@pytest.mark.parametrize("backend", [LocalDP(epsilon=2000.0, delta=1e-6),
                                     HEDP(epsilon=2000.0, delta=1e-6,
                                          max_rows_per_site=10**6, max_sites=8)],
                         ids=["local", "central"])
def test_dp_charges_the_whole_table_once_and_stays_near_the_reference(
        lung3: Workload, tmp_path: Path, backend) -> None:
    query = TableOne(LUNG_COLUMNS, by="sex")
    study = dp_study(lung3, tmp_path, backend)
    result = study.run(query)
    for site in study.sites:
        (charge,) = site.ledger.charges(site.dataset)
        assert charge.rho == pytest.approx(rho_of(2000.0, 1e-6), rel=1e-12)
        assert site.ledger.budget(site.dataset).releases == 1
    noisy, plain = result.value, run(lung3, query)
    assert np.abs(noisy.sizes - plain.sizes).max() <= 2
    for got, want in zip(noisy.counts, plain.counts, strict=True):
        assert got.shape == want.shape and np.all(np.abs(got - want) <= 3)
    assert np.abs(noisy.missing - plain.missing).max() <= 2
    np.testing.assert_allclose(noisy.mean, plain.mean, atol=0.5)
    np.testing.assert_allclose(noisy.sd, plain.sd, rtol=0.1, atol=0.05)
    np.testing.assert_allclose(noisy.quartiles, plain.quartiles, atol=2.0)
    np.testing.assert_allclose(noisy.p, plain.p, atol=0.1)
    low, high = result.interval  # one interval per number of the table
    assert low.shape == high.shape == noisy.vector().shape
    inside = np.isfinite(low)
    assert inside.mean() > 0.9
    assert np.all((low[inside] <= noisy.vector()[inside] + 1e-9)
                  & (noisy.vector()[inside] <= high[inside] + 1e-9))


def test_a_dp_layout_is_one_round_whose_blocks_each_add_at_most_one(lung3: Workload) -> None:
    query = TableOne(LUNG_COLUMNS, by="sex")
    layout = query.layout(lung3.schema)
    assert query.max_rounds == 1 and layout.share == 1.0
    weights = {b.name: b.weight for b in layout.blocks}
    assert weights["groups"] == weights["sex:counts"] == 1.0
    assert weights["age:sum"] < 1 and weights["age:squares"] < weights["age:sum"]
    assert weights["wt_loss:missing"] < weights["age:grid"] < 1
    assert all(b.l2 == pytest.approx(1.0) and b.bound == 1.0 for b in layout.blocks if b.size)
    assert "age:missing" not in weights  # age cannot be missing: no count, no noise


def noisy_conclusion(workload: Workload, query: TableOne, change) -> TableOneResult:
    """The table from the exact sums changed by `change(parts)`, as a DP release is:
    every element marked inexact."""
    partials = [site.partial(query) for site in workload.sites(NO_CELL_LIMIT)]
    total = np.sum(partials, axis=0)
    layout = query.layout(workload.schema)
    change(layout.split(total))
    return query.finalize(total, workload.schema, error_bounds=np.ones(layout.size),
                          noise_sd=np.ones(layout.size))


def test_dp_post_processing_clamps_and_leaves_undetermined_cells_nan(
        lung3: Workload) -> None:
    query = TableOne(("age", "sex"), by="sex")

    def shrink(parts: dict[str, np.ndarray]) -> None:
        parts["groups"][:] = [1.0, -3.0]  # male: one row; female: a negative noisy size
        parts["age:squares"][0] = -5.0    # a negative noisy variance
        parts["sex:counts"][:] = [4.0, 2.0, -1.0, 7.0]

    result = noisy_conclusion(lung3, query, shrink)
    assert result.sizes.tolist() == [1.0, 1.0, 0.0]
    assert np.isfinite(result.mean[0, 1]) and np.isnan(result.sd[0, 1])  # one row: no SD
    assert np.isnan(result.mean[0, 2]) and np.all(np.isnan(result.quartiles[0, 2]))
    assert np.isnan(result.p[0])  # a group with under two values cannot be tested
    assert result.counts[1].min() >= 0
    assert result.counts[1][:, 1].sum() == 1 and result.counts[1][:, 2].sum() == 0
    assert "n/a" in result.to_text()


def test_a_noisy_variance_that_is_not_positive_is_undetermined(lung3: Workload) -> None:
    """Noisy Σs² below n·mean² gives no SD (n/a), not an SD of 0, which would say every
    value is the same; exact data with one value keep their SD of 0."""
    query = TableOne(("age",), by="sex")

    def flatten(parts: dict[str, np.ndarray]) -> None:
        parts["age:squares"][0] = -5.0

    result = noisy_conclusion(lung3, query, flatten)
    assert np.isnan(result.sd[0, 1]) and np.isfinite(result.sd[0, 2])
    assert "n/a" in result.to_text()
    constant = Schema((Categorical("g", ("a", "b")), *lung3.schema.columns[2:3]))
    frame = pd.DataFrame({"g": ["a", "a", "b", "b"], "age": [50, 50, 60, 61]})
    exact = Study([Site("one", FrameTable(frame, constant), policy=NO_CELL_LIMIT)]).run(
        TableOne(("age",), by="g")).value
    assert exact.sd[0, 1] == 0.0


def test_noisy_levels_of_a_column_without_missing_values_fill_the_group(
        lung3: Workload) -> None:
    """A non-nullable column's noisy level counts are made to add up to the group's size
    among its levels: none of the difference becomes 'missing' values it cannot have."""
    query = TableOne(("sex",), by="dead")

    def short(parts: dict[str, np.ndarray]) -> None:
        parts["groups"][:] = [10.0, 5.0]
        parts["sex:counts"][:] = [3.0, 0.0, 2.0, 0.0]  # level-major: 5 of 10, 0 of 5

    result = noisy_conclusion(lung3, query, short)
    assert np.all(result.missing == 0)
    np.testing.assert_array_equal(result.counts[0].sum(axis=0), result.sizes)


def test_noise_on_the_means_widens_the_t_test(lung3: Workload) -> None:
    """Welch's test gets the variance the noise adds to the difference of means: the
    same sums give a larger p-value the more noise they are said to carry."""
    query = TableOne(("age",), by="sex")
    layout = query.layout(lung3.schema)
    total = np.sum([site.partial(query) for site in lung3.sites(NO_CELL_LIMIT)], axis=0)
    p_values = [query.finalize(total, lung3.schema).p[0]]
    for sd in (1.0, 10.0):
        noisy = query.finalize(total, lung3.schema, error_bounds=np.full(layout.size, sd),
                               noise_sd=np.full(layout.size, sd))
        p_values.append(noisy.p[0])
    assert p_values[0] < p_values[1] < p_values[2]


def test_text_markdown_and_html_hold_the_rows(lung3: Workload) -> None:
    result = run(lung3, TableOne(("age", "sex"), by="sex"))
    pooled = lung3.pooled()
    age = pooled.age
    mean_row = f"{age.mean():.1f} ({age.std():.1f})"
    text = result.to_text().splitlines()
    assert text[0] == "Grouped by sex"
    assert text[1].split() == ["Missing", "Overall", "male", "female", "P-Value"]
    assert text[2].split() == ["n", "228", "138", "90"]
    assert text[3].startswith("age, mean (SD)") and mean_row in text[3]
    assert text[5].startswith("sex, n (%)") and text[5].split()[-1] == "<0.001"
    assert text[6].startswith("    male") and "138 (60.5)" in text[6]
    assert text[7].startswith("    female") and "90 (39.5)" in text[7]
    assert str(result) == result.to_text() == summarize(result)

    markdown = result.to_markdown().splitlines()
    assert markdown[0] == "|  | Missing | Overall | male | female | P-Value |"
    assert markdown[1] == "| --- | ---: | ---: | ---: | ---: | ---: |"
    assert markdown[2] == "| n |  | 228 | 138 | 90 |  |"
    assert markdown[3].startswith(f"| age, mean (SD) | 0 | {mean_row} |")

    frame = result.to_frame()
    assert frame.columns.name == "Grouped by sex"
    assert list(frame.index) == [("n", ""), ("age, mean (SD)", ""),
                                 ("age, median [Q1,Q3]", ""), ("sex, n (%)", "male"),
                                 ("sex, n (%)", "female")]
    assert frame.loc[("sex, n (%)", "male"), "P-Value"] == "<0.001"
    page = result.to_html()
    assert "<table" in page and "age, mean (SD)" in page and mean_row in page
    assert "P-values: Welch&#x27;s t-test, χ² test (Yates)." in page


def test_the_cli_table_keeps_the_lines(lung3: Workload) -> None:
    result = lung3.study(policy=NO_CELL_LIMIT).run(TableOne(("age", "sex"), by="sex"))
    shown = table([result_row(result)], RESULT_HEADERS)
    assert all(line in shown for line in result.value.to_text().splitlines())


def test_the_answer_travels_and_parses(lung3: Workload) -> None:
    query = parse('TableOne(["age", "sex"], by="sex")')
    assert query == TableOne(("age", "sex"), by="sex")
    result = run(lung3, query)
    back = codec.loads(codec.dumps(result))
    assert isinstance(back, TableOneResult) and back.levels == result.levels
    np.testing.assert_array_equal(back.vector(), result.vector())
    assert back.to_text() == result.to_text()


@pytest.mark.parametrize(("query", "message"), [
    (TableOne(("age", "bmi")), "unknown column 'bmi'"),
    (TableOne(("time", "age")), "column 'time' is time_to_event"),
    (TableOne(("sex",), by="wt_loss"), "cannot group by 'wt_loss': it is continuous"),
    (TableOne(("sex",), by="age"), "cannot group by 'age': it is integer"),
])
def test_bad_columns_are_refused_by_name(lung3: Workload, query: TableOne,
                                         message: str) -> None:
    with pytest.raises(QueryError, match=message):
        lung3.study(policy=NO_CELL_LIMIT).run(query)


def test_bad_arguments_fail_in_the_constructor() -> None:
    with pytest.raises(QueryError, match="needs at least one column"):
        TableOne(())
    with pytest.raises(QueryError, match=r"columns repeat: \['age'\]"):
        TableOne(("age", "sex", "age"))
    with pytest.raises(QueryError, match="bins must be a whole number between 1 and 100000"):
        TableOne(("age",), bins=0)
