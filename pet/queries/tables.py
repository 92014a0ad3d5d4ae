"""Counts in public cells: histograms, contingency tables (k-way marginals), and
quantiles read off a fine public-grid histogram."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import special

from pet.errors import QueryError
from pet.intervals import Interval, Spread, table
from pet.layout import Block
from pet.mechanisms import CONFIDENCE
from pet.queries.base import Query, State, levels, require_numeric
from pet.schema import Boolean, Categorical, Schema


def bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value for bins [e0, e1), [e1, e2), ..., [e_{k-1}, e_k] (last one closed)."""
    return np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)


def consistent_counts(counts: np.ndarray, total: float) -> np.ndarray:
    """The whole, non-negative counts nearest to `counts` (Euclidean projection onto the
    simplex) that add up to `total`, the number of rows every cell's counts partition;
    exact counts come back unchanged. Under DP it makes a noisy table consistent with its
    noisy n, at no privacy cost (post-processing)."""
    total = max(float(np.rint(total)), 0.0)
    if total == 0:
        return np.zeros_like(counts)
    ordered = np.sort(counts)[::-1]
    excess = np.cumsum(ordered) - total
    last = np.nonzero(ordered - excess / np.arange(1, counts.size + 1) > 0)[0][-1]
    shift = excess[last] / (last + 1)
    projected = np.maximum(counts - shift, 0.0)
    whole = np.floor(projected)
    short = int(total - whole.sum())  # largest remainders get the missing units
    if short > 0:
        whole[np.argsort(whole - projected, kind="stable")[:short]] += 1
    return whole


def counts_interval(query: Query, total: np.ndarray, spread: Spread, schema: Schema,
                    state: State, answer: Any) -> Interval:
    """A table's interval (`pet.intervals.table`): the noise of each cell after the table
    is made to add up to the noisy n, which removes part of the cells' noise and adds a
    K-th of n's."""
    cells = query.block_spread(spread, schema, state, "counts").scales
    n = query.block_spread(spread, schema, state, "n").scales
    return table(query.numbers(answer), float(cells[0]), float(n[0]), spread)


def rank(prob: float, n: float) -> int:
    """The 1-based rank of the `prob` quantile among n values: ⌈prob·n⌉, at least 1
    (numpy's "inverted_cdf" quantile is the value of that rank)."""
    return max(1, math.ceil(prob * n))


def grid_quantiles(counts: np.ndarray, edges: np.ndarray,
                   probs: Sequence[float]) -> np.ndarray:
    """Quantiles read off a histogram on the grid `edges`: for probability p, the bin
    holding the ⌈p·n⌉-th smallest value, interpolated linearly inside it (within one bin
    width of numpy's "inverted_cdf" quantile). Noisy negative counts count as 0."""
    counts = np.maximum(counts, 0)
    cumulative = np.cumsum(counts)
    targets = np.asarray(probs) * cumulative[-1]
    index = np.minimum(np.searchsorted(cumulative, targets, side="left"), counts.size - 1)
    before = np.where(index > 0, cumulative[index - 1], 0.0)
    inside = np.divide(targets - before, counts[index], out=np.ones_like(targets),
                       where=counts[index] > 0)
    return edges[index] + np.clip(inside, 0, 1) * (edges[index + 1] - edges[index])


def check_edges(query: Query, schema: Schema, column: str, edges: Sequence[float]) -> None:
    """Edges must increase strictly and cover the column's public bounds."""
    edges = np.asarray(edges, dtype=np.float64)
    lower, upper = schema[column].bounds()
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise QueryError(f"{query.describe()}: bin edges of {column!r} must be at least two "
                         "strictly increasing numbers")
    if edges[0] > lower or edges[-1] < upper:
        raise QueryError(
            f"{query.describe()}: bin edges of {column!r} span [{edges[0]:g}, {edges[-1]:g}] "
            f"but must cover the schema's bounds [{lower:g}, {upper:g}]"
        )


