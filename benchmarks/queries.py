"""The benchmark's questions: for each workload, the same kinds of query by name, on
columns where they make clinical sense, so profiles can name queries once for all."""

from __future__ import annotations

from pet.errors import PetError
from pet.queries import (
    Anova,
    ChiSquare,
    Contingency,
    Correlation,
    Count,
    Cox,
    ExactQuantiles,
    Histogram,
    KaplanMeier,
    LinearRegression,
    LogisticRegression,
    LogRank,
    Mean,
    PoissonRegression,
    Quantiles,
    Query,
    TableOne,
    TTest,
    Variance,
)

PRESETS: dict[str, dict[str, Query]] = {
    "cohort": {
        "count": Count(where="sex == 'female' and age >= 50"),
        "mean": Mean("sbp"),
        "variance": Variance("bmi"),
        "histogram": Histogram("age", tuple(range(30, 91, 5))),
        "contingency": Contingency(("sex", "smoking", "diabetes")),
        "quantiles": Quantiles("sbp", (0.25, 0.5, 0.75), bins=1000),
        "exact_quantiles": ExactQuantiles("sbp", (0.25, 0.5, 0.75)),
        "correlation": Correlation(("age", "bmi", "sbp", "total_chol", "hdl", "hba1c")),
        "linear": LinearRegression("sbp", ("age", "sex", "bmi", "diabetes", "smoking")),
        "logistic": LogisticRegression("diabetes", ("age", "sex", "bmi", "smoking")),
        "kaplan_meier": KaplanMeier("cvd_time", "cvd_event", grid=120),
        "cox": Cox("cvd_time", "cvd_event", ("age", "sex", "sbp", "smoking", "diabetes"),
                   grid=40),
        "log_rank": LogRank("cvd_time", "cvd_event", "smoking", grid=120, strata="sex"),
        "t_test": TTest("sbp", "diabetes"),
        "anova": Anova("bmi", "smoking"),
        "chi_square": ChiSquare("smoking", "diabetes"),
        "table_one": TableOne(("age", "sex", "bmi", "sbp", "smoking", "prior_cvd"),
                              by="diabetes"),
        "poisson": PoissonRegression("cvd_event", ("age", "sex", "smoking", "diabetes"),
                                     exposure="cvd_time"),
    },
    "lung": {
        "count": Count(where="sex == 'female'"),
        "mean": Mean("age"),
        "variance": Variance("wt_loss"),
        "histogram": Histogram("age", tuple(range(10, 111, 10))),
        "contingency": Contingency(("sex", "dead")),
        "quantiles": Quantiles("age", (0.25, 0.5, 0.75), bins=820),
        "exact_quantiles": ExactQuantiles("age", (0.25, 0.5, 0.75)),
        "correlation": Correlation(("age", "ph_karno", "pat_karno", "meal_cal", "wt_loss")),
        "linear": LinearRegression("wt_loss", ("age", "sex", "ph_ecog")),
        "logistic": LogisticRegression("dead", ("age", "sex", "ph_ecog")),
        "kaplan_meier": KaplanMeier("time", "dead", grid=1100),
        "cox": Cox("time", "dead", ("age", "sex", "ph_ecog"), grid=tuple(range(1, 1101))),
        "log_rank": LogRank("time", "dead", "sex", grid=1100),
        "t_test": TTest("age", "sex"),
        "anova": Anova("wt_loss", "sex"),
        "chi_square": ChiSquare("sex", "dead"),
        "table_one": TableOne(("age", "ph_ecog", "wt_loss", "meal_cal", "dead"), by="sex"),
        "poisson": PoissonRegression("dead", ("age", "sex", "ph_ecog"), exposure="time"),
    },
    "breast_cancer": {
        "count": Count(where="malignant == 1"),
        "mean": Mean("mean_radius"),
        "variance": Variance("mean_area"),
        "histogram": Histogram("mean_radius", tuple(range(0, 51, 2))),
        "contingency": Contingency(("malignant",)),
        "quantiles": Quantiles("mean_area", (0.25, 0.5, 0.75), bins=1000),
        "exact_quantiles": ExactQuantiles("mean_area", (0.25, 0.5, 0.75)),
        "correlation": Correlation(("mean_radius", "mean_texture", "mean_smoothness",
                                    "mean_compactness", "mean_concavity", "mean_symmetry")),
        "linear": LinearRegression("mean_area", ("mean_texture", "mean_smoothness",
                                                 "mean_concavity")),
        "logistic": LogisticRegression("malignant", ("mean_radius", "mean_texture",
                                                     "mean_smoothness", "worst_concave_points")),
    },
    "diabetes": {
        "count": Count(where="sex == 2"),
        "mean": Mean("bmi"),
        "variance": Variance("progression"),
        "histogram": Histogram("age", (18, 30, 40, 50, 60, 70, 100)),
        "contingency": Contingency(("sex",)),
        "quantiles": Quantiles("progression", (0.25, 0.5, 0.75), bins=1000),
        "exact_quantiles": ExactQuantiles("progression", (0.25, 0.5, 0.75)),
        "correlation": Correlation(("age", "bmi", "bp", "tc", "ldl", "hdl", "ltg", "glu")),
        "linear": LinearRegression("progression", ("age", "sex", "bmi", "bp", "tc", "ldl",
                                                   "hdl", "tch", "ltg", "glu")),
    },
}
"""Per workload, query name → query. A workload without a query (diabetes has no boolean
outcome for `logistic`, no time-to-event for `kaplan_meier`) simply has no such cell."""

QUERY_NAMES = tuple(dict.fromkeys(name for presets in PRESETS.values() for name in presets))


def preset(workload: str, name: str) -> Query | None:
    """The named query for a workload; None where the workload has no such question."""
    if workload not in PRESETS:
        raise PetError(f"no benchmark queries for workload {workload!r}; "
                       f"choose one of {sorted(PRESETS)}")
    if name not in QUERY_NAMES:
        raise PetError(f"unknown benchmark query {name!r}; choose one of {list(QUERY_NAMES)}")
    return PRESETS[workload].get(name)
