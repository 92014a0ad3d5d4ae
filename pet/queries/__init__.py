"""The statistical questions pet answers, each a `Query` of decomposable sums."""

from pet.queries.base import Next, Query
from pet.queries.covariance import Correlation, Covariance
from pet.queries.descriptive import Count, Mean, StdDev, Sum, Variance
from pet.queries.marginals import Marginals
from pet.queries.order import ExactQuantiles
from pet.queries.regression import (
    LinearFit,
    LinearRegression,
    LogisticFit,
    LogisticRegression,
)
from pet.queries.survival import KaplanMeier, SurvivalCurve
from pet.queries.tables import Contingency, Histogram, Quantiles
from pet.queries.text import parse as parse_text

QUERIES: dict[str, type[Query]] = {cls.__name__: cls for cls in (
    Contingency, Correlation, Count, Covariance, ExactQuantiles, Histogram, KaplanMeier,
    LinearRegression, LogisticRegression, Marginals, Mean, Quantiles, StdDev, Sum, Variance)}
"""Every query pet answers, by class name (for the wire and the command line)."""


def parse(text: str) -> Query:
    """A query written as a call, e.g. `Histogram("age", [18, 50, 70, 100])`."""
    return parse_text(text, QUERIES)


__all__ = [
    "QUERIES",
    "Contingency",
    "Correlation",
    "Count",
    "Covariance",
    "ExactQuantiles",
    "Histogram",
    "KaplanMeier",
    "LinearFit",
    "LinearRegression",
    "LogisticFit",
    "LogisticRegression",
    "Marginals",
    "Mean",
    "Next",
    "Quantiles",
    "Query",
    "StdDev",
    "Sum",
    "SurvivalCurve",
    "Variance",
    "parse",
]
