"""Kaplan–Meier survival curves on a public time grid, with Greenwood confidence bands."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special

from pet.errors import QueryError
from pet.layout import Block
from pet.queries.base import Query, State
from pet.schema import Schema, TimeToEvent


@dataclass(frozen=True)
class SurvivalCurve:
    """Survival probability after each grid time, with its pointwise confidence band.

    `at_risk[k]` counts rows still followed just after `times[k-1]`; `events[k]` counts
    events in (times[k-1], times[k]] (times[-1] taken as 0).
    """

    times: np.ndarray
    survival: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    at_risk: np.ndarray
    events: np.ndarray
    confidence: float

    def at(self, t: float) -> float:
        """Survival probability at time t (a step function, 1 before the first time)."""
        index = np.searchsorted(self.times, t, side="right") - 1
        return 1.0 if index < 0 else float(self.survival[index])


@dataclass(frozen=True)
class KaplanMeier(Query):
    """Kaplan–Meier estimate of a time-to-event column on a public grid.

    Events and censorings are counted per grid interval (t_{k-1}, t_k]; when every event
    time is a grid point (e.g. whole days on a daily grid) the estimate equals the exact
    Kaplan–Meier estimator. `event` is the time column's boolean event column. `grid` is
    either a number of equal steps over the column's public range or the increasing grid
    times themselves. Bands use the exponential Greenwood (log–log) formula.
    """

    time: str
    event: str
    grid: int | Sequence[float] = 100
    confidence: float = 0.95

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.grid, int):
            object.__setattr__(self, "grid", tuple(float(t) for t in self.grid))

    def inputs(self) -> tuple[str, ...]:
        return (self.time, self.event)

    def check(self, schema: Schema) -> None:
        column = schema[self.time]
        if not isinstance(column, TimeToEvent) or column.event != self.event:
            raise QueryError(f"{self.describe()}: {self.time!r} must be a time_to_event column "
                             f"of the schema whose event column is {self.event!r}")
        if not 0 < self.confidence < 1:
            raise QueryError(f"{self.describe()}: confidence must lie in (0, 1)")
        upper = schema[self.time].bounds()[1]
        if isinstance(self.grid, int):  # equal steps over (0, upper], checked unmade
            ends, increasing = (upper / max(self.grid, 1), upper), upper > 0
        else:
            times = np.asarray(self.grid)
            ends = (times[0], times[-1]) if len(times) else (0.0, 0.0)
            increasing = not np.any(np.diff(times) <= 0)
        if self.steps() < 1 or not increasing or ends[0] <= 0:
            raise QueryError(f"{self.describe()}: grid times must be positive and increasing")
        if ends[1] < upper:
            raise QueryError(f"{self.describe()}: the grid ends at {ends[1]:g} but must reach "
                             f"the schema's upper bound {upper:g} of {self.time!r}")

    def steps(self) -> int:
        """Number of grid times, known without making the grid."""
        return self.grid if isinstance(self.grid, int) else len(self.grid)

    def times(self, schema: Schema) -> np.ndarray:
        """The public grid."""
        if isinstance(self.grid, int):
            upper = schema[self.time].bounds()[1]
            return np.linspace(0, upper, self.grid + 1)[1:]
        return np.asarray(self.grid)

    def blocks(self, schema: Schema, state: State) -> tuple[Block, ...]:
        return (Block.counts("events", self.steps()), Block.counts("removed", self.steps()))

    def accumulate(self, data: dict[str, np.ndarray], schema: Schema,
                   state: State) -> dict[str, np.ndarray]:
        times = self.times(schema)
        index = np.searchsorted(times, data[self.time], side="left")
        event = data[self.event] == 1
        return {
            "events": np.bincount(index[event], minlength=len(times)).astype(np.float64),
            "removed": np.bincount(index, minlength=len(times)).astype(np.float64),
        }

    def numbers(self, answer: Any) -> np.ndarray:
        """The survival probabilities, one per grid time."""
        return np.asarray(answer.survival, dtype=np.float64)

    def answer(self, parts: dict[str, np.ndarray], schema: Schema, state: State) -> SurvivalCurve:
        events, removed = parts["events"], parts["removed"]
        at_risk = np.maximum(parts["n"][0] - np.concatenate([[0.0], np.cumsum(removed)[:-1]]),
                             0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            # a hazard within [0, 1] keeps the curve monotone in [0, 1] even from noisy
            # counts (under DP, post-processing); exact counts are already there
            hazard = np.clip(np.where(at_risk > 0, events / at_risk, 0.0), 0.0, 1.0)
            survival = np.cumprod(1.0 - hazard)
            terms = np.where(at_risk > events, events / (at_risk * (at_risk - events)), 0.0)
            greenwood = np.cumsum(terms)
            z = special.ndtri(0.5 + self.confidence / 2)
            log_s = np.log(survival)
            spread = z * np.sqrt(greenwood) / log_s
            lower = np.exp(-np.exp(np.log(-log_s) - spread))
            upper = np.exp(-np.exp(np.log(-log_s) + spread))
        lower = np.nan_to_num(lower, nan=1.0)
        upper = np.nan_to_num(upper, nan=1.0)
        return SurvivalCurve(self.times(schema), survival, np.minimum(lower, survival),
                             np.maximum(upper, survival), at_risk, events.copy(),
                             self.confidence)
