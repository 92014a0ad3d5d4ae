"""Table 1: each column summarised by group, with a test per row, from one round of sums.

A study's first table describes its rows: for each column, n (%) per level of a
categorical or boolean column, mean (SD) and median [Q1,Q3] of a numeric one, missing
values, and a p-value comparing the groups. Every number of it comes from one layout
(one round; under DP one charge of the privacy budget for the whole table), laid out
like the `tableone` package's output.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pet.errors import QueryError
from pet.hypothesis import (
    ANOVA,
    WELCH,
    Test,
    anova,
    chi_square,
    mean_difference_noise,
    untestable,
    welch,
)
from pet.intervals import Interval, Spread, delta_method
from pet.layout import Block
from pet.queries.base import MISSING_WEIGHT, Query, State, affine, levels, scale
from pet.queries.tables import bin_index, consistent_counts, grid_quantiles
from pet.schema import Boolean, Categorical, Column, Continuous, Schema

if TYPE_CHECKING:
    import pandas as pd

QUARTILES = (0.25, 0.5, 0.75)
"""The probabilities of Q1, the median and Q3."""
MAX_BINS = 100_000
"""The finest grid a numeric column's histogram may have (the layout holds one per group)."""

GROUP_WEIGHT = 1.0
"""DP budget weight of the group sizes: the table's first row, and every percentage's and
mean's denominator."""
LEVEL_WEIGHT = 1.0
"""DP budget weight of a categorical column's counts: they are its cells, shown as such."""
SUM_WEIGHT = 0.5
"""DP budget weight of a numeric column's sums: one mean per group."""
SQUARES_WEIGHT = 0.25
"""DP budget weight of the sums of squares: they enter only the SD, a second-order
statistic whose relative error is half the variance's."""
GRID_WEIGHT = 0.5
"""DP budget weight of a numeric column's histograms: three quartiles per group, read off
cumulative counts, and bounded by the grid's resolution anyway."""


@dataclass(frozen=True)
class TableOneResult:
    """A Table 1 as numbers: one column per group after the `Overall` one (all groups
    together; the only one without `by`), one entry per variable.

    `sizes` are the groups' rows; `unassigned` the rows left out because their `by` value
    was missing. Per variable: `missing` values per group; for a categorical or boolean
    variable, `counts` of each of its `levels` (levels × groups; no rows for a numeric
    one); for a numeric one `mean`, `sd` and `quartiles` (Q1, median, Q3, from a grid of
    `resolution` wide bins: each is within one bin of the rows' own). `p` and `tests`
    compare the groups (NaN and "" without `by`). Percentages are of the group's rows
    whose value is known. NaN marks a statistic too few rows determine (under DP, where a
    noisy group count is too small)."""

    by: str | None
    groups: tuple[str, ...]
    variables: tuple[str, ...]
    levels: tuple[tuple[str, ...], ...]
    sizes: np.ndarray
    unassigned: float
    missing: np.ndarray
    counts: tuple[np.ndarray, ...]
    mean: np.ndarray
    sd: np.ndarray
    quartiles: np.ndarray
    resolution: np.ndarray
    p: np.ndarray
    tests: tuple[str, ...]

    def vector(self) -> np.ndarray:
        """The table's numbers, flattened: the sizes, then per variable its missing counts
        and its counts (categorical) or mean, SD, Q1, median and Q3 (numeric), each over
        the Overall column and the groups. The p-values are not among them."""
        return np.concatenate([self.sizes, *(
            _variable_numbers(self.missing[i], self.counts[i], self.mean[i], self.sd[i],
                              self.quartiles[i]) for i in range(len(self.variables)))])

    def to_frame(self) -> pd.DataFrame:
        """The table as tableone lays it out: rows indexed by (variable, level), columns
        Missing, Overall, one per group and P-Value (with `by`), cells as text."""
        import pandas as pd  # here: reading a query needs no pandas

        rows = list(_rows(self))
        index = pd.MultiIndex.from_tuples([(label, level) for label, level, _ in rows])
        frame = pd.DataFrame([cells for _, _, cells in rows], index=index,
                             columns=list(self._headers()))
        frame.columns.name = f"Grouped by {self.by}" if self.by else None
        return frame

    def to_text(self) -> str:
        """The table as aligned plain text, a categorical variable's levels indented
        under its header row, with its notes below."""
        lines = _aligned([["", *self._headers()], *self._display_rows()])
        title = [f"Grouped by {self.by}"] if self.by else []
        return "\n".join([*title, *lines, *self.notes()])

    def to_markdown(self) -> str:
        """The table as a Markdown pipe table, with its notes below."""
        header, *rows = [["", *self._headers()], *self._display_rows()]
        lines = [_pipe(header), _pipe(["---"] + ["---:"] * (len(header) - 1)),
                 *(_pipe(row) for row in rows)]
        return "\n".join([*lines, "", *self.notes()])

    def to_html(self) -> str:
        """The table as HTML (pandas), with its notes below."""
        notes = "".join(f"<p>{html.escape(note)}</p>" for note in self.notes())
        return self.to_frame().to_html() + notes

    def notes(self) -> list[str]:
        """What the table leaves out or estimates: rows without a `by` value, the tests,
        and the grid the medians and quartiles come from."""
        out = []
        if self.unassigned > 0:
            out.append(f"{_count(self.unassigned)} rows with no {self.by} value are left "
                       "out of every column.")
        if self.by:
            tests = ", ".join(sorted({t for t in self.tests if t}))
            out.append(f"P-values: {tests}.")
        widths = [f"{v} {w:.3g}" for v, w in zip(self.variables, self.resolution, strict=True)
                  if np.isfinite(w)]
        if widths:
            out.append("Median [Q1,Q3] read off a grid of bins of width "
                       f"({', '.join(widths)}): each within one bin of the rows' own.")
        return out

    def __str__(self) -> str:
        return self.to_text()

    def _headers(self) -> tuple[str, ...]:
        return ("Missing", "Overall", *self.groups, *(("P-Value",) if self.by else ()))

    def _display_rows(self) -> Iterator[list[str]]:
        """Rows for text and Markdown: a categorical variable's header row holds its
        Missing and P-Value, its levels follow indented with their counts."""
        values = 1 + len(self.groups)
        shown = None
        for label, level, cells in _rows(self):
            if not level:
                yield [label, *cells]
                continue
            tail = cells[1 + values:]
            if label != shown:
                yield [label, cells[0], *[""] * values, *tail]
                shown = label
            yield [f"    {level}", "", *cells[1:1 + values], *[""] * len(tail)]


