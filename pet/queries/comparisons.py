"""Group comparisons answered as hypothesis tests: Welch's t-test, one-way ANOVA and the
χ² test of independence, each from sums the sites add (`pet.hypothesis` does the test).

Under DP the test is post-processing of the noisy sums. Only the t-test widens its
reference distribution by the noise on its difference of means; the ANOVA and χ² p-values
treat the noisy sums as exact, so read them as approximate at small ε.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from pet.errors import QueryError
from pet.hypothesis import (
    ANOVA,
    CHI_SQUARE,
    WELCH,
    Test,
    anova,
    chi_square,
    mean_difference_noise,
    untestable,
    welch,
)
from pet.intervals import Interval, Spread
from pet.layout import Block
from pet.queries.base import Query, State, affine, require_numeric, scale
from pet.queries.tables import Contingency
from pet.schema import Boolean, Categorical, Schema


def group_levels(query: Query, schema: Schema, name: str) -> int:
    """Number of levels of a grouping column; only categorical and boolean columns have
    public levels to group by."""
    column = schema[name]
    if isinstance(column, Categorical):
        return len(column.categories)
    if isinstance(column, Boolean):
        return 2
    raise QueryError(f"{query.describe()}: {name!r} is a {column.kind} column; groups come "
                     "from a categorical or boolean column")


def level_name(schema: Schema, name: str, code: int) -> str:
    """The label of one level of a categorical or boolean column, for messages."""
    column = schema[name]
    return str(column.categories[code]) if isinstance(column, Categorical) else str(bool(code))


def one_per_row(name: str, size: int) -> Block:
    """Sums where one row adds at most 1, in absolute value, to one element (its group's)."""
    return Block(name, size, 1.0, 1.0, 1.0)


class Comparison(Query):
    """A query whose answer is a hypothesis test (`pet.hypothesis.Test`).

    With exact counts, data too thin for the test is refused with the reason; with noisy
    ones (a DP release, already charged) the answer is then a Test of NaNs."""

    method: ClassVar[str]
    """The test's name, as its `Test` states it."""
    dfs: ClassVar[int] = 1
    """How many degrees of freedom the test has (two for F)."""

    @abstractmethod
    def test(self, parts: dict[str, np.ndarray], schema: Schema,
             noise: dict[str, np.ndarray] | None, *, exact: bool) -> Test:
        """The test from the aggregated blocks, given the DP noise's per-element SDs."""

    def answer(self, parts: dict[str, np.ndarray], schema: Schema, state: State) -> Test:
        return self.test(parts, schema, None, exact=True)

    def conclude(self, parts: dict[str, np.ndarray], errors: dict[str, np.ndarray],
                 schema: Schema, state: State,
                 noise: dict[str, np.ndarray] | None = None) -> Test:
        return self.test(parts, schema, noise, exact=not np.any(errors["n"] > 0))

    def undetermined(self, parts: dict[str, np.ndarray], schema: Schema, state: State) -> Test:
        return untestable(self.method, self.dfs)

    def too_few(self, reason: str, *, exact: bool) -> Test:
        """Refuse exact data too thin for the test; answer noisy data with NaNs."""
        if exact:
            raise QueryError(f"{self.describe()}: {reason}")
        return untestable(self.method, self.dfs)

    def numbers(self, answer: Any) -> np.ndarray:
        """The statistic and the p-value."""
        return np.array([answer.statistic, answer.p], dtype=np.float64)

    def interval(self, total: np.ndarray, spread: Spread, schema: Schema, state: State,
                 answer: Any) -> Interval | None:
        """None: a test states its uncertainty by its p-value, not by an interval."""
        return None


@dataclass(frozen=True)
class GroupMoments(Comparison):
    """Shared layout of a numeric column within each level of a grouping column `by`: per
    group the count, Σs and Σs² of the column scaled to [-1, 1] (one row adds to one
    group's elements only)."""

    column: str
    by: str

    n_weight: ClassVar[float] = 0.1  # the per-group counts carry the answer

    def inputs(self) -> tuple[str, ...]:
        return (self.column, self.by)

    def check(self, schema: Schema) -> None:
        if self.column == self.by:
            raise QueryError(f"{self.describe()}: compare {self.column!r} across the levels "
                             "of another column")
        require_numeric(self, schema, (self.column,))
        group_levels(self, schema, self.by)

    def blocks(self, schema: Schema, state: State) -> tuple[Block, ...]:
        k = group_levels(self, schema, self.by)
        return (Block.counts("counts", k), one_per_row("sums", k), one_per_row("sums_sq", k))

    def accumulate(self, data: dict[str, np.ndarray], schema: Schema,
                   state: State) -> dict[str, np.ndarray]:
        k = group_levels(self, schema, self.by)
        group = data[self.by].astype(np.int64)
        s = scale(schema[self.column], data[self.column])
        return {"counts": np.bincount(group, minlength=k).astype(np.float64),
                "sums": np.bincount(group, weights=s, minlength=k).astype(np.float64),
                "sums_sq": np.bincount(group, weights=s * s, minlength=k).astype(np.float64)}

    def moments(self, parts: dict[str, np.ndarray],
                schema: Schema) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per group the count, mean and unbiased variance in the column's units: noisy
        counts kept at 0 or more, means within the bounds, variances at 0 or more (NaN for
        a group of fewer than 2 rows)."""
        center, half = affine(schema[self.column])
        n = np.maximum(parts["counts"], 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = np.clip(parts["sums"] / n, -1.0, 1.0)
            variance = np.maximum((parts["sums_sq"] - n * mean**2) / (n - 1), 0.0)
        variance = np.where(n >= 2, variance, np.nan)
        return n, center + half * mean, half**2 * variance


@dataclass(frozen=True)
class TTest(GroupMoments):
    """Welch's two-sample t-test of `column` between the two levels of `by` (the first
    level's mean minus the second's), as scipy's `ttest_ind(equal_var=False)`.

    Under DP the variance the noise adds to the difference of means (delta method through
    each mean Σs/n) joins the test's, so that the p-value is not smaller than the noisy
    sums support."""

    method: ClassVar[str] = WELCH

    def check(self, schema: Schema) -> None:
        super().check(schema)
        k = group_levels(self, schema, self.by)
        if k != 2:
            raise QueryError(f"{self.describe()}: {self.by!r} has {k} levels but a t-test "
                             "compares exactly 2; use Anova for more")

    def min_rows(self, schema: Schema) -> int:
        return 4

    def test(self, parts: dict[str, np.ndarray], schema: Schema,
             noise: dict[str, np.ndarray] | None, *, exact: bool) -> Test:
        n, mean, variance = self.moments(parts, schema)
        short = np.flatnonzero(n < 2)
        if short.size:
            code = int(short[0])
            return self.too_few(f"level {level_name(schema, self.by, code)!r} of {self.by!r} "
                                f"has {n[code]:g} rows; Welch's t-test needs at least 2 in "
                                "each group", exact=exact)
        return welch(n, mean, variance, noise_var=self.noise_var(parts, schema, n, noise))

    def noise_var(self, parts: dict[str, np.ndarray], schema: Schema, n: np.ndarray,
                  noise: dict[str, np.ndarray] | None) -> float:
        """The DP noise's variance on the difference of the two means
        (`mean_difference_noise`), 0 without noise."""
        if noise is None:
            return 0.0
        return mean_difference_noise(affine(schema[self.column])[1], n, parts["sums"] / n,
                                     noise["sums"], noise["counts"])


@dataclass(frozen=True)
class Anova(GroupMoments):
    """One-way ANOVA's F test of `column` across the levels of `by`, as scipy's
    `f_oneway` on the groups that have rows: levels with no rows are left out.

    Under DP the F test post-processes the noisy sums (noisy counts below 1 leave their
    group out) and its p-value ignores the noise."""

    method: ClassVar[str] = ANOVA
    dfs: ClassVar[int] = 2

    def min_rows(self, schema: Schema) -> int:
        return 3

    def test(self, parts: dict[str, np.ndarray], schema: Schema,
             noise: dict[str, np.ndarray] | None, *, exact: bool) -> Test:
        n, mean, variance = self.moments(parts, schema)
        present = n >= 1
        if present.sum() < 2:
            return self.too_few(f"only {present.sum()} level(s) of {self.by!r} have rows; "
                                "ANOVA compares at least 2", exact=exact)
        # a group of one row adds nothing within groups: its (n - 1)·variance is 0
        return anova(n[present], mean[present], np.nan_to_num(variance[present]))


@dataclass(frozen=True)
class ChiSquare(Comparison):
    """Pearson's χ² test of independence of two categorical or boolean columns from
    their contingency table, as scipy's `chi2_contingency` (`yates`: the continuity
    correction of a 2 × 2 table). Levels with no rows are left out.

    The table is `Contingency`'s, so under DP it is the noisy table made whole,
    non-negative and adding up to the noisy n; the p-value ignores the noise."""

    row: str
    column: str
    yates: bool = True

    method: ClassVar[str] = CHI_SQUARE

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.yates, bool):
            raise QueryError(f"{type(self).__name__}: yates must be true or false, got "
                             f"{self.yates!r}")

    def table(self) -> Contingency:
        """The contingency table the test reads."""
        return Contingency((self.row, self.column))

    def inputs(self) -> tuple[str, ...]:
        return (self.row, self.column)

    def check(self, schema: Schema) -> None:
        if self.row == self.column:
            raise QueryError(f"{self.describe()}: test {self.row!r} against another column")
        for name in self.inputs():
            group_levels(self, schema, name)

    def blocks(self, schema: Schema, state: State) -> tuple[Block, ...]:
        return self.table().blocks(schema, state)

    def accumulate(self, data: dict[str, np.ndarray], schema: Schema,
                   state: State) -> dict[str, np.ndarray]:
        return self.table().accumulate(data, schema, state)

    def test(self, parts: dict[str, np.ndarray], schema: Schema,
             noise: dict[str, np.ndarray] | None, *, exact: bool) -> Test:
        table = self.table().answer(parts, schema, None)
        rows, columns = (int(np.count_nonzero(table.sum(axis=a))) for a in (1, 0))
        if min(rows, columns) < 2:
            return self.too_few(f"rows fall in {rows} level(s) of {self.row!r} and {columns} "
                                f"of {self.column!r}; the χ² test needs 2 of each",
                                exact=exact)
        return chi_square(table, yates=self.yates)
