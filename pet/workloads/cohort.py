"""The `cohort` workload: a seeded generator of virtual patients for a 10-year CVD study."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.special import expit, ndtr, ndtri

from pet.schema import Boolean, Categorical, Column, Schema
from pet.table import CHUNK_ROWS, FrameTable, ParquetTable, Table
from pet.workloads.base import Workload, packaged_schema

DESCRIPTION = (
    "Virtual patients for a 10-year cardiovascular-disease study: risk factors with "
    "published-style dependencies, a Weibull proportional-hazards outcome, and a case "
    "mix of its own at every site."
)

# Hazard ratios of the 10-year CVD outcome, each per the unit in its name. They are
# published-style values, in the range that the Framingham general CVD score (D'Agostino
# et al. 2008) and QRISK3 (Hippisley-Cox et al. 2017) report for middle-aged adults; they
# are not copied from either model, which use non-linear terms and interactions.
HAZARD_RATIOS: dict[str, float] = {
    "age_per_10y": 1.8,
    "male": 1.5,
    "former_smoker": 1.3,
    "current_smoker": 1.9,
    "diabetes": 1.7,
    "sbp_per_20mmhg": 1.3,
    "bp_treated": 1.2,
    "prior_cvd": 2.5,
    "total_chol_per_mmol": 1.15,
    "hdl_per_mmol": 0.6,
    "bmi_per_5": 1.1,
}

FOLLOW_UP_YEARS = 10.0
"""Administrative censoring: every patient is followed for at most this many years."""

WEIBULL_SHAPE = 1.25
"""Shape of the baseline hazard (above 1: the hazard rises as the cohort ages)."""

BASELINE_RISK = 0.045
"""10-year event risk of the reference patient (a 55-year-old non-smoking woman with
SBP 130 mmHg, cholesterol 5.5 and HDL 1.3 mmol/L, BMI 27, no diabetes, treatment or
prior CVD); with the hazard ratios it gives a 10-year event rate of about 8-20 %."""

LOSS_TO_FOLLOW_UP = 0.02
"""Yearly hazard of leaving the study early (moving away, withdrawing), about 18 % by
year 10; independent of the outcome, so censoring stays non-informative."""


@dataclass(frozen=True)
class CaseMix:
    """Who comes through one site's door: the site-level knobs of the population."""

    age_mean: float
    female_share: float
    smoking: tuple[float, float, float]
    """Probabilities of never, former and current smoking."""
    bmi_mean: float


@cache
def cohort_schema() -> Schema:
    """The public schema of the workload (pet/workloads/schemas/cohort.yaml)."""
    return packaged_schema("cohort")


def cohort(n_rows: int, n_sites: int, seed: int, *, directory: str | Path | None = None,
           chunk_rows: int = CHUNK_ROWS, reuse: bool = False) -> Workload:
    """`n_rows` virtual patients at each of `n_sites` sites, deterministic in the arguments.

    With `directory`, each site is streamed chunk by chunk to `site-K.parquet` there (one
    row group per chunk, so no site has to fit in memory); without, tables live in memory.
    With `reuse`, a site file already in `directory` is kept: files are only ever complete
    (see `_write_parquet`) and a site's rows do not depend on `n_sites`, so a directory
    kept per (n_rows, seed, chunk_rows) serves every number of sites.
    """
    for name, value, minimum in (("n_rows", n_rows, 1), ("n_sites", n_sites, 1),
                                 ("seed", seed, 0), ("chunk_rows", chunk_rows, 1)):
        _check_whole(name, value, minimum)
    schema = cohort_schema()
    tables: dict[str, Table] = {}
    for index in range(n_sites):
        name = f"site-{index + 1}"
        chunks = site_chunks(n_rows, seed, index, chunk_rows=chunk_rows)
        if directory is None:
            tables[name] = FrameTable(pa.concat_tables(chunks).to_pandas(), schema)
        else:
            path = Path(directory) / f"{name}.parquet"
            if not (reuse and path.exists()):
                _write_parquet(chunks, path)
            tables[name] = ParquetTable(path, schema)
    return Workload("cohort", schema, tables, DESCRIPTION)


