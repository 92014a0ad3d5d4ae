"""pet: privacy-enhancing computation for health data.

Sites keep their rows; a `Study` answers a `Query` across them under a chosen backend,
and every `Result` says what it cost and what it guarantees.
"""

from pet.disclosure import DisclosurePolicy
from pet.errors import DisclosureError, PetError, QueryError, SchemaError
from pet.queries import (
    Contingency,
    Correlation,
    Count,
    Covariance,
    Histogram,
    KaplanMeier,
    LinearRegression,
    LogisticRegression,
    Mean,
    Quantiles,
    StdDev,
    Sum,
    Variance,
)
from pet.result import Result
from pet.schema import Boolean, Categorical, Continuous, Integer, Schema, TimeToEvent
from pet.site import Site
from pet.study import Study
from pet.table import open_table

__all__ = [
    "Boolean",
    "Categorical",
    "Contingency",
    "Continuous",
    "Correlation",
    "Count",
    "Covariance",
    "DisclosureError",
    "DisclosurePolicy",
    "Histogram",
    "Integer",
    "KaplanMeier",
    "LinearRegression",
    "LogisticRegression",
    "Mean",
    "PetError",
    "Quantiles",
    "QueryError",
    "Result",
    "Schema",
    "SchemaError",
    "Site",
    "StdDev",
    "Study",
    "Sum",
    "TimeToEvent",
    "Variance",
    "open_table",
]
