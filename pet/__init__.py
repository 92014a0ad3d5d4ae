"""pet: privacy-enhancing computation for health data.

Sites keep their rows; a `Study` answers a `Query` across them under a chosen backend,
and every `Result` says what it cost and what it guarantees.
"""

import importlib
from typing import Any

_HOMES = {
    "DisclosurePolicy": "pet.disclosure", "Result": "pet.result", "Site": "pet.site",
    "Study": "pet.study", "open_table": "pet.table",
    **dict.fromkeys(("DisclosureError", "PetError", "QueryError", "SchemaError"), "pet.errors"),
    **dict.fromkeys(("Boolean", "Categorical", "Continuous", "Integer", "Schema",
                     "TimeToEvent"), "pet.schema"),
    "Ledger": "pet.ledger",
    **dict.fromkeys(("Anova", "ChiSquare", "Contingency", "Correlation", "Count", "Covariance",
                     "Cox", "ExactQuantiles", "Histogram", "KaplanMeier", "LinearRegression",
                     "LogisticRegression", "LogRank", "Mean", "PoissonRegression",
                     "Quantiles", "StdDev", "Sum", "TableOne", "TTest", "Variance"),
                    "pet.queries"),
}
"""Where each public name lives: imported when first used (PEP 562), so that a command
which needs none of them (`pet --help`) does not pay for numpy, scipy and OpenDP."""


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'pet' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


__all__ = sorted(_HOMES)
