"""The result of a study: the answer with what it cost and what it guarantees."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pet.backends.base import Privacy, largest
from pet.hypothesis import Test
from pet.intervals import Interval
from pet.plain import plain
from pet.queries import (
    CoxFit,
    LinearFit,
    LogisticFit,
    PoissonFit,
    SurvivalCurve,
    TableOneResult,
)

if TYPE_CHECKING:
    import pandas as pd


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
    `error_bounds` holds, for each number of the answer (flattened as `answer_vector`: a
    fit's coefficients, a curve's survival), how far the backend's computation may have
    moved it from the answer the exact sums give, in the answer's units: 0 for plaintext
    and exact counts; for `he` BOUND_Z = 6.1 standard deviations of the CKKS noise carried
    through finalize (exceeded with probability below 10⁻⁹); for `mpc` the fixed-point
    error. A DP answer's bounds are the half-widths of its 95% interval from the noise,
    beside which the computation's error is negligible. `error_bound` is the largest.
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
    error_bounds: np.ndarray
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
    def error_bound(self) -> float:
        """The largest of the numbers' known error bounds (NaN when none is known)."""
        return largest(self.error_bounds)

    @property
    def bytes_total(self) -> int:
        """Bytes all sites sent, over all rounds."""
        return sum(s.bytes_sent for s in self.sites)

    def to_frame(self) -> pd.DataFrame:
        """The answer as a table (`answer_frame`), with each number's 95% interval from the
        DP noise (`interval_low`, `interval_high`) where the answer is a few numbers, or
        its error bound where the backend is inexact and the table has a row per number."""
        frame = answer_frame(self.value)
        bounds = np.asarray(self.error_bounds)
        if self.interval is not None:
            if frame.shape == (np.size(self.interval[0]), 1):
                frame = frame.assign(interval_low=self.interval[0],
                                     interval_high=self.interval[1])
        elif len(frame) == bounds.size and np.any(bounds != 0):
            frame = frame.assign(error_bound=bounds)
        return frame

    def summary(self) -> str:
        """What was asked, under which backend, of how many rows, with what error bound and
        privacy cost, then the answer's table: a report like statsmodels' `summary()`."""
        missing = ", ".join(f"{k} {v}" for k, v in self.missing.items() if v)
        lines = [self.query,
                 f"backend {self.backend}; {self.n} rows from {len(self.sites)} sites"
                 + (f" (left out as missing: {missing})" if missing else ""),
                 f"largest error bound {self.error_bound:.3g}; privacy {self.privacy}; "
                 f"{self.rounds} rounds, {self.latency_s * 1000:.0f} ms, "
                 f"{self.bytes_total} bytes sent",
                 "", self.to_frame().to_string()]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON (`pet.plain`), the answer's table as `table` records."""
        fields = {k: v for k, v in asdict(self).items() if k != "value"}
        return plain({**fields, "error_bound": self.error_bound, "value": self.value,
                      "table": self.to_frame()})


def answer_frame(value: Any) -> pd.DataFrame:
    """An answer as a table: a fit's coefficients with SEs, p-values and 95% intervals, a
    curve's survival per grid time, a test's statistic and p-value, a Table 1 as laid out
    in a paper, a matrix as is, else its numbers as one column `value`."""
    import pandas as pd  # here: an answer shown as one line needs no pandas

    if isinstance(value, LinearFit | LogisticFit | PoissonFit | CoxFit):
        return value.table()
    if isinstance(value, SurvivalCurve):
        return pd.DataFrame({"survival": value.survival, "lower": value.lower,
                             "upper": value.upper, "at_risk": value.at_risk,
                             "events": value.events}, index=pd.Index(value.times, name="time"))
    if isinstance(value, TableOneResult):
        return value.to_frame()
    if isinstance(value, Test):
        return pd.DataFrame([{"method": value.method, "statistic": value.statistic,
                              "df": ", ".join(f"{d:g}" for d in value.df), "p": value.p}])
    if isinstance(value, np.ndarray) and value.ndim == 2:
        return pd.DataFrame(value)
    return pd.DataFrame({"value": np.ravel(np.asarray(value))})


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