@dataclass(frozen=True)
class _Summary:
    """One variable's numbers over the Overall column and the groups, and its test."""

    missing: np.ndarray
    counts: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    quartiles: np.ndarray
    test: Test | None

    def numbers(self) -> np.ndarray:
        return _variable_numbers(self.missing, self.counts, self.mean, self.sd,
                                 self.quartiles)


@dataclass(frozen=True)
class TableOne(Query):
    """Table 1 of `columns` by the groups of `by` (a categorical or boolean column), or of
    all rows without it: n (%) of each level of a categorical or boolean column; mean
    (SD), and median [Q1,Q3] from a histogram on a public grid of `bins` equal bins over
    the column's bounds, of a numeric one; missing values per column; a p-value per
    variable: χ² (with Yates' correction for 2 × 2) for counts, Welch's t for two groups'
    means, one-way ANOVA for more.

    Missing values are kept: each column counts its own per group, so a row missing one
    column still counts for the others. Rows whose `by` is missing are left out of every
    column and counted (`TableOneResult.unassigned`); `Overall` is all groups together.

    The sums are per group: counts, and Σs, Σs² of each numeric column scaled to [-1, 1]
    (so a row adds at most 1 anywhere and to one group only). Under DP the budget splits
    across blocks by weight (`pet.mechanisms.plan`): group sizes and categorical counts,
    the table's cells, get the most (1); sums and histograms 0.5; sums of squares, used
    only by the SD, 0.25; missing counts, reported but entering nothing, 0.1.

    The histograms are counts of people per bin: a site's disclosure control (its
    minimum cell count) refuses bins that hold one or two of its rows, which on a small
    site means any fine grid. `medians=False` leaves them out (no median [Q1,Q3] rows),
    so that the rest of the table passes the rule wherever its groups and levels do.
    """

    columns: tuple[str, ...]
    by: str | None = None
    bins: int = field(default=200, kw_only=True)
    medians: bool = field(default=True, kw_only=True)

    keeps_missing = True
    n_weight = MISSING_WEIGHT  # n only reports the subgroup's rows; the sizes are row one

    def __post_init__(self) -> None:
        super().__post_init__()
        columns = (self.columns,) if isinstance(self.columns, str) else tuple(self.columns)
        object.__setattr__(self, "columns", columns)
        if not columns:
            raise QueryError("TableOne needs at least one column")
        repeated = sorted({c for c in columns if columns.count(c) > 1})
        if repeated:
            raise QueryError(f"{self.describe()}: columns repeat: {repeated}")
        if isinstance(self.bins, bool) or not isinstance(self.bins, int) \
                or not 1 <= self.bins <= MAX_BINS:
            raise QueryError(f"{self.describe()}: bins must be a whole number between 1 "
                             f"and {MAX_BINS}, got {self.bins!r}")
        if not isinstance(self.medians, bool):
            raise QueryError(f"{self.describe()}: medians must be true or false, got "
                             f"{self.medians!r}")

    def inputs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.columns, *((self.by,) if self.by else ()))))

    def check(self, schema: Schema) -> None:
        if self.by and not isinstance(schema[self.by], Categorical | Boolean):
            raise QueryError(f"{self.describe()}: cannot group by {self.by!r}: it is "
                             f"{schema[self.by].kind}; group by a categorical or boolean "
                             "column")
        for name in self.columns:
            if not isinstance(schema[name], Categorical | Boolean | Continuous):
                raise QueryError(f"{self.describe()}: column {name!r} is "
                                 f"{schema[name].kind}, which a Table 1 does not summarise; "
                                 "use KaplanMeier for follow-up times")

    def groups(self, schema: Schema) -> tuple[str, ...]:
        """The groups' labels: the levels of `by` (none without it)."""
        return _labels(schema[self.by]) if self.by else ()

    def blocks(self, schema: Schema, state: State) -> tuple[Block, ...]:
        k = max(len(self.groups(schema)), 1)
        head = [Block.counts("groups", k, weight=GROUP_WEIGHT)]
        if self.by and schema[self.by].nullable:
            head.append(Block.counts("by_missing", 1, cells=False, weight=MISSING_WEIGHT))
        return (*head, *(b for name in self.columns for b in self._column_blocks(
            schema[name], k)))

    def _column_blocks(self, column: Column, k: int) -> Iterator[Block]:
        """One column's blocks, each with one element per group."""
        name = column.name
        if column.nullable:
            yield Block.counts(f"{name}:missing", k, cells=False, weight=MISSING_WEIGHT)
        if _categorical(column):
            yield Block.counts(f"{name}:counts", levels(column) * k, weight=LEVEL_WEIGHT)
            return
        yield _group_sums(f"{name}:sum", k, SUM_WEIGHT)
        yield _group_sums(f"{name}:squares", k, SQUARES_WEIGHT)
        if self.medians:
            yield Block.counts(f"{name}:grid", self.bins * k, weight=GRID_WEIGHT)

    def accumulate(self, data: dict[str, np.ndarray], schema: Schema,
                   state: State) -> dict[str, np.ndarray]:
        k = max(len(self.groups(schema)), 1)
        rows = len(data[self.columns[0]])
        codes = data[self.by] if self.by else np.zeros(rows)
        assigned = ~np.isnan(codes)
        group = codes[assigned].astype(np.int64)
        parts = {"groups": _per_group(group, k)}
        if self.by and schema[self.by].nullable:
            parts["by_missing"] = np.array([float(rows - assigned.sum())])
        for name in self.columns:
            parts.update(self._column_parts(schema[name], data[name][assigned], group, k))
        return parts

    def _column_parts(self, column: Column, values: np.ndarray, group: np.ndarray,
                      k: int) -> dict[str, np.ndarray]:
        """One column's sums over the rows of every group (values and groups aligned)."""
        name, known = column.name, ~np.isnan(values)
        parts = {f"{name}:missing": _per_group(group[~known], k)} if column.nullable else {}
        values, group = values[known], group[known]
        if _categorical(column):
            cells = values.astype(np.int64) * k + group
            parts[f"{name}:counts"] = _per_group(cells, levels(column) * k)
            return parts
        scaled = scale(column, values)
        parts[f"{name}:sum"] = _per_group(group, k, scaled)
        parts[f"{name}:squares"] = _per_group(group, k, scaled**2)
        if self.medians:
            cells = group * self.bins + bin_index(values, self._edges(column))
            parts[f"{name}:grid"] = _per_group(cells, self.bins * k)
        return parts

    def answer(self, parts: dict[str, np.ndarray], schema: Schema,
               state: State) -> TableOneResult:
        return self.conclude(parts, {}, schema, state)

    def conclude(self, parts: dict[str, np.ndarray], errors: dict[str, np.ndarray],
                 schema: Schema, state: State,
                 noise: dict[str, np.ndarray] | None = None) -> TableOneResult:
        """The table from the sums; under DP post-processing only: counts kept at 0 or
        more and each categorical column's made to add up to its group's noisy size, NaN
        where a group's count is too small or its noisy variance not positive, a t-test's
        variance widened by the noise on the means (`noise`). The χ² and ANOVA p-values
        take the noisy counts and moments as they are: they ignore the noise."""
        summaries = [self._summary(name, parts, schema, noise) for name in self.columns]
        return TableOneResult(
            by=self.by, groups=self.groups(schema), variables=self.columns,
            levels=tuple(_labels(schema[c]) if _categorical(schema[c]) else ()
                         for c in self.columns),
            sizes=self._columns(_sizes(parts)),
            unassigned=float(max(parts["by_missing"][0], 0.0)) if "by_missing" in parts
            else 0.0,
            missing=np.array([s.missing for s in summaries]),
            counts=tuple(s.counts for s in summaries),
            mean=np.array([s.mean for s in summaries]),
            sd=np.array([s.sd for s in summaries]),
            quartiles=np.array([s.quartiles for s in summaries]),
            resolution=np.array([np.nan if _categorical(schema[c]) or not self.medians
                                 else float(np.diff(self._edges(schema[c]))[0])
                                 for c in self.columns]),
            p=np.array([s.test.p if s.test else np.nan for s in summaries]),
            tests=tuple(s.test.method if s.test else "" for s in summaries))

    def _summary(self, name: str, parts: dict[str, np.ndarray], schema: Schema,
                 noise: dict[str, np.ndarray] | None) -> _Summary:
        """One variable's numbers from its blocks and the group sizes."""
        column, sizes = schema[name], _sizes(parts)
        missing = np.clip(parts.get(f"{name}:missing", np.zeros_like(sizes)), 0.0, sizes)
        if _categorical(column):
            return self._counts_summary(column, parts, sizes, missing)
        return self._numeric_summary(column, parts, sizes - missing, missing, noise)

    def _counts_summary(self, column: Column, parts: dict[str, np.ndarray],
                        sizes: np.ndarray, missing: np.ndarray) -> _Summary:
        """n per level and group, each group's levels (and missing values, where the
        column may have any) made to add up to its size (unchanged when exact), and the
        χ² test of levels against groups."""
        k = sizes.size
        raw = parts[f"{column.name}:counts"].reshape(-1, k)
        if column.nullable:
            raw = np.vstack([raw, missing])
        cells = np.column_stack([consistent_counts(raw[:, g], sizes[g]) for g in range(k)])
        counts = cells[:-1] if column.nullable else cells
        missing = cells[-1] if column.nullable else np.zeros(k)
        test = chi_square(counts) if self.by else None
        counts = self._columns(counts)
        nothing = np.full(counts.shape[1], np.nan)
        return _Summary(self._columns(missing), counts, nothing, nothing,
                        np.full((counts.shape[1], len(QUARTILES)), np.nan), test)

    def _numeric_summary(self, column: Column, parts: dict[str, np.ndarray],
                         known: np.ndarray, missing: np.ndarray,
                         noise: dict[str, np.ndarray] | None) -> _Summary:
        """Mean, SD and quartiles per group and overall, and the test of the means."""
        center, half = affine(column)
        name = column.name
        count = self._columns(known)
        total = self._columns(parts[f"{name}:sum"])
        squares = self._columns(parts[f"{name}:squares"])
        with np.errstate(divide="ignore", invalid="ignore"):
            scaled_mean = np.where(count >= 1, total / count, np.nan)
            scaled_var = np.where(count >= 2, (squares - total * scaled_mean) / (count - 1),
                                  np.nan)
        mean = center + half * np.clip(scaled_mean, -1.0, 1.0)
        # a noisy Σs² below n·mean² leaves the variance undetermined, not 0 (an SD of 0
        # would say every value is the same)
        var = half**2 * (np.maximum(scaled_var, 0.0) if noise is None
                         else np.where(scaled_var > 0, scaled_var, np.nan))
        quartiles = np.full((count.size, len(QUARTILES)), np.nan)
        if self.medians:
            grid = parts[f"{name}:grid"].reshape(known.size, self.bins)
            quartiles = np.array([grid_quantiles(row, self._edges(column), QUARTILES)
                                  for row in self._columns(grid.T).T])
            quartiles[count < 1] = np.nan
        test = None
        if self.by:
            spread = 0.0 if noise is None else _mean_noise(
                noise, name, count[1:], scaled_mean[1:], half)
            test = _compare_means(count[1:], mean[1:], var[1:], spread)
        return _Summary(self._columns(missing), np.zeros((0, count.size)), mean,
                        np.sqrt(var), quartiles, test)

    def _columns(self, values: np.ndarray) -> np.ndarray:
        """Values per group (last axis) with their total, the Overall column, first;
        without `by` the one group is all rows, Overall itself."""
        if not self.by:
            return values
        return np.concatenate([values.sum(axis=-1, keepdims=True), values], axis=-1)

    def _edges(self, column: Column) -> np.ndarray:
        """The public grid of a numeric column's histograms."""
        lower, upper = column.bounds()
        return np.linspace(lower, upper, self.bins + 1)

    def numbers(self, answer: Any) -> np.ndarray:
        """A table's numbers are `TableOneResult.vector`."""
        return answer.vector()

    def interval(self, total: np.ndarray, spread: Spread, schema: Schema, state: State,
                 answer: Any) -> Interval | None:
        """The 95% interval of each of `numbers` by the delta method, taken variable by
        variable over only the blocks each depends on (the sizes and its own), in the
        order of `TableOneResult.vector`: the same interval as through the whole table,
        at a fraction of the cost."""
        layout = self.layout(schema, state)
        bounded = self.bounded(schema)
        where = layout.split(np.arange(layout.size))
        pieces = [(("groups",), lambda p: self._columns(_sizes(p)))]
        for name in self.columns:
            blocks = ("groups", *(b.name for b in self._column_blocks(bounded[name], 1)))
            pieces.append((blocks, self._numbers_of(name, bounded)))
        ends = [_piece_interval(layout.split, total, spread,
                                np.concatenate([where[b] for b in blocks]), numbers)
                for blocks, numbers in pieces]
        return (np.concatenate([low for low, _ in ends]),
                np.concatenate([high for _, high in ends]))

    def _numbers_of(self, name: str,
                    schema: Schema) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        """The function from the blocks to one variable's numbers."""
        return lambda parts: self._summary(name, parts, schema, None).numbers()