def site_chunks(n_rows: int, seed: int, site_index: int, *,
                chunk_rows: int = CHUNK_ROWS) -> Iterator[pa.Table]:
    """One site's patients as Arrow tables of at most `chunk_rows` rows, in order.

    Each chunk has its own generator, spawned from the site's seed, so a chunk can be
    made without the ones before it and a site's rows do not depend on how many sites
    there are.
    """
    mix_seed, chunks_seed = _spawn(seed, site_index).spawn(2)
    mix = site_case_mix(np.random.default_rng(mix_seed))
    for index, start in enumerate(range(0, n_rows, chunk_rows)):
        rng = np.random.default_rng(_spawn(chunks_seed, index))
        yield _to_arrow(patients(rng, mix, min(chunk_rows, n_rows - start)))


def site_case_mix(rng: np.random.Generator) -> CaseMix:
    """Draw a site's case mix: ranges wide enough that sites differ clearly, as a
    university hospital and a rural practice do, yet all plausible for adults at risk."""
    current, former = rng.uniform(0.10, 0.28), rng.uniform(0.15, 0.30)
    return CaseMix(
        age_mean=rng.uniform(50.0, 64.0),
        female_share=rng.uniform(0.42, 0.60),
        smoking=(1.0 - current - former, former, current),
        bmi_mean=rng.uniform(25.0, 30.0),
    )


def patients(rng: np.random.Generator, mix: CaseMix, n: int) -> dict[str, np.ndarray]:
    """`n` patients as numpy columns (categories as codes), each risk factor drawn given
    the ones that cause it: age and BMI raise blood pressure, BMI raises HbA1c, HbA1c
    defines diabetes, women have higher HDL, and all of them set the event hazard."""
    p: dict[str, np.ndarray] = {}
    # Categorical columns hold codes in the schema's category order (see cohort.yaml).
    p["sex"] = (rng.random(n) >= mix.female_share).astype(np.int8)  # 0 female, 1 male
    male, female = p["sex"] == 1, p["sex"] == 0
    p["age"] = _measure(rng, "age", np.full(n, mix.age_mean), 11.0, decimals=1)
    p["smoking"] = rng.choice(3, size=n, p=mix.smoking).astype(np.int8)
    current = p["smoking"] == 2
    p["bmi"] = _measure(rng, "bmi", np.full(n, mix.bmi_mean), 4.8, decimals=1)
    # HbA1c is right-skewed, so it is drawn on the log scale.
    log_hba1c = np.log(5.4) + 0.012 * (p["bmi"] - 27) + 0.003 * (p["age"] - 55)
    p["hba1c"] = _measure(rng, "hba1c", log_hba1c, 0.12, decimals=1, log=True)
    # Diagnosis at the 6.5 % threshold (WHO 2011), blurred by when and whether one tests.
    p["diabetes"] = rng.random(n) < expit((p["hba1c"] - 6.5) / 0.15)
    sbp_mean = (126 + 0.55 * (p["age"] - 55) + 0.8 * (p["bmi"] - 27)
                + 4.0 * male + 3.0 * p["diabetes"])
    p["sbp"] = _measure(rng, "sbp", sbp_mean, 16.0, decimals=0)
    p["bp_treated"] = rng.random(n) < expit(
        -1.3 + 0.045 * (p["sbp"] - 130) + 0.05 * (p["age"] - 55) + 0.6 * p["diabetes"])
    chol_mean = 5.4 + 0.01 * (p["age"] - 55) + 0.15 * female + 0.03 * (p["bmi"] - 27)
    p["total_chol"] = _measure(rng, "total_chol", chol_mean, 1.0, decimals=1)
    hdl_mean = 1.2 + 0.3 * female - 0.025 * (p["bmi"] - 27) - 0.08 * current
    p["hdl"] = _measure(rng, "hdl", hdl_mean, 0.3, decimals=2)
    p["prior_cvd"] = rng.random(n) < expit(
        -3.0 + 0.06 * (p["age"] - 55) + 0.5 * male + 0.5 * current + 0.5 * p["diabetes"])
    p["cvd_time"], p["cvd_event"] = _outcome(rng, log_hazard_ratio(p))
    return p


def log_hazard_ratio(p: dict[str, np.ndarray]) -> np.ndarray:
    """Each patient's log hazard ratio against the reference patient (see BASELINE_RISK)."""
    terms = {
        "age_per_10y": (p["age"] - 55) / 10,
        "male": p["sex"] == 1,
        "former_smoker": p["smoking"] == 1,
        "current_smoker": p["smoking"] == 2,
        "diabetes": p["diabetes"],
        "sbp_per_20mmhg": (p["sbp"] - 130) / 20,
        "bp_treated": p["bp_treated"],
        "prior_cvd": p["prior_cvd"],
        "total_chol_per_mmol": p["total_chol"] - 5.5,
        "hdl_per_mmol": p["hdl"] - 1.3,
        "bmi_per_5": (p["bmi"] - 27) / 5,
    }
    return sum(np.log(HAZARD_RATIOS[name]) * np.asarray(x, np.float64)
               for name, x in terms.items())


