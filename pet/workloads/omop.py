"""A small synthetic OMOP CDM v5.4 database per site, written from pet's cohort generator.

Each virtual patient of `cohort` becomes a person with an observation period, a first
essential-hypertension record (the index event of `omop_cvd.yaml`), risk-factor
conditions, drugs and measurements around it, and an infarction where the generator has
a CVD event. Records that a correct cohort definition must ignore are written too: a
later repeat of the index event, conditions and drugs after the index date, older and
later measurements, implausible values, and people who never enter the cohort. `rows`
are what the definition must extract: the independent reference of the OMOP tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from pet.omop import FEMALE, MALE, CohortDefinition
from pet.sources import DuckDBTable, Relation
from pet.workloads.base import Workload
from pet.workloads.cohort import cohort

INDEX_CONCEPT, DIABETES, LISINOPRIL = 320128, 201826, 1308216
INFARCTIONS = (4329847, 443454)
MEASUREMENTS = {"bmi": 3038553, "sbp": 3004249, "hba1c": 3004410, "total_chol": 3027114,
                "hdl": 3007070}
DAYS_PER_YEAR = 365.25
FIRST_INDEX = np.datetime64("2010-01-01")
NOT_IN_COHORT = 0.05
"""Share of extra people with no index event (or one outside their observation)."""
MISSING, IMPLAUSIBLE = 0.05, 0.02
"""Shares of people whose HbA1c was never measured, and whose latest BMI reads 999."""


def definition() -> CohortDefinition:
    """The cohort definition shipped with pet (`omop_cvd.yaml`)."""
    return CohortDefinition.load("omop_cvd")


@dataclass(frozen=True)
class OmopSite:
    """One site's CDM tables and the study rows a correct definition extracts from them."""

    tables: dict[str, pd.DataFrame]
    rows: pd.DataFrame

    def write_duckdb(self, path: str | Path) -> Path:
        """The tables as a DuckDB database file."""
        path = Path(path)
        with duckdb.connect(str(path)) as connection:
            for name, frame in self.tables.items():
                connection.register("frame", _dated(frame))
                connection.execute(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM frame')
                connection.unregister("frame")
        return path


def _dated(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with its date columns as dates (the CDM's type), not timestamps."""
    dates = [c for c in frame.columns if frame[c].dtype.kind == "M"]
    return frame.assign(**{c: frame[c].dt.date for c in dates})


def omop_site(n_rows: int, seed: int, site_index: int = 0) -> OmopSite:
    """`n_rows` people of the cohort generator's site `site_index` as a CDM database."""
    people = cohort(n_rows, site_index + 1, seed).tables[f"site-{site_index + 1}"].to_frame()
    rng = np.random.default_rng([seed, site_index, 0x0D0])
    return _site(people, rng)


def omop_workload(n_rows: int, n_sites: int, seed: int, directory: str | Path) -> Workload:
    """`n_sites` sites, each a DuckDB CDM database in `directory` read through the shipped
    cohort definition: the study table the `omop` source gives a site."""
    cohort_definition = definition()
    schema = cohort_definition.schema()
    tables = {}
    for index in range(n_sites):
        path = Path(directory) / f"site-{index + 1}.duckdb"
        if not path.exists():
            omop_site(n_rows, seed, index).write_duckdb(path)
        tables[f"site-{index + 1}"] = DuckDBTable(
            path, Relation(sql=cohort_definition.sql("duckdb")), schema)
    return Workload("omop_cvd", schema, tables, "the cohort generator's patients as an OMOP "
                                                "CDM database, read by omop_cvd.yaml")


def _site(people: pd.DataFrame, rng: np.random.Generator) -> OmopSite:
    n = len(people)
    ids = np.arange(1, n + 1)
    index = FIRST_INDEX + rng.integers(0, 3650, n).astype("timedelta64[D]")
    years = np.floor(people["age"].to_numpy()).astype(int)
    days = np.rint(people["cvd_time"].to_numpy() * DAYS_PER_YEAR).astype(int)
    event = people["cvd_event"].to_numpy(bool)
    days = np.where(event, np.maximum(days, 1), days)  # an outcome comes after the index
    end = index + np.where(event, 3653 + rng.integers(1, 400, n), days).astype("timedelta64[D]")
    start = index - rng.integers(365, 2000, n).astype("timedelta64[D]")
    person = pd.DataFrame({
        "person_id": ids,
        "gender_concept_id": np.where(people["sex"] == "female", FEMALE, MALE),
        "year_of_birth": index.astype("datetime64[Y]").astype(int) + 1970 - years,
        "race_concept_id": 0, "ethnicity_concept_id": 0})
    period = pd.DataFrame({"person_id": ids, "observation_period_start_date": start,
                           "observation_period_end_date": end})
    conditions = [_events(ids, index, INDEX_CONCEPT),
                  _events(ids, index + 100, INDEX_CONCEPT, rng.random(n) < 0.3),
                  _events(ids, index - _days(rng, 1, 1000, n), DIABETES,
                          people["diabetes"].to_numpy(bool)),
                  _events(ids, index + 200, DIABETES,
                          ~people["diabetes"].to_numpy(bool) & (rng.random(n) < 0.2)),
                  _events(ids, index - _days(rng, 1, 2000, n), rng.choice(INFARCTIONS, n),
                          people["prior_cvd"].to_numpy(bool)),
                  _events(ids, index + days.astype("timedelta64[D]"),
                          rng.choice(INFARCTIONS, n), event)]
    drugs = [_events(ids, index - _days(rng, 1, 700, n), LISINOPRIL,
                     people["bp_treated"].to_numpy(bool)),
             _events(ids, index + 30, LISINOPRIL,
                     ~people["bp_treated"].to_numpy(bool) & (rng.random(n) < 0.2))]
    measured, rows = _measurements(people, ids, index, rng)
    outsiders = _outsiders(n, rng)
    tables = {
        "person": pd.concat([person, outsiders["person"]], ignore_index=True),
        "observation_period": _numbered(pd.concat([period, outsiders["observation_period"]],
                                                  ignore_index=True), "observation_period_id"),
        "condition_occurrence": _numbered(
            _domain(pd.concat([*conditions, outsiders["condition"]]), "condition"),
            "condition_occurrence_id"),
        "drug_exposure": _numbered(_domain(pd.concat(drugs), "drug_exposure"),
                                   "drug_exposure_id"),
        "measurement": measured,
        "death": pd.DataFrame({"person_id": ids[event][: max(1, event.sum() // 3)],
                               "death_date": end[event][: max(1, event.sum() // 3)],
                               "cause_concept_id": 0}),
    }
    rows.insert(0, "age", years)
    rows.insert(1, "sex", people["sex"].astype(str).to_numpy())
    for name in ("diabetes", "prior_cvd", "bp_treated"):
        rows[name] = people[name].to_numpy(bool)
    rows = rows[["age", "sex", "diabetes", "prior_cvd", "bp_treated", *MEASUREMENTS]]
    rows["cvd_days"], rows["cvd_event"] = days, event
    return OmopSite(tables, rows)


def _days(rng: np.random.Generator, low: int, high: int, n: int) -> np.ndarray:
    return rng.integers(low, high, n).astype("timedelta64[D]")


def _events(ids: np.ndarray, dates: np.ndarray, concepts: int | np.ndarray,
            keep: np.ndarray | None = None) -> pd.DataFrame:
    frame = pd.DataFrame({"person_id": ids, "concept_id": concepts, "date": dates})
    return frame if keep is None else frame[keep]


def _domain(events: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """Generic events as a CDM table's columns (concept, start date, type concept)."""
    concept = "condition_concept_id" if prefix == "condition" else "drug_concept_id"
    date = "condition_start_date" if prefix == "condition" else "drug_exposure_start_date"
    return pd.DataFrame({"person_id": events["person_id"].to_numpy(),
                         concept: events["concept_id"].to_numpy(),
                         date: events["date"].to_numpy(), f"{prefix}_type_concept_id": 32817})


def _numbered(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    frame = frame.sort_values("person_id", kind="stable").reset_index(drop=True)
    frame.insert(0, key, np.arange(1, len(frame) + 1))
    return frame


def _measurements(people: pd.DataFrame, ids: np.ndarray, index: np.ndarray,
                  rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each risk factor measured at baseline (on or up to 60 days before the index date),
    once long before and once after; the expected rows hold the baseline value, NaN for a
    never-measured HbA1c or an implausible latest BMI."""
    n, parts, expected = len(ids), [], pd.DataFrame(index=range(len(ids)))
    never = rng.random(n) < MISSING
    implausible = rng.random(n) < IMPLAUSIBLE
    for name, concept in MEASUREMENTS.items():
        value = people[name].to_numpy(np.float64)
        measured = ~never if name == "hba1c" else np.ones(n, bool)
        baseline = index - _days(rng, 0, 60, n)
        for dates, values in ((baseline, value),
                              (index - _days(rng, 400, 900, n), value * 1.1),
                              (index + _days(rng, 1, 300, n), value * 0.9)):
            parts.append(pd.DataFrame({"person_id": ids, "measurement_concept_id": concept,
                                       "measurement_date": dates,
                                       "value_as_number": values})[measured])
        expected[name] = np.where(measured, value, np.nan)
        if name == "bmi":
            parts.append(pd.DataFrame({"person_id": ids, "measurement_concept_id": concept,
                                       "measurement_date": index, "value_as_number": 999.0}
                                      )[implausible])
            expected[name] = np.where(implausible, np.nan, expected[name])
    frame = pd.concat(parts, ignore_index=True)
    frame = frame.sample(frac=1.0, random_state=np.random.RandomState(rng.integers(2**31)))
    frame.insert(0, "measurement_id", np.arange(1, len(frame) + 1))
    frame["measurement_type_concept_id"] = 32817
    # The implausible BMI shares its day with the baseline one: a later id breaks the tie.
    late = frame["value_as_number"] == 999.0
    frame.loc[late, "measurement_id"] += len(frame)
    return frame.reset_index(drop=True), expected


def _outsiders(n: int, rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    """People who never enter the cohort: half with no index event, half with one before
    their observation period starts."""
    k = max(2, int(n * NOT_IN_COHORT))
    ids = np.arange(n + 1, n + k + 1)
    start = FIRST_INDEX + rng.integers(0, 3650, k).astype("timedelta64[D]")
    early = np.arange(k) % 2 == 1
    return {
        "person": pd.DataFrame({"person_id": ids, "gender_concept_id": FEMALE,
                                "year_of_birth": 1950, "race_concept_id": 0,
                                "ethnicity_concept_id": 0}),
        "observation_period": pd.DataFrame({
            "person_id": ids, "observation_period_start_date": start,
            "observation_period_end_date": start + 1000}),
        "condition": _events(ids, start - 10, INDEX_CONCEPT, early),
    }
