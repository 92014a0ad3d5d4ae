"""The statistical questions pet answers, each a `Query` of decomposable sums."""

from pet.queries.base import Next, Query
from pet.queries.comparisons import Anova, ChiSquare, TTest
from pet.queries.covariance import Correlation, Covariance
from pet.queries.cox import Cox, CoxFit
from pet.queries.descriptive import Count, Mean, StdDev, Sum, Variance
from pet.queries.marginals import Marginals
from pet.queries.order import ExactQuantiles
from pet.queries.regression import (
    LinearFit,
    LinearRegression,
    LogisticFit,
    LogisticRegression,
    PoissonFit,
    PoissonRegression,
)
from pet.queries.survival import KaplanMeier, LogRank, SurvivalCurve
from pet.queries.table_one import TableOne, TableOneResult
from pet.queries.tables import Contingency, Histogram, Quantiles
from pet.queries.text import parse as parse_text

QUERIES: dict[str, type[Query]] = {cls.__name__: cls for cls in (
    Anova, ChiSquare, Contingency, Correlation, Count, Cox, Covariance, ExactQuantiles,
    Histogram, KaplanMeier, LinearRegression, LogisticRegression, LogRank, Marginals, Mean,
    PoissonRegression, Quantiles, StdDev, Sum, TableOne, TTest, Variance)}
"""Every query pet answers, by class name (for the wire and the command line)."""


def parse(text: str) -> Query:
    """A query written as a call, e.g. `Histogram("age", [18, 50, 70, 100])`."""
    return parse_text(text, QUERIES)


__all__ = [
    "QUERIES",
    "Anova",
    "ChiSquare",
    "Contingency",
    "Correlation",
    "Count",
    "Covariance",
    "Cox",
    "CoxFit",
    "ExactQuantiles",
    "Histogram",
    "KaplanMeier",
    "LinearFit",
    "LinearRegression",
    "LogRank",
    "LogisticFit",
    "LogisticRegression",
    "Marginals",
    "Mean",
    "Next",
    "PoissonFit",
    "PoissonRegression",
    "Quantiles",
    "Query",
    "StdDev",
    "Sum",
    "SurvivalCurve",
    "TTest",
    "TableOne",
    "TableOneResult",
    "Variance",
    "parse",
]