def check_bins(query: Query, schema: Schema, columns: Sequence[str],
               bins: Mapping[str, Sequence[float]]) -> None:
    """Categorical and boolean columns take no bins (they have public levels); every
    numeric column needs public bin edges that cover its bounds."""
    for name in columns:
        if isinstance(schema[name], Categorical | Boolean):
            if name in bins:
                raise QueryError(f"{query.describe()}: {name!r} has public levels; "
                                 "do not give it bins")
        elif name in bins:
            check_edges(query, schema, name, bins[name])
        else:
            raise QueryError(f"{query.describe()}: numeric column {name!r} needs public "
                             f"bin edges, e.g. bins={{{name!r}: [...]}}")


@dataclass(frozen=True)
class Histogram(Query):
    """Counts of a numeric column in public bins; the answer is an array of counts."""

    column: str
    edges: tuple[float, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "edges", tuple(float(e) for e in self.edges))

    def inputs(self) -> tuple[str, ...]:
        return (self.column,)

    def check(self, schema: Schema) -> None:
        require_numeric(self, schema, self.inputs())
        check_edges(self, schema, self.column, self.edges)

    def blocks(self, schema: Schema, state: State) -> tuple[Block, ...]:
        return (Block.counts("counts", len(self.edges) - 1),)

    def accumulate(self, data: dict[str, np.ndarray], schema: Schema,
                   state: State) -> dict[str, np.ndarray]:
        index = bin_index(data[self.column], np.asarray(self.edges))
        return {"counts": np.bincount(index, minlength=len(self.edges) - 1).astype(np.float64)}

    def answer(self, parts: dict[str, np.ndarray], schema: Schema, state: State) -> np.ndarray:
        return consistent_counts(parts["counts"], parts["n"][0])

    def interval(self, total: np.ndarray, spread: Spread, schema: Schema, state: State,
                 answer: Any) -> Interval | None:
        return counts_interval(self, total, spread, schema, state, answer)


@dataclass(frozen=True)
class Contingency(Query):
    """Counts of every combination of the columns' levels: a k-way marginal.

    Categorical and boolean columns use their public levels; a numeric column needs its
    public bin edges in `bins`. The answer is an array with one axis per column.
    """

    columns: tuple[str, ...]
    bins: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "columns", tuple(self.columns))
        object.__setattr__(self, "bins", {k: tuple(v) for k, v in dict(self.bins).items()})

    def inputs(self) -> tuple[str, ...]:
        return self.columns

    def check(self, schema: Schema) -> None:
        if not self.columns:
            raise QueryError("Contingency needs at least one column")
        check_bins(self, schema, self.columns, self.bins)
        stray = sorted(set(self.bins) - set(self.columns))
        if stray:
            raise QueryError(f"{self.describe()}: bins given for columns not in the table: "
                             f"{stray}")

    def shape(self, schema: Schema) -> tuple[int, ...]:
        """Number of levels of each column, in order."""
        return tuple(len(self.bins[c]) - 1 if c in self.bins else levels(schema[c])
                     for c in self.columns)

    def blocks(self, schema: Schema, state: State) -> tuple[Block, ...]:
        return (Block.counts("counts", math.prod(self.shape(schema))),)

    def accumulate(self, data: dict[str, np.ndarray], schema: Schema,
                   state: State) -> dict[str, np.ndarray]:
        codes = [bin_index(data[c], np.asarray(self.bins[c])) if c in self.bins
                 else data[c].astype(np.int64) for c in self.columns]
        shape = self.shape(schema)
        flat = np.ravel_multi_index(codes, shape) if codes[0].size else np.zeros(0, np.int64)
        counts = np.bincount(flat, minlength=math.prod(shape))
        return {"counts": counts.astype(np.float64)}

    def answer(self, parts: dict[str, np.ndarray], schema: Schema, state: State) -> np.ndarray:
        return consistent_counts(parts["counts"], parts["n"][0]).reshape(self.shape(schema))

    def interval(self, total: np.ndarray, spread: Spread, schema: Schema, state: State,
                 answer: Any) -> Interval | None:
        return counts_interval(self, total, spread, schema, state, answer)


