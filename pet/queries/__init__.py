"""The statistical questions pet answers, each a `Query` of decomposable sums."""

from pet.queries.base import Next, Query
from pet.queries.covariance import Correlation, Covariance
from pet.queries.descriptive import Count, Mean, StdDev, Sum, Variance
from pet.queries.order import ExactQuantiles
from pet.queries.regression import (
    LinearFit,
    LinearRegression,
    LogisticFit,
    LogisticRegression,
)
from pet.queries.survival import KaplanMeier, SurvivalCurve
from pet.queries.tables import Contingency, Histogram, Quantiles

__all__ = [
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
    "Mean",
    "Next",
    "Quantiles",
    "Query",
    "StdDev",
    "Sum",
    "SurvivalCurve",
    "Variance",
]
