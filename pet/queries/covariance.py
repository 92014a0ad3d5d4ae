"""Covariance and correlation matrices of numeric columns."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from pet.errors import QueryError
from pet.intervals import Interval, Spread
from pet.layout import Block
from pet.queries.base import (
    Query,
    State,
    affine,
    from_upper_triangle,
    gram_upper,
    require_numeric,
    scale,
)
from pet.schema import Schema

CONSTANT = 1e-6
"""Standard deviation, as a fraction of a column's public half-range, below which the
column is taken as constant: on values scaled to [-1, 1] rounding leaves a variance near
1e-16, a spread near 1e-8, so a spread this small is rounding, not data."""
SPREAD_NOISE = 1.0
"""Under DP, standard deviations of its noise a column's noisy variance must exceed for
its correlations to be estimated."""


@dataclass(frozen=True)
class Covariance(Query):
    """Sample covariance matrix (n - 1 denominator) of numeric columns, in their units.

    An exact n below 2 is refused; a noisy n below 2 (a charged DP release) is answered
    with a matrix of NaN, as numpy answers fewer than two rows: nothing is estimable."""

    columns: tuple[str, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "columns", tuple(self.columns))

    def inputs(self) -> tuple[str, ...]:
        return self.columns

    def check(self, schema: Schema) -> None:
        if len(self.columns) < 2 or len(set(self.columns)) != len(self.columns):
            raise QueryError(f"{self.describe()}: needs at least two distinct columns")
        require_numeric(self, schema, self.columns)

    def min_rows(self, schema: Schema) -> int:
        return 2

    def undetermined(self, parts: dict[str, np.ndarray], schema: Schema,
                     state: State) -> np.ndarray:
        return np.full((len(self.columns),) * 2, np.nan)

    n_weight: ClassVar[float] = 0.05

    def blocks(self, schema: Schema, state: State) -> tuple[Block, ...]:
        """Σs and the cross products Σsᵢsⱼ; under DP the cross products take most of the
        budget: their noise enters the answer directly, while the sums' and n's enter
        only through the centering (Σs)²/n, scaled by the means (|mean| ≤ 1 scaled)."""
        d = len(self.columns)
        return (Block.sums("sum", d, weight=0.25), Block.sums("cross", d * (d + 1) // 2))

    def accumulate(self, data: dict[str, np.ndarray], schema: Schema,
                   state: State) -> dict[str, np.ndarray]:
        scaled = np.column_stack([scale(schema[c], data[c]) for c in self.columns])
        return {"sum": scaled.sum(axis=0), "cross": gram_upper(scaled)}

    def answer(self, parts: dict[str, np.ndarray], schema: Schema, state: State) -> np.ndarray:
        scaled = self.scaled(parts)
        values, vectors = np.linalg.eigh(scaled)
        if values[0] < 0:  # noisy sums (DP): the nearest positive semi-definite matrix
            scaled = (vectors * np.maximum(values, 0.0)) @ vectors.T
        half = np.array([affine(schema[c])[1] for c in self.columns])
        return scaled * np.outer(half, half)

    def scaled(self, parts: dict[str, np.ndarray]) -> np.ndarray:
        """The sample covariance of the columns scaled to [-1, 1], as the sums give it
        (under DP it may not be positive semi-definite)."""
        n = parts["n"][0]
        if n < 2:
            raise QueryError(f"{self.describe()}: needs at least 2 rows, got {n:g}")
        total = parts["sum"]
        cross = from_upper_triangle(parts["cross"], len(self.columns))
        return (cross - np.outer(total, total) / n) / (n - 1)


@dataclass(frozen=True)
class Correlation(Covariance):
    """Pearson correlation matrix of numeric columns.

    A column without spread (constant, or under DP buried in noise) has no correlation:
    its row and column are NaN, as pandas answers, and the rest stands. Its spread counts
    as none below CONSTANT of its public half-range, where rounding alone can leave it."""

    def answer(self, parts: dict[str, np.ndarray], schema: Schema, state: State) -> np.ndarray:
        return self.correlation(parts, np.full(len(self.columns), CONSTANT**2))

    def conclude(self, parts: dict[str, np.ndarray], errors: dict[str, np.ndarray],
                 schema: Schema, state: State,
                 noise: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Under DP a column's spread counts as none unless its noisy variance exceeds
        SPREAD_NOISE standard deviations of its noise (from Σs² alone, whose noise
        dominates): below that, its correlations would be ratios of noise."""
        if noise is None:
            return self.answer(parts, schema, state)
        return self.correlation(parts, self.floor(parts, noise))

    def floor(self, parts: dict[str, np.ndarray], noise: dict[str, np.ndarray]) -> np.ndarray:
        """Per column, the least noisy variance (scaled) that counts as a spread."""
        d, n = len(self.columns), parts["n"][0]
        diagonal = noise["cross"][np.cumsum([0, *range(d, 1, -1)])]
        return np.maximum(SPREAD_NOISE * diagonal / (n - 1), CONSTANT**2)

    def interval(self, total: np.ndarray, spread: Spread, schema: Schema, state: State,
                 answer: Any) -> Interval | None:
        """The interval of each correlation from the ratios the noisy sums give, before
        the projection onto correlation matrices (which a finite difference would run
        twice per element: minutes for many columns), its ends kept within [-1, 1]."""
        layout = self.layout(schema, state)
        floor = self.floor(layout.split(total), layout.split(spread.sd()))

        def raw(parts: dict[str, np.ndarray]) -> np.ndarray:
            return np.ravel(self.correlation(parts, floor, project=False))

        low, high = self.raw_interval(raw, total, spread, schema, state)
        return np.clip(low, -1.0, 1.0), np.clip(high, -1.0, 1.0)

    def correlation(self, parts: dict[str, np.ndarray], floor: np.ndarray, *,
                    project: bool = True) -> np.ndarray:
        """Each covariance over the two spreads, NaN for a column whose variance (scaled)
        is not above `floor`; from noisy sums (DP), whose ratios need not form a
        correlation matrix, the nearest one: unit diagonal, positive semi-definite, so
        |r| ≤ 1 (Higham's alternating projections, statsmodels' `corr_nearest`).
        Projecting the correlations rather than the covariance keeps a noisy matrix from
        collapsing onto one direction, whose correlations are all ±1."""
        covariance = self.scaled(parts)
        variance = np.diag(covariance)
        spread = np.where(variance > floor, np.sqrt(np.maximum(variance, 0.0)), np.nan)
        correlation = covariance / np.outer(spread, spread)
        kept = np.isfinite(spread)
        inner = correlation[np.ix_(kept, kept)]
        if project:  # else the ratios as the sums give them, for `interval`
            inner = np.clip(inner, -1.0, 1.0)
        np.fill_diagonal(inner, 1.0)
        if project and inner.size and np.linalg.eigvalsh(inner)[0] < 0:
            # statsmodels (and the scipy.stats it loads) takes half a second to import:
            # only a noisy matrix that is not a correlation matrix pays for it
            from statsmodels.stats.correlation_tools import corr_nearest
            from statsmodels.tools.sm_exceptions import IterationLimitWarning

            with warnings.catch_warnings():  # it stops at its iteration limit within 1e-12
                warnings.simplefilter("ignore", IterationLimitWarning)
                inner = np.clip(corr_nearest(inner, threshold=1e-12), -1.0, 1.0)
        correlation[np.ix_(kept, kept)] = inner
        return correlation
