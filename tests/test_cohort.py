"""Tests of the `cohort` workload: determinism, schema bounds, Parquet streaming, and the
risk relationships it promises, checked with scipy and lifelines as references."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lifelines import CoxPHFitter
from scipy import stats

from pet.table import FrameTable, ParquetTable
from pet.workloads.base import packaged_schema
from pet.workloads.cohort import HAZARD_RATIOS, cohort, site_chunks

ROWS_PER_SITE = 20_000
SITES = 3
SEED = 2024
# Seeded data, so every statistical check below is deterministic; the thresholds are
# set so that a correct generator would fail them with probability below about 1e-4.
P_VALUE = 1e-6


@pytest.fixture(scope="module")
def sites() -> dict[str, pd.DataFrame]:
    """20,000 patients at each of three sites, in memory."""
    workload = cohort(ROWS_PER_SITE, SITES, SEED)
    return {name: table.to_frame() for name, table in workload.tables.items()}


@pytest.fixture(scope="module")
def pooled(sites: dict[str, pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(sites.values(), ignore_index=True)


# --- shape, determinism, arguments -------------------------------------------------


def test_workload_has_named_sites_rows_and_the_packaged_schema() -> None:
    workload = cohort(250, 4, 1)
    assert workload.name == "cohort"
    assert workload.description.endswith(".")
    assert workload.schema == packaged_schema("cohort")
    assert list(workload.tables) == ["site-1", "site-2", "site-3", "site-4"]
    assert all(isinstance(t, FrameTable) for t in workload.tables.values())
    assert [t.n_rows for t in workload.tables.values()] == [250] * 4
    assert workload.n_rows == 1000
    frame = workload.tables["site-2"].to_frame()
    assert tuple(frame.columns) == workload.schema.names


def test_same_seed_gives_identical_frames_and_another_seed_does_not() -> None:
    first, again, other = cohort(500, 2, 7), cohort(500, 2, 7), cohort(500, 2, 8)
    for name in first.tables:
        pd.testing.assert_frame_equal(first.tables[name].to_frame(),
                                      again.tables[name].to_frame())
        assert not first.tables[name].to_frame().equals(other.tables[name].to_frame())


def test_sites_differ_from_each_other() -> None:
    workload = cohort(500, 2, 7)
    one, two = (t.to_frame() for t in workload.tables.values())
    assert not np.array_equal(one["age"], two["age"])


def test_a_site_does_not_depend_on_how_many_sites_there_are() -> None:
    two, three = cohort(300, 2, 5), cohort(300, 3, 5)
    for name in two.tables:
        pd.testing.assert_frame_equal(two.tables[name].to_frame(),
                                      three.tables[name].to_frame())


@pytest.mark.parametrize(("args", "kwargs", "named"), [
    ((0, 1, 1), {}, "n_rows"),
    ((10, 0, 1), {}, "n_sites"),
    ((10, 1, -1), {}, "seed"),
    ((10, 1, 1), {"chunk_rows": 0}, "chunk_rows"),
    ((10.5, 1, 1), {}, "n_rows"),
    ((10, True, 1), {}, "n_sites"),
])
def test_bad_arguments_are_refused_by_name(args: tuple, kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        cohort(*args, **kwargs)


# --- schema bounds -------------------------------------------------------------------


def test_every_value_validates_against_the_schema(sites: dict[str, pd.DataFrame]) -> None:
    schema = packaged_schema("cohort")
    for frame in sites.values():
        assert schema.validate(frame) == dict.fromkeys(schema.names, 0)


def test_categorical_columns_carry_all_schema_categories(pooled: pd.DataFrame) -> None:
    schema = packaged_schema("cohort")
    for name in ("sex", "smoking"):
        assert list(pooled[name].cat.categories) == list(schema[name].categories)
        assert set(pooled[name]) == set(schema[name].categories)


def test_follow_up_ends_at_ten_years_for_survivors(pooled: pd.DataFrame) -> None:
    censored_at_end = (pooled["cvd_time"] == 10.0) & ~pooled["cvd_event"]
    assert censored_at_end.mean() > 0.5  # administrative censoring
    early = (pooled["cvd_time"] < 10.0) & ~pooled["cvd_event"]
    assert 0.05 < early.mean() < 0.30  # random loss to follow-up
    assert not ((pooled["cvd_time"] == 10.0) & pooled["cvd_event"]).any()


@settings(max_examples=25, deadline=None)
@given(n_rows=st.integers(1, 300), n_sites=st.integers(1, 3),
       seed=st.integers(0, 2**63), chunk_rows=st.integers(1, 120))
def test_any_arguments_give_valid_tables_of_the_asked_size(
        n_rows: int, n_sites: int, seed: int, chunk_rows: int) -> None:
    workload = cohort(n_rows, n_sites, seed, chunk_rows=chunk_rows)
    for table in workload.tables.values():
        frame = table.to_frame()
        assert len(frame) == n_rows
        workload.schema.validate(frame)


# --- Parquet streaming -------------------------------------------------------------------


def test_parquet_mode_round_trips_to_the_in_memory_tables(tmp_path) -> None:
    on_disk = cohort(2500, 2, 11, directory=tmp_path, chunk_rows=1000)
    in_memory = cohort(2500, 2, 11, chunk_rows=1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site-1.parquet", "site-2.parquet"]
    for name, table in on_disk.tables.items():
        assert isinstance(table, ParquetTable)
        assert table.path == tmp_path / f"{name}.parquet"
        assert table.n_rows == 2500
        pd.testing.assert_frame_equal(table.to_frame(), in_memory.tables[name].to_frame())


def test_small_chunks_stream_as_row_groups(tmp_path) -> None:
    workload = cohort(3500, 1, 3, directory=tmp_path, chunk_rows=1000)
    metadata = pq.ParquetFile(tmp_path / "site-1.parquet").metadata
    sizes = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    assert sizes == [1000, 1000, 1000, 500]
    assert workload.tables["site-1"].missing() == dict.fromkeys(workload.schema.names, 0)


def test_chunks_are_made_lazily() -> None:
    # A trillion rows: only a lazy generator hands back its first chunk at once.
    first = next(site_chunks(10**12, 1, 0, chunk_rows=500))
    assert first.num_rows == 500


# --- risk relationships ------------------------------------------------------------


def test_older_patients_have_higher_blood_pressure(pooled: pd.DataFrame) -> None:
    r, p = stats.pearsonr(pooled["age"], pooled["sbp"])
    assert r > 0.2 and p < P_VALUE


def test_bmi_raises_hba1c_which_marks_diabetes(pooled: pd.DataFrame) -> None:
    r, p = stats.pearsonr(pooled["bmi"], pooled["hba1c"])
    assert r > 0.1 and p < P_VALUE
    with_dm = pooled.loc[pooled["diabetes"], "hba1c"]
    without = pooled.loc[~pooled["diabetes"], "hba1c"]
    assert with_dm.mean() > without.mean() + 1.0
    assert with_dm.median() >= 6.5 > without.median()
    assert 0.03 < pooled["diabetes"].mean() < 0.25


def test_women_have_higher_hdl(pooled: pd.DataFrame) -> None:
    women = pooled.loc[pooled["sex"] == "female", "hdl"]
    men = pooled.loc[pooled["sex"] == "male", "hdl"]
    assert women.mean() > men.mean() + 0.15
    assert stats.ttest_ind(women, men, equal_var=False, alternative="greater").pvalue < P_VALUE


def test_ten_year_event_rate_is_plausible(pooled: pd.DataFrame) -> None:
    assert 0.05 <= pooled["cvd_event"].mean() <= 0.30


def test_sites_have_their_own_case_mix(sites: dict[str, pd.DataFrame]) -> None:
    frames = list(sites.values())
    ages = [f["age"] for f in frames]
    assert stats.f_oneway(*ages).pvalue < P_VALUE
    means = sorted(a.mean() for a in ages)
    noise = max(a.std() for a in ages) / np.sqrt(ROWS_PER_SITE)
    assert means[-1] - means[0] > 10 * noise
    for column in ("sex", "smoking"):
        counts = pd.crosstab(pd.concat([f[column] for f in frames]),
                             np.repeat(np.arange(SITES), ROWS_PER_SITE))
        assert stats.chi2_contingency(counts).pvalue < P_VALUE
    assert stats.f_oneway(*[f["bmi"] for f in frames]).pvalue < P_VALUE


def test_cox_model_recovers_the_hazard_ratios(pooled: pd.DataFrame) -> None:
    covariates = pd.DataFrame({
        "age_per_10y": pooled["age"] / 10,
        "male": pooled["sex"] == "male",
        "former_smoker": pooled["smoking"] == "former",
        "current_smoker": pooled["smoking"] == "current",
        "diabetes": pooled["diabetes"],
        "sbp_per_20mmhg": pooled["sbp"] / 20,
        "bp_treated": pooled["bp_treated"],
        "prior_cvd": pooled["prior_cvd"],
        "total_chol_per_mmol": pooled["total_chol"],
        "hdl_per_mmol": pooled["hdl"],
        "bmi_per_5": pooled["bmi"] / 5,
    }).astype(float)
    data = covariates.assign(time=pooled["cvd_time"], event=pooled["cvd_event"])
    fit = CoxPHFitter().fit(data, "time", "event").summary
    # Direction, as in the clinical literature.
    for harmful in ("age_per_10y", "male", "current_smoker", "diabetes", "sbp_per_20mmhg",
                    "prior_cvd"):
        assert fit.loc[harmful, "exp(coef)"] > 1.2, harmful
    assert fit.loc["hdl_per_mmol", "exp(coef)"] < 0.8
    # Size: each log hazard ratio within four standard errors of the generator's.
    intended = np.log(pd.Series(HAZARD_RATIOS))
    z = (fit["coef"] - intended[fit.index]) / fit["se(coef)"]
    assert (z.abs() < 4).all(), z.to_dict()


# --- scale ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_million_rows_stream_through_parquet(tmp_path) -> None:
    workload = cohort(2_000_000, 1, 9, directory=tmp_path, chunk_rows=250_000)
    table = workload.tables["site-1"]
    assert pq.ParquetFile(table.path).metadata.num_row_groups == 8
    assert table.missing() == dict.fromkeys(workload.schema.names, 0)  # validates all rows


def test_reuse_keeps_existing_site_files_and_adds_missing_ones(tmp_path) -> None:
    cohort(800, 2, 4, directory=tmp_path)
    first = (tmp_path / "site-1.parquet").stat().st_mtime_ns
    four = cohort(800, 4, 4, directory=tmp_path, reuse=True)
    assert (tmp_path / "site-1.parquet").stat().st_mtime_ns == first
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"site-{k}.parquet" for k in range(1, 5)]
    fresh = cohort(800, 4, 4)
    for name, table in four.tables.items():
        pd.testing.assert_frame_equal(table.to_frame(), fresh.tables[name].to_frame())
