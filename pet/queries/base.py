"""The query abstraction: a statistic as rounds of layout → local → aggregate → finalize.

A concrete query implements four small hooks (`inputs`, `blocks`, `accumulate`,
`answer`); this base class does everything they share, once: the subgroup filter,
complete-case selection with missing-value counts, the streaming pass over chunks, and
the split of the aggregated vector back into named blocks. Every layout starts with two
blocks: `n` (rows used, a disclosure-controlled subgroup count) and `missing` (per input
column, rows of the subgroup whose value was missing and so could not be used).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from pet import clipping
from pet.clipping import Clip
from pet.errors import QueryError
from pet.intervals import Interval, Spread, delta_method, propagated
from pet.layout import Block, Layout
from pet.schema import Boolean, Categorical, Column, Schema
from pet.where import Where

if TYPE_CHECKING:
    from pet.table import Chunk

MISSING_WEIGHT = 0.1
"""Public weight of the `missing` counts in a DP release's budget split: they are reported
beside the answer but do not enter it, so they get a small part of the budget."""

State = Any
"""Public state carried between rounds of an iterative query (e.g. current coefficients)."""


@dataclass(frozen=True)
class Next:
    """Returned by `finalize` when another round is needed, with the next public state."""

    state: State


@dataclass(frozen=True)
class Query(ABC):
    """A statistic over horizontally partitioned rows, computed from sums of row terms."""

    where: Where | str | None = field(default=None, kw_only=True)
    clip: Clip = field(default_factory=dict, kw_only=True)
    """Tighter public bounds for some numeric columns the query reads (`pet.clipping`)."""

    releases_records: ClassVar[bool] = False
    """Whether the answer is a record's own value (no DP mechanism covers that)."""
    requires_dp: ClassVar[bool] = False
    """Whether only a DP backend may release the answer (sites refuse it otherwise)."""
    secure_only: ClassVar[bool] = False
    """Whether the site's partial discloses single records unless the answer is computed
    inside MPC (so a site with disclosure control refuses it under other exact backends)."""
    fingerprints_data: ClassVar[bool] = False
    """Whether a shared-noise DP release of the query is a synthesizer's measurement: the
    request's first charge then notes the site's data fingerprint in its audit entry,
    which the fit's data card names."""
    keeps_missing: ClassVar[bool] = False
    """Whether rows with missing values are kept and counted as such by the query itself
    (its layout then has no `missing` counts)."""

    def __post_init__(self) -> None:
        if isinstance(self.where, str):
            object.__setattr__(self, "where", Where(self.where))
        object.__setattr__(self, "clip", clipping.normalized(self.clip))

    # Hooks a query implements.

    @abstractmethod
    def inputs(self) -> tuple[str, ...]:
        """Columns the statistic reads (the filter's columns are added by the base)."""

    @abstractmethod
    def blocks(self, schema: Schema, state: State) -> tuple[Block, ...]:
        """The query's own blocks of the layout, after `n` and `missing`."""

    @abstractmethod
    def accumulate(self, data: dict[str, np.ndarray], schema: Schema,
                   state: State) -> dict[str, np.ndarray]:
        """Per block, the sum over the given complete rows of the subgroup."""

    @abstractmethod
    def answer(self, parts: dict[str, np.ndarray], schema: Schema, state: State) -> Any:
        """The answer (or `Next(state)`) from the aggregated blocks; post-processing only."""

    def check(self, schema: Schema) -> None:  # noqa: B027 - optional hook, no-op by default
        """Fail early with a clear error when the query does not fit the schema."""

    def check_state(self, schema: Schema, state: State) -> None:
        """Fail unless `state` is one this query can be in: a peer sends it, so a wrong
        type or shape must be refused (QueryError) before it is used. A single-round
        query has no state; iterative queries override this."""
        if state is not None:
            raise QueryError(f"{self.describe()} takes one round and no state; got a "
                             f"{type(state).__name__}")

    def min_rows(self, schema: Schema) -> int:
        """Fewest rows the statistic can be estimated from; below it a noisy n gets
        `undetermined`'s answer (an exact n is left to `answer`, which says why)."""
        return 0

    def undetermined(self, parts: dict[str, np.ndarray], schema: Schema, state: State) -> Any:
        """The answer when a noisy n is below `min_rows`: post-processing of a release that
        was charged and so must reach the analyst. By default the usual answer (counts,
        tables and curves need no rows); statistics that divide by n say what they answer."""
        return self.answer(parts, schema, state)

    def initial_state(self, schema: Schema) -> State:
        """State of the first round; None for single-round queries."""
        return None

    @property
    def max_rounds(self) -> int:
        """Most rounds the query may take (known before it runs, so DP can charge up front)."""
        return 1

    def steering(self, state: State) -> float:
        """How sharply a round's public state can weigh one row against another (the
        largest coefficient on the scaled design; 0 for queries whose rows count alike).
        A peer chooses the state, so disclosure control bounds it."""
        return 0.0

    def parameters(self, schema: Schema) -> int:
        """Number of model parameters fitted (checked against rows by disclosure control)."""
        return 0

    n_weight: ClassVar[float] = 1.0
    """Public weight of the `n` block in a DP release's budget split (`Block.weight`):
    1 where n is the answer or a cell of it; less where it only divides a sum."""

    def round_share(self, state: State) -> float:
        """The fraction of the query's privacy budget (one charge per query) a DP release of
        this round spends; over the rounds a DP run takes, the shares add up to at most 1."""
        return 1.0

    # The shared machinery.

    def used_columns(self) -> tuple[str, ...]:
        """Every column the query reads: its inputs, then its filter's columns."""
        extra = self.where.columns if isinstance(self.where, Where) else ()
        return tuple(dict.fromkeys((*self.inputs(), *extra)))

    def missing_columns(self, schema: Schema) -> tuple[str, ...]:
        """The columns whose missing values the layout counts (after `n`): the nullable
        ones the query reads. A column the schema declares non-nullable has no missing
        values (its table refuses them), so it gets no count, and no DP noise is spent on
        a count known to be zero."""
        if self.keeps_missing:
            return ()
        return tuple(c for c in self.used_columns() if schema[c].nullable)

    def validate(self, schema: Schema) -> None:
        """Check columns, filter and options against the schema."""
        for name in self.used_columns():
            if schema.get(name) is None:
                raise QueryError(f"{self.describe()}: unknown column {name!r}; the schema has "
                                 f"{list(schema.names)}")
        if isinstance(self.where, Where):
            self.where.check(schema)
        clipping.check(self.clip, schema, self.inputs(), self.describe())
        self.check(self.bounded(schema))

    def bounded(self, schema: Schema) -> Schema:
        """The schema the query works on: its clipping bounds in place of the schema's."""
        return clipping.narrowed(schema, self.clip)

    def layout(self, schema: Schema, state: State = None) -> Layout:
        """The public layout of one round's vector (its state checked first); it holds
        only the blocks' sizes, so it is as cheap for 2^40 elements as for 2."""
        schema = self.bounded(schema)
        self.check_state(schema, state)
        k, c = len(self.missing_columns(schema)), len(self.clip)
        head = (Block.counts("n", 1, weight=self.n_weight),
                Block.counts("missing", k, per_row=k, cells=False, weight=MISSING_WEIGHT),
                *([Block.counts("clipped", c, per_row=c, cells=False, weight=MISSING_WEIGHT)]
                  if c else []))
        return Layout((*head, *self.blocks(schema, state)), parameters=self.parameters(schema),
                      share=self.round_share(state))

    def local(self, chunks: Iterable[Chunk], schema: Schema, state: State = None, *,
              site: str | None = None) -> np.ndarray:
        """One site's partial vector, in one streaming pass over its chunks. `site` is the
        site's own name, from its configuration (a query stratified by site places its
        sums by it)."""
        layout = self.layout(schema, state)
        bounded = self.bounded(schema)
        total = np.zeros(layout.size)
        for chunk in chunks:
            total += layout.join(self._chunk_parts(chunk, bounded, state))
        return self.placed(total, schema, state, site=site)

    def placed(self, total: np.ndarray, schema: Schema, state: State = None, *,
               site: str | None = None) -> np.ndarray:
        """A site's partial vector where the layout places it: as computed, unless the
        query lays each site's sums out apart (Cox stratified by site). Wherever the
        partial was computed (pet's pass or an engine's), it comes through here."""
        return total

    def finalize(self, total: np.ndarray, schema: Schema, state: State = None, *,
                 error_bounds: np.ndarray | None = None,
                 noise_sd: np.ndarray | None = None) -> Any:
        """The answer, or `Next(state)`, from the aggregated vector, the backend's
        per-element error bounds (zero when exact) and, for a DP release, the standard
        deviation of the noise on each element (None without DP noise).

        An exact n below 1 means no row matched: an error. An inexact n (its error bound
        positive: a DP release, charged before it left the sites, or CKKS sums too large
        to round back) is never refused but post-processed: an n clipped to 0 counts
        nothing, and a statistic that needs more rows than it answers `undetermined`."""
        layout = self.layout(schema, state)
        schema = self.bounded(schema)
        parts = layout.split(total)
        bounds = np.zeros(layout.size) if error_bounds is None else error_bounds
        errors = layout.split(bounds)
        n, noisy = parts["n"][0], bool(errors["n"][0] > 0)
        if n < 1 and not noisy:
            raise QueryError(f"{self.describe()}: no complete rows matched at any site")
        if noisy and n < self.min_rows(schema):
            return self.undetermined(parts, schema, state)
        noise = None if noise_sd is None else layout.split(noise_sd)
        return self.conclude(parts, errors, schema, state, noise)

    def conclude(self, parts: dict[str, np.ndarray], errors: dict[str, np.ndarray],
                 schema: Schema, state: State,
                 noise: dict[str, np.ndarray] | None = None) -> Any:
        """The answer given each block's error bounds and DP noise (per element standard
        deviations, None without DP); only queries whose steps or estimators must allow
        for noise (iterative fits, regressions) look at them."""
        return self.answer(parts, schema, state)

    def numbers(self, answer: Any) -> np.ndarray:
        """The numbers of an answer, flattened (what its interval holds, one end each)."""
        return np.ravel(np.asarray(answer, dtype=np.float64))

    def interval(self, total: np.ndarray, spread: Spread, schema: Schema, state: State,
                 answer: Any) -> Interval | None:
        """The 95% interval of each number of a DP answer from the noise its sums carry:
        by the delta method through `finalize` itself (`pet.intervals`); None for a round
        that only leads to the next one."""
        if isinstance(answer, Next):
            return None
        sd = spread.sd()  # also the error bounds: they only mark the sums as noisy

        def numbers(vector: np.ndarray) -> np.ndarray:
            return self.numbers(self.finalize(vector, schema, state, error_bounds=sd,
                                              noise_sd=sd))

        return delta_method(numbers, total, spread)

    def error_bounds(self, total: np.ndarray, bounds: np.ndarray, independent: bool,
                     schema: Schema, state: State, answer: Any) -> np.ndarray:
        """Each of the answer's `numbers` within its bound of the answer the exact sums
        give, from the backend's per-element bounds (`pet.intervals.propagated`); none for
        a round that only leads to the next one. Where a slight change of the sums changes
        the kind of answer (a Newton fit whose last step sits at its stopping threshold
        would take another round) no derivative bounds it: NaN, unknown."""
        if isinstance(answer, Next):
            return np.zeros(0)
        size = self.numbers(answer).size
        if not np.any(bounds > 0):
            return np.zeros(size)

        def numbers(vector: np.ndarray) -> np.ndarray:
            outcome = self.finalize(vector, schema, state, error_bounds=bounds)
            if type(outcome) is not type(answer):
                return np.full(size, np.nan)
            return self.numbers(outcome)

        return propagated(numbers, total, bounds, independent)

    def block_spread(self, spread: Spread, schema: Schema, state: State,
                     name: str) -> Spread:
        """The noise on one block of the layout."""
        scales = self.layout(schema, state).split(spread.scales)[name]
        return Spread(spread.kind, scales, spread.copies)

    def raw_interval(self, raw: Callable[[dict[str, np.ndarray]], Any], total: np.ndarray,
                     spread: Spread, schema: Schema, state: State) -> Interval:
        """The delta-method interval of `raw`, a statistic of the blocks before the
        clamping its answer applies (at a clamp the answer's slope is 0 on one side, and
        its interval would shrink to a point); the caller clamps the ends instead."""
        layout = self.layout(schema, state)
        return delta_method(lambda v: np.atleast_1d(raw(layout.split(v))), total, spread)

    def describe(self) -> str:
        """A short human-readable name, e.g. "Mean(age) where sex == 'F'"."""
        args = []
        for f in fields(self):
            value = getattr(self, f.name)
            has_default = f.default is not MISSING or f.default_factory is not MISSING
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            if f.name == "where" or (has_default and value == default):
                continue
            args.append(f"{f.name}={_text(value)}" if has_default else _text(value))
        suffix = f" where {self.where.text}" if isinstance(self.where, Where) else ""
        return f"{type(self).__name__}({', '.join(args)}){suffix}"

    def _chunk_parts(self, chunk: Chunk, schema: Schema, state: State) -> dict[str, np.ndarray]:
        inputs = self.used_columns()
        missing = {name: np.isnan(chunk.columns[name]) for name in inputs}
        if isinstance(self.where, Where):
            known = ~np.logical_or.reduce([missing[c] for c in self.where.columns])
            in_group = known & self.where.mask(schema, chunk.columns)
            candidates = in_group | ~known
        else:
            in_group = candidates = np.ones(chunk.n_rows, dtype=bool)
        used = () if self.keeps_missing else inputs
        complete = in_group & ~np.logical_or.reduce(
            [missing[c] for c in used] or [np.zeros(chunk.n_rows, bool)])
        every_row = bool(complete.all())  # the common case: no copy of the columns
        data = {name: chunk.columns[name] if every_row else chunk.columns[name][complete]
                for name in self.inputs()}
        clipped = []
        for name, bounds in self.clip.items():
            data[name], outside = clipping.clamp(data[name], bounds)
            clipped.append(outside)
        parts = self.accumulate(data, schema, state)
        parts["n"] = np.array([complete.sum()], dtype=np.float64)
        parts["missing"] = np.array([(missing[c] & candidates).sum()
                                     for c in self.missing_columns(schema)],
                                    dtype=np.float64)
        if clipped:
            parts["clipped"] = np.array(clipped, dtype=np.float64)
        return parts


