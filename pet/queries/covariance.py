"""Covariance and correlation matrices of numeric columns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pet.errors import QueryError
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

    def blocks(self, schema: Schema, state: State) -> tuple[Block, ...]:
        d = len(self.columns)
        return (Block.sums("sum", d), Block.sums("cross", d * (d + 1) // 2))

    def accumulate(self, data: dict[str, np.ndarray], schema: Schema,
                   state: State) -> dict[str, np.ndarray]:
        scaled = np.column_stack([scale(schema[c], data[c]) for c in self.columns])
        return {"sum": scaled.sum(axis=0), "cross": gram_upper(scaled)}

    def answer(self, parts: dict[str, np.ndarray], schema: Schema, state: State) -> np.ndarray:
        n = parts["n"][0]
        if n < 2:
            raise QueryError(f"{self.describe()}: needs at least 2 rows, got {n:g}")
        total = parts["sum"]
        cross = from_upper_triangle(parts["cross"], len(self.columns))
        scaled = (cross - np.outer(total, total) / n) / (n - 1)
        values, vectors = np.linalg.eigh(scaled)
        if values[0] < 0:  # noisy sums (DP): the nearest positive semi-definite matrix
            scaled = (vectors * np.maximum(values, 0.0)) @ vectors.T
        half = np.array([affine(schema[c])[1] for c in self.columns])
        return scaled * np.outer(half, half)


@dataclass(frozen=True)
class Correlation(Covariance):
    """Pearson correlation matrix of numeric columns.

    A column without spread (constant, or under DP buried in noise) has no correlation:
    its row and column are NaN, as pandas answers, and the rest stands. Its spread counts
    as none below CONSTANT of its public half-range, where rounding alone can leave it."""

    def answer(self, parts: dict[str, np.ndarray], schema: Schema, state: State) -> np.ndarray:
        covariance = super().answer(parts, schema, state)
        half = np.array([affine(schema[c])[1] for c in self.columns])
        std = np.sqrt(np.diag(covariance))
        spread = np.where(std > CONSTANT * half, std, np.nan)
        return np.clip(covariance / np.outer(spread, spread), -1.0, 1.0)