def _outcome(rng: np.random.Generator, log_hr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Follow-up time and event flag: a Weibull proportional-hazards event time, cut short
    by random loss to follow-up or by the end of the study at FOLLOW_UP_YEARS."""
    # Baseline cumulative hazard H0(t) = scale * t**shape, fixed by the reference risk.
    scale = -np.log1p(-BASELINE_RISK) / FOLLOW_UP_YEARS**WEIBULL_SHAPE
    n = len(log_hr)
    # Inverse transform: H0(T) * exp(lp) is unit-exponential.
    event_time = (rng.standard_exponential(n) / (scale * np.exp(log_hr))) ** (1 / WEIBULL_SHAPE)
    censor_time = np.minimum(rng.exponential(1 / LOSS_TO_FOLLOW_UP, n), FOLLOW_UP_YEARS)
    return np.minimum(event_time, censor_time), event_time <= censor_time


def _measure(rng: np.random.Generator, column: str, mean: np.ndarray, sd: float, *,
             decimals: int, log: bool = False) -> np.ndarray:
    """A measurement inside the schema's bounds, recorded to clinical precision.

    Drawn from a normal truncated to the bounds (on the log scale if `log`) rather than
    clipped, so that no mass piles up at a bound; the final clip only guards rounding.
    """
    lower, upper = cohort_schema()[column].bounds()
    if log:
        values = np.exp(_truncated_normal(rng, mean, sd, np.log(lower), np.log(upper)))
    else:
        values = _truncated_normal(rng, mean, sd, lower, upper)
    return np.clip(np.round(values, decimals), lower, upper)


def _truncated_normal(rng: np.random.Generator, mean: np.ndarray, sd: float,
                      lower: float, upper: float) -> np.ndarray:
    """Normal(mean, sd) conditioned on [lower, upper], by inverting its CDF."""
    a, b = ndtr((lower - mean) / sd), ndtr((upper - mean) / sd)
    u = a + (b - a) * rng.random(mean.shape)
    return np.clip(mean + sd * ndtri(u), lower, upper)


def _to_arrow(p: dict[str, np.ndarray]) -> pa.Table:
    """The patients as an Arrow table in schema order; categorical columns become
    dictionary arrays over all the schema's categories, read back by pandas as
    categoricals with the same categories whatever a chunk happens to hold."""
    arrays = []
    for column in cohort_schema().columns:
        values = p[column.name]
        if isinstance(column, Categorical):
            arrays.append(pa.DictionaryArray.from_arrays(
                pa.array(values, pa.int8()), pa.array(list(column.categories), pa.string())))
        else:
            arrays.append(pa.array(values, _arrow_type(column)))
    return pa.Table.from_arrays(arrays, schema=_arrow_schema())


@cache
def _arrow_schema() -> pa.Schema:
    """The Arrow (and Parquet) schema of every chunk, fixed before any row is drawn."""
    return pa.schema([(c.name, _arrow_type(c)) for c in cohort_schema().columns])


def _arrow_type(column: Column) -> pa.DataType:
    """The Arrow type a column is stored as: small dictionary codes for categories."""
    if isinstance(column, Categorical):
        return pa.dictionary(pa.int8(), pa.string())
    return pa.bool_() if isinstance(column, Boolean) else pa.float64()


def _write_parquet(chunks: Iterator[pa.Table], path: Path) -> None:
    """Stream chunks into a Parquet file, one row group each; the file appears under its
    name only when complete, so an interrupted run never leaves a truncated table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with pq.ParquetWriter(partial, _arrow_schema()) as writer:
        for table in chunks:
            writer.write_table(table, row_group_size=table.num_rows)
    partial.replace(path)


def _spawn(parent: int | np.random.SeedSequence, index: int) -> np.random.SeedSequence:
    """Child `index` of `parent`, the one `parent.spawn(index + 1)[index]` would give,
    made directly so that a billion chunks do not mean a billion seeds up front."""
    if not isinstance(parent, np.random.SeedSequence):
        parent = np.random.SeedSequence(parent)
    return np.random.SeedSequence(parent.entropy, spawn_key=(*parent.spawn_key, index))


def _check_whole(name: str, value: object, minimum: int) -> None:
    """Refuse an argument that is not a whole number of at least `minimum`, by name."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