def _piece_interval(split: Callable[[np.ndarray], dict[str, np.ndarray]], total: np.ndarray,
                    spread: Spread, index: np.ndarray,
                    numbers: Callable[[dict[str, np.ndarray]], np.ndarray]) -> Interval:
    """The delta-method interval of `numbers`, a function of only the elements `index`
    of the layout, differentiated over just those elements."""
    def of_elements(values: np.ndarray) -> np.ndarray:
        vector = total.copy()
        vector[index] = values
        return numbers(split(vector))

    return delta_method(of_elements, total[index],
                        Spread(spread.kind, spread.scales[index], spread.copies))


def _categorical(column: Column) -> bool:
    """Whether a column is summarised by counts of its levels."""
    return isinstance(column, Categorical | Boolean)


def _labels(column: Column) -> tuple[str, ...]:
    """A categorical or boolean column's levels as text, in code order."""
    if isinstance(column, Categorical):
        return tuple(str(c) for c in column.categories)
    return ("False", "True")


def _group_sums(name: str, groups: int, weight: float) -> Block:
    """Sums per group of values in [-1, 1]: a row adds at most 1, to its group's only."""
    return Block(name, groups, 1.0, 1.0, 1.0, weight=weight)


def _per_group(cells: np.ndarray, size: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Counts (or sums of `weights`) of each cell index in [0, size)."""
    return np.bincount(cells, weights=weights, minlength=size).astype(np.float64)


def _sizes(parts: dict[str, np.ndarray]) -> np.ndarray:
    """The groups' sizes, a noisy one kept at 0 or more."""
    return np.maximum(parts["groups"], 0.0)


def _variable_numbers(missing: np.ndarray, counts: np.ndarray, mean: np.ndarray,
                      sd: np.ndarray, quartiles: np.ndarray) -> np.ndarray:
    """One variable's numbers in `TableOneResult.vector` order."""
    if counts.size:
        return np.concatenate([missing, counts.ravel()])
    return np.concatenate([missing, mean, sd, quartiles.T.ravel()])


def _mean_noise(noise: dict[str, np.ndarray], name: str, count: np.ndarray,
                scaled_mean: np.ndarray, half: float) -> float:
    """`mean_difference_noise` of a column's means, whose count of known values carries
    the group size's noise and the missing count's."""
    count_sd = np.sqrt(noise["groups"] ** 2 + noise.get(f"{name}:missing", 0.0) ** 2)
    return mean_difference_noise(half, count, scaled_mean, noise[f"{name}:sum"], count_sd)


def _compare_means(n: np.ndarray, mean: np.ndarray, var: np.ndarray,
                   noise_var: float) -> Test:
    """Welch's t-test of two groups' means, one-way ANOVA of more; untestable while a
    group has fewer than two values."""
    method = WELCH if n.size == 2 else ANOVA
    if np.any(n < 2):
        return untestable(method, 1 if n.size == 2 else 2)
    return welch(n, mean, var, noise_var=noise_var) if n.size == 2 else anova(n, mean, var)


def _rows(result: TableOneResult) -> Iterator[tuple[str, str, list[str]]]:
    """The table's rows as (variable label, level, cells), cells in `_headers` order; a
    categorical variable's Missing and P-Value sit on its first level's row."""
    p_cell = [""] if result.by else []
    yield "n", "", ["", *(_count(s) for s in result.sizes), *p_cell]
    for i, name in enumerate(result.variables):
        missing = _count(result.missing[i][0])
        p = [_p_value(result.p[i])] if result.by else []
        if result.levels[i]:
            known = result.sizes - result.missing[i]
            for j, level in enumerate(result.levels[i]):
                cells = [_percent(c, n) for c, n in zip(result.counts[i][j], known, strict=True)]
                yield f"{name}, n (%)", level, [missing if j == 0 else "", *cells,
                                                *(p if j == 0 else p_cell)]
            continue
        digits = _decimals(result.sd[i][0], result.resolution[i])
        yield f"{name}, mean (SD)", "", [missing, *(
            _pair(m, s, digits, "({})") for m, s in zip(result.mean[i], result.sd[i],
                                                        strict=True)), *p]
        if np.isnan(result.resolution[i]):  # asked without medians
            continue
        yield f"{name}, median [Q1,Q3]", "", ["", *(
            _pair(q[1], f"{q[0]:.{digits}f},{q[2]:.{digits}f}", digits, "[{}]")
            for q in result.quartiles[i]), *p_cell]


def _decimals(sd: float, resolution: float) -> int:
    """Decimals that show a numeric variable's SD to two significant digits (at least
    one decimal), or its grid's resolution when the SD is unknown (one without either)."""
    scale_ = sd if np.isfinite(sd) and sd > 0 else resolution
    return max(1, 1 - int(np.floor(np.log10(scale_)))) if np.isfinite(scale_) else 1


def _pair(value: float, second: float | str, digits: int, brackets: str) -> str:
    """`value (second)` or `value [second]`; "n/a" when the value is not determined."""
    if not np.isfinite(value):
        return "n/a"
    inner = second if isinstance(second, str) else (
        f"{second:.{digits}f}" if np.isfinite(second) else "n/a")
    return f"{value:.{digits}f} {brackets.format(inner)}"


def _count(value: float) -> str:
    return f"{value:.0f}"


def _percent(count: float, known: float) -> str:
    share = f"{100 * count / known:.1f}" if known > 0 else "n/a"
    return f"{count:.0f} ({share})"


def _p_value(p: float) -> str:
    if not np.isfinite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _aligned(rows: list[list[str]]) -> list[str]:
    """Rows as lines: the first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join([row[0].ljust(widths[0]),
                       *(cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True))])
            .rstrip() for row in rows]


def _pipe(cells: list[str]) -> str:
    """One row of a Markdown pipe table (pipes in a cell escaped)."""
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
