"""Survival on a public time grid: Kaplan–Meier curves with Greenwood confidence bands,
and the (stratified) log-rank test comparing groups."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from scipy import special

from pet.errors import QueryError
from pet.hypothesis import LOG_RANK, Test, log_rank
from pet.layout import Block
from pet.queries.base import Query, State
from pet.queries.comparisons import Comparison, group_levels
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


class TimeGrid(Query):
    """Shared handling of a public time grid for a time-to-event column `time` and its
    boolean `event` column: the grid's checks and times, and per cell (a group, a stratum)
    and grid interval (t_{k-1}, t_k] the events and the rows removed (by an event or
    censoring) there. `grid` is either a number of equal steps over the column's public
    range or the increasing grid times themselves. The query dataclasses that use it
    declare `time`, `event` and `grid` as fields."""

    time: str
    event: str
    grid: int | Sequence[float]

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.grid, int):
            object.__setattr__(self, "grid", tuple(float(t) for t in self.grid))

    def check(self, schema: Schema) -> None:
        column = schema[self.time]
        if not isinstance(column, TimeToEvent) or column.event != self.event:
            raise QueryError(f"{self.describe()}: {self.time!r} must be a time_to_event column "
                             f"of the schema whose event column is {self.event!r}")
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
                             f"the schema's upper bound {upper:g} of {self.time!r}, so that "
                             "every row falls in an interval: end it with that bound")

    def steps(self) -> int:
        """Number of grid times, known without making the grid."""
        return self.grid if isinstance(self.grid, int) else len(self.grid)

    def times(self, schema: Schema) -> np.ndarray:
        """The public grid."""
        if isinstance(self.grid, int):
            upper = schema[self.time].bounds()[1]
            return np.linspace(0, upper, self.grid + 1)[1:]
        return np.asarray(self.grid)

    def tally_blocks(self, cells: int) -> tuple[Block, ...]:
        """Events and removed rows per cell and grid interval (one row adds 1 to each)."""
        size = cells * self.steps()
        return (Block.counts("events", size), Block.counts("removed", size))

    def tally(self, data: dict[str, np.ndarray], schema: Schema, cell: np.ndarray | int,
              cells: int) -> dict[str, np.ndarray]:
        """Per cell and grid interval (cell-major), the events and the removed rows, given
        each row's cell among `cells`."""
        times = self.times(schema)
        index = np.asarray(cell) * len(times) + np.searchsorted(times, data[self.time],
                                                                side="left")
        event = data[self.event] == 1
        size = cells * len(times)
        return {
            "events": np.bincount(index[event], minlength=size).astype(np.float64),
            "removed": np.bincount(index, minlength=size).astype(np.float64),
        }


@dataclass(frozen=True)
class KaplanMeier(TimeGrid):
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

    def inputs(self) -> tuple[str, ...]:
        return (self.time, self.event)

    def check(self, schema: Schema) -> None:
        super().check(schema)
        if not 0 < self.confidence < 1:
            raise QueryError(f"{self.describe()}: confidence must lie in (0, 1)")

    def blocks(self, schema: Schema, state: State) -> tuple[Block, ...]:
        return self.tally_blocks(1)

    def accumulate(self, data: dict[str, np.ndarray], schema: Schema,
                   state: State) -> dict[str, np.ndarray]:
        return self.tally(data, schema, 0, 1)

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


@dataclass(frozen=True)
class LogRank(TimeGrid, Comparison):
    """The log-rank test that the survival of `time` (with its `event` column) is the same
    in every level of `by`, optionally stratified by the levels of `strata` (categorical
    or boolean columns); levels with no rows are left out.

    Per stratum, group and grid interval the sites count events and removed rows, as
    `KaplanMeier` does on its grid: every event and censoring in (t_{k-1}, t_k] is taken
    to happen at t_k, so the answer is the exact log-rank test of the times rounded up to
    the grid's ends (censorings at t_k still at risk for the events there). A grid holding
    every distinct time (whole days on a daily grid) gives the exact test, as lifelines'
    `multivariate_logrank_test`; stratified, the strata's O − E and covariances are added
    before the χ² (k − 1 df for k groups). Under DP the test post-processes the noisy
    counts (numbers at risk kept at 0 or more, events within them) and its p-value
    ignores the noise."""

    time: str
    event: str
    by: str
    grid: int | Sequence[float] = 100
    strata: str | None = None

    method: ClassVar[str] = LOG_RANK
    n_weight: ClassVar[float] = 0.1  # n only decides whether a noisy table is testable

    def inputs(self) -> tuple[str, ...]:
        strata = () if self.strata is None else (self.strata,)
        return (self.time, self.event, self.by, *strata)

    def check(self, schema: Schema) -> None:
        super().check(schema)
        if len(set(self.inputs())) < len(self.inputs()):
            raise QueryError(f"{self.describe()}: `by` and `strata` must be columns other "
                             f"than {self.time!r}, {self.event!r} and each other")
        group_levels(self, schema, self.by)
        if self.strata is not None:
            group_levels(self, schema, self.strata)

    def shape(self, schema: Schema) -> tuple[int, int, int]:
        """Numbers of strata, groups and grid times."""
        strata = 1 if self.strata is None else group_levels(self, schema, self.strata)
        return strata, group_levels(self, schema, self.by), self.steps()

    def min_rows(self, schema: Schema) -> int:
        return 2

    def blocks(self, schema: Schema, state: State) -> tuple[Block, ...]:
        strata, groups, _ = self.shape(schema)
        return self.tally_blocks(strata * groups)

    def accumulate(self, data: dict[str, np.ndarray], schema: Schema,
                   state: State) -> dict[str, np.ndarray]:
        strata, groups, _ = self.shape(schema)
        stratum = 0 if self.strata is None else data[self.strata].astype(np.int64)
        cell = stratum * groups + data[self.by].astype(np.int64)
        return self.tally(data, schema, cell, strata * groups)

    def test(self, parts: dict[str, np.ndarray], schema: Schema,
             noise: dict[str, np.ndarray] | None, *, exact: bool) -> Test:
        shape = self.shape(schema)
        removed = parts["removed"].reshape(shape)
        at_risk = np.maximum(np.cumsum(removed[..., ::-1], axis=-1)[..., ::-1], 0.0)
        events = np.clip(parts["events"].reshape(shape), 0.0, at_risk)
        groups = int(np.count_nonzero(at_risk[..., 0].sum(axis=0)))
        if groups < 2:
            return self.too_few(f"only {groups} level(s) of {self.by!r} have rows; the "
                                "log-rank test compares at least 2", exact=exact)
        return log_rank(events, at_risk)