@dataclass(frozen=True)
class Quantiles(Query):
    """Quantiles read off a histogram on a fine public grid of `bins` equal-width bins.

    For probability p the answer lies in the grid bin holding the ⌈p·n⌉-th smallest value
    (numpy's "inverted_cdf" quantile), interpolated linearly inside it: its error is at
    most one bin width, (upper - lower) / bins, which `resolution` reports.
    """

    column: str
    probs: tuple[float, ...] = (0.25, 0.5, 0.75)
    bins: int = 1000

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "probs", tuple(float(p) for p in self.probs))

    def inputs(self) -> tuple[str, ...]:
        return (self.column,)

    def check(self, schema: Schema) -> None:
        require_numeric(self, schema, self.inputs())
        if not self.probs or any(not 0 < p < 1 for p in self.probs):
            raise QueryError(f"{self.describe()}: probabilities must lie in (0, 1)")
        if not 1 <= self.bins <= 1_000_000:
            raise QueryError(f"{self.describe()}: bins must be between 1 and 1000000")

    def edges(self, schema: Schema) -> np.ndarray:
        """The public grid."""
        lower, upper = schema[self.column].bounds()
        return np.linspace(lower, upper, self.bins + 1)

    def resolution(self, schema: Schema) -> float:
        """Width of one grid bin: the most any quantile can be off."""
        lower, upper = schema[self.column].bounds()
        return (upper - lower) / self.bins

    def bin_of(self, below: np.ndarray) -> np.ndarray:
        """The grid bin of each quantile from how many cumulative counts lie below its
        rank (the one thing MPC reveals of the histogram)."""
        return np.minimum(below, self.bins - 1)

    def blocks(self, schema: Schema, state: State) -> tuple[Block, ...]:
        return (Block.counts("counts", self.bins),)

    def accumulate(self, data: dict[str, np.ndarray], schema: Schema,
                   state: State) -> dict[str, np.ndarray]:
        index = bin_index(data[self.column], self.edges(schema))
        return {"counts": np.bincount(index, minlength=self.bins).astype(np.float64)}

    def answer(self, parts: dict[str, np.ndarray], schema: Schema, state: State) -> np.ndarray:
        return grid_quantiles(parts["counts"], self.edges(schema), self.probs)

    def interval(self, total: np.ndarray, spread: Spread, schema: Schema, state: State,
                 answer: Any) -> Interval | None:
        """Each quantile's interval by inverting a test on the noisy histogram: the grid
        edges e where the noisy count below e is within z standard deviations of p times
        the noisy total (the count below e and the total share their cells' noise, so the
        difference has variance σ²·((1 − p)²·below + p²·above) for equal cell noise σ);
        a normal approximation, also for Laplace noise."""
        cells = self.block_spread(spread, schema, state, "counts").sd()
        counts = self.layout(schema, state).split(total)["counts"]
        edges = self.edges(self.bounded(schema))
        below = np.concatenate([[0.0], np.cumsum(counts)])
        variance_below = np.concatenate([[0.0], np.cumsum(cells**2)])
        z = special.ndtri(0.5 + CONFIDENCE / 2)
        low, high = [], []
        for p in self.probs:
            gap = below - p * below[-1]
            sd = np.sqrt((1 - p) ** 2 * variance_below
                         + p**2 * (variance_below[-1] - variance_below))
            inside = np.flatnonzero(np.abs(gap) <= z * sd)
            if inside.size == 0:  # the noisy CDF jumps past p within one bin
                inside = np.array([int(np.argmin(np.abs(gap)))])
            low.append(edges[max(inside[0] - 1, 0)])
            high.append(edges[min(inside[-1] + 1, self.bins)])
        return np.array(low), np.array(high)