def _text(value: object) -> str:
    """A query argument as written in its description; long tuples and mappings are
    elided, so that a description (and every error quoting it) stays short."""
    if isinstance(value, tuple):
        shown = value if len(value) <= 6 else (value[0], value[1], "…", value[-1])
        return "[" + ", ".join(_text(v) for v in shown) + "]"
    if isinstance(value, Mapping):
        keys = list(value)
        items = [f"{k}: {_text(value[k])}" for k in keys[:3]]
        return "{" + ", ".join(items if len(keys) <= 3 else [*items, "…"]) + "}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def whole(value: object) -> bool:
    """Whether a value from a peer is a whole number (an int, not a bool)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def check_iteration(query: Query, state: State, kind: type, rounds: int) -> None:
    """Refuse a round's state from a peer unless it is a `kind` whose `iteration` is a
    whole number in [0, rounds)."""
    if not isinstance(state, kind):
        raise QueryError(f"{query.describe()}: a round's state must be a {kind.__name__}, "
                         f"got {type(state).__name__}")
    iteration = state.iteration  # type: ignore[attr-defined]
    if not (whole(iteration) and 0 <= iteration < rounds):
        raise QueryError(f"{query.describe()}: the state's iteration must be a whole number "
                         f"in [0, {rounds})")


def scale(column: Column, values: np.ndarray) -> np.ndarray:
    """Map a column's values from its public bounds onto [-1, 1].

    Every real-valued sum is taken over scaled values, so each row adds at most 1 to any
    element: sensitivities, HE scales and MPC fixed-point ranges follow from row counts,
    and sums of squares lose no precision to a large mean.
    """
    center, half = affine(column)
    return (values - center) / half


def affine(column: Column) -> tuple[float, float]:
    """Center and half-range of a column's public bounds."""
    lower, upper = column.bounds()
    return (lower + upper) / 2, (upper - lower) / 2


def levels(column: Column) -> int:
    """Number of distinct codes of a categorical or boolean column."""
    if isinstance(column, Categorical):
        return len(column.categories)
    if isinstance(column, Boolean):
        return 2
    raise QueryError(f"column {column.name!r} is {column.kind}, not categorical or boolean")


def require_numeric(query: Query, schema: Schema, names: Iterable[str]) -> None:
    """Fail unless each named column is numeric (continuous, integer, time or boolean)."""
    for name in names:
        column = schema[name]
        if isinstance(column, Categorical):
            raise QueryError(f"{query.describe()}: column {name!r} is categorical; "
                             "use Contingency for counts by category")


def gram_upper(terms: np.ndarray) -> np.ndarray:
    """Upper triangle (diagonal included) of termsᵀ·terms: d(d+1)/2 sums of products."""
    rows, cols = np.triu_indices(terms.shape[1])
    return (terms.T @ terms)[rows, cols]


def from_upper_triangle(values: np.ndarray, d: int) -> np.ndarray:
    """The symmetric d × d matrix whose upper triangle is `values`."""
    matrix = np.zeros((d, d))
    matrix[np.triu_indices(d)] = values
    return matrix + np.triu(matrix, 1).T
