"""Exact quantiles over records, by a search on the values that reveals only the answer.

Each round the sites count their values at or below public thresholds that split the
current interval into `branching` parts; the analyst learns only which part holds the
quantile's rank (under MPC the counts stay secret-shared and only that part's index is
revealed: the next digits of the answer, in base `branching`). The search runs over the
order-preserving integer keys of float64 values, so it ends on a record's exact value,
numpy's "inverted_cdf" quantile, after at most ⌈64 / log2(branching)⌉ rounds.

An exact quantile is one patient's value: sites whose rules forbid releasing record
values should use the grid `Quantiles`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from pet.errors import QueryError
from pet.layout import Block
from pet.queries.base import Next, Query, State, check_iteration, require_numeric, whole
from pet.queries.tables import rank
from pet.schema import Schema

SIGN_OFF = np.int64(0x7FFF_FFFF_FFFF_FFFF)


def keys(values: np.ndarray) -> np.ndarray:
    """int64 keys that order like the float64 values (−0.0 is taken as 0.0)."""
    bits = (np.asarray(values, dtype=np.float64) + 0.0).view(np.int64)
    return np.where(bits < 0, bits ^ SIGN_OFF, bits)


def from_key(key: int) -> float:
    """The float64 value of a key."""
    bits = np.int64(key)
    return float(np.array([bits ^ SIGN_OFF if bits < 0 else bits]).view(np.float64)[0])


@dataclass(frozen=True)
class Interval:
    """Public state: per probability the key interval (lo, hi] holding its quantile."""

    iteration: int
    lo: tuple[int, ...]
    hi: tuple[int, ...]


@dataclass(frozen=True)
class ExactQuantiles(Query):
    """Exact sample quantiles (numpy's "inverted_cdf": the ⌈p·n⌉-th smallest value)."""

    column: str
    probs: tuple[float, ...] = (0.25, 0.5, 0.75)
    branching: int = 256

    releases_records: ClassVar[bool] = True
    secure_only: ClassVar[bool] = True  # its counts at chosen thresholds are a histogram

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "probs", tuple(float(p) for p in self.probs))

    def inputs(self) -> tuple[str, ...]:
        return (self.column,)

    def check(self, schema: Schema) -> None:
        require_numeric(self, schema, self.inputs())
        if not self.probs or any(not 0 < p < 1 for p in self.probs):
            raise QueryError(f"{self.describe()}: probabilities must lie in (0, 1)")
        if not 2 <= self.branching <= 4096:
            raise QueryError(f"{self.describe()}: branching must be between 2 and 4096")

    @property
    def max_rounds(self) -> int:
        return math.ceil(64 / math.log2(self.branching)) + 1

    def initial_state(self, schema: Schema) -> Interval:
        lower, upper = schema[self.column].bounds()
        lo, hi = int(keys(np.array([lower]))[0]) - 1, int(keys(np.array([upper]))[0])
        return Interval(0, (lo,) * len(self.probs), (hi,) * len(self.probs))

    def check_state(self, schema: Schema, state: State) -> None:
        """An Interval of an iteration before `max_rounds` whose (lo, hi], one per
        probability, are whole keys inside the first round's interval."""
        check_iteration(self, state, Interval, self.max_rounds)
        if not (isinstance(state.lo, tuple | list) and isinstance(state.hi, tuple | list)
                and len(state.lo) == len(state.hi) == len(self.probs)):
            raise QueryError(f"{self.describe()}: the state's lo and hi must hold one key per "
                             f"probability ({len(self.probs)})")
        first = self.initial_state(schema)
        if not all(whole(lo) and whole(hi) and first.lo[0] <= lo <= hi <= first.hi[0]
                   for lo, hi in zip(state.lo, state.hi, strict=True)):
            raise QueryError(f"{self.describe()}: the state's intervals must be whole keys with "
                             f"{first.lo[0]} <= lo <= hi <= {first.hi[0]}")

    def thresholds(self, state: Interval) -> np.ndarray:
        """Per probability, `branching` − 1 increasing keys splitting (lo, hi]; an interval
        narrower than that repeats its upper end."""
        cuts = np.empty((len(self.probs), self.branching - 1), dtype=np.int64)
        for q, (lo, hi) in enumerate(zip(state.lo, state.hi, strict=True)):
            width = hi - lo
            cuts[q] = [min(hi, lo + -(-j * width // self.branching)) if width >= self.branching
                       else min(hi, lo + j) for j in range(1, self.branching)]
        return cuts

    def blocks(self, schema: Schema, state: State) -> tuple[Block, ...]:
        size = len(self.probs) * (self.branching - 1)
        return (Block.counts("at_or_below", size, per_row=size, cells=False),)

    def accumulate(self, data: dict[str, np.ndarray], schema: Schema,
                   state: State) -> dict[str, np.ndarray]:
        values = keys(data[self.column])
        counts = [np.cumsum(np.bincount(np.searchsorted(cuts, values, side="left"),
                                        minlength=self.branching))[:-1]
                  for cuts in self.thresholds(state)]
        return {"at_or_below": np.concatenate(counts).astype(np.float64)}

    def targets(self, n: float) -> list[int]:
        """The rank of each probability's quantile among n values."""
        return [rank(p, n) for p in self.probs]

    def answer(self, parts: dict[str, np.ndarray], schema: Schema,
               state: State) -> np.ndarray | Next:
        counts = parts["at_or_below"].reshape(len(self.probs), -1)
        targets = np.array(self.targets(parts["n"][0]))[:, None]
        return self.advance((counts < targets).sum(axis=1), state)

    def advance(self, below: np.ndarray, state: Interval) -> np.ndarray | Next:
        """Narrow each interval to the part holding its rank, given how many thresholds
        have fewer values at or below them than the rank; the values once every interval
        holds one key."""
        ends = self.thresholds(state)
        lo, hi = [], []
        for q, k in enumerate(np.asarray(below, dtype=np.int64)):
            bounds = [state.lo[q], *ends[q].tolist(), state.hi[q]]
            lo.append(bounds[k])
            hi.append(bounds[k + 1])
        if all(h - low <= 1 for low, h in zip(lo, hi, strict=True)):
            return np.array([from_key(h) for h in hi])
        return Next(Interval(state.iteration + 1, tuple(lo), tuple(hi)))
