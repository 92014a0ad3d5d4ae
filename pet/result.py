"""The result of a study: the answer with what it cost and what it guarantees."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pet.backends.base import Privacy
from pet.hypothesis import Test
from pet.intervals import Interval
from pet.queries import (
    CoxFit,
    LinearFit,
    LogisticFit,
    PoissonFit,
    SurvivalCurve,
    TableOneResult,
)


@dataclass(frozen=True)
class SiteReport:
    """One site's share of the work, summed over rounds: its local pass over the rows,
    protecting the partial (encrypting, noising, sharing) and the bytes it sent."""

    name: str
    local_s: float
    protect_s: float
    bytes_sent: int

    @property
    def seconds(self) -> float:
        """All the site's time."""
        return self.local_s + self.protect_s


@dataclass(frozen=True)
class Result:
    """An answer, its backend, error bound, privacy guarantee and cost.

    `n` counts the rows used (complete rows of the subgroup, all sites); `missing` counts,
    per column read, rows of the subgroup left out because that value was missing.
    `error_bound` bounds the backend's error on each aggregated sum (0: exact), or on
    each revealed number of the answer when the backend finalizes it securely (MPC).
    `combine_s` and `reveal_s` are the coordinator's and the analyst's time, over rounds;
    `comm_rounds` the rounds of communication among MPC parties (0 for other backends).
    `clipped` counts, per column the query clips (`pet.clipping`), rows whose value was
    clamped into its clipping bounds. `interval`, for a DP answer, holds each of its
    numbers' 95% interval from the noise it carries (lower ends, upper ends, flattened as
    `answer_vector`): where the answer without noise, on the same rows, lies.
    """

    query: str
    value: Any
    backend: str
    n: int
    missing: dict[str, int]
    error_bound: float
    privacy: Privacy
    rounds: int
    latency_s: float
    sites: tuple[SiteReport, ...]
    combine_s: float
    reveal_s: float
    comm_rounds: int
    interval: Interval | None = None
    clipped: dict[str, int] = field(default_factory=dict)

    @property
    def bytes_total(self) -> int:
        """Bytes all sites sent, over all rounds."""
        return sum(s.bytes_sent for s in self.sites)


def answer_vector(value: Any) -> np.ndarray:
    """The numbers of an answer, flattened, so that answers of different backends can be
    compared: coefficients of a fit, survival of a curve, a test's statistic and p-value,
    else the value itself."""
    if isinstance(value, LinearFit | LogisticFit | PoissonFit | CoxFit):
        return np.asarray(value.coef, dtype=np.float64)
    if isinstance(value, SurvivalCurve):
        return np.asarray(value.survival, dtype=np.float64)
    if isinstance(value, TableOneResult):
        return value.vector()
    if isinstance(value, Test):
        return np.array([value.statistic, value.p], dtype=np.float64)
    return np.ravel(np.asarray(value, dtype=np.float64))
