"""Public discretization of a schema: the finite domain a synthesizer models.

Bins come from the schema's public bounds only, never from data: a whole-number column
with a short range gets one level per value, any other numeric column equal-width bins;
categorical and boolean columns keep their levels; a nullable column gets one more
level for missing values. A synthesizer may merge a column's levels by a public map
(MST merges those a DP release showed to be rare); a merged level samples back to one of
its levels in proportion to public shares (what that release says of them), uniformly
when none are given. Sampling maps levels back to values inside each bin's public
bounds, so no synthetic value ever leaves the schema's range.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pet.errors import ArgumentError
from pet.queries.marginals import codes, level_count, merge_map, merged
from pet.schema import Boolean, Categorical, Column, Integer, Schema
from pet.synth.domain import Domain

DEFAULT_BINS = 16
"""Equal-width bins of a numeric column unless the study protocol names another number."""


@dataclass(frozen=True)
class Discretization:
    """Each numeric column's public bin edges (categorical and boolean columns need none),
    each merged column's map of its levels onto the merged ones, and for some merged
    columns a share per level: how a merged level splits back into its levels."""

    schema: Schema
    edges: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    merged: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    shares: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, column in zip(self.schema.names, self.schema.columns, strict=True):
            if not isinstance(column, Categorical | Boolean) and name not in self.edges:
                raise ArgumentError(f"numeric column {name!r} has no bin edges")
        stray = sorted(set(self.edges) - set(self.schema.names))
        if stray:
            raise ArgumentError(f"bin edges given for columns not in the schema: {stray}")
        object.__setattr__(self, "merged", {k: merge_map(k, v) for k, v in self.merged.items()})
        for name, mapping in self.merged.items():
            if name not in self.schema.names:
                raise ArgumentError(f"merged levels given for {name!r}, not in the schema")
            levels = self._levels(name)
            if len(mapping) != levels:
                raise ArgumentError(f"merged levels of {name!r} map {len(mapping)} levels, "
                                    f"but it has {levels}")
        object.__setattr__(self, "shares", {k: _shares(k, v, self.merged.get(k))
                                            for k, v in self.shares.items()})

    @classmethod
    def of(cls, schema: Schema, *, bins: int | Mapping[str, int] = DEFAULT_BINS) -> Discretization:
        """Public edges for every numeric column: `bins` equal-width bins over its bounds
        (per column when a mapping), or one per value for a whole-number column with at
        most that many values."""
        edges = {}
        for column in schema.columns:
            if isinstance(column, Categorical | Boolean):
                continue
            count = bins.get(column.name, DEFAULT_BINS) if isinstance(bins, Mapping) else bins
            if not isinstance(count, int) or count < 1:
                raise ArgumentError(f"bins of {column.name!r} must be a whole number >= 1, "
                                    f"got {count!r}")
            edges[column.name] = _edges(column, count)
        return cls(schema, edges)

    def merging(self, maps: Mapping[str, Sequence[int]],
                shares: Mapping[str, Sequence[float]] | None = None) -> Discretization:
        """This discretization with some columns' current levels merged by `maps`, and
        optionally each merged column's share per level (columns merged once only)."""
        shares = dict(shares or {})
        again = sorted(set(shares) & set(self.merged))
        if again:
            raise ArgumentError(f"shares of levels given for columns merged before: {again}")
        composed = dict(self.merged)
        for name, mapping in maps.items():
            levels = self.domain().size((name,))
            if len(mapping) != levels:
                raise ArgumentError(f"merged levels of {name!r} map {len(mapping)} levels, "
                                    f"but it has {levels}")
            composed[name] = tuple(int(mapping[v]) for v in self.merged.get(name, range(levels)))
        return Discretization(self.schema, self.edges, composed, {**self.shares, **shares})

    def to_dict(self) -> dict[str, Any]:
        """The discretization as JSON-ready values (schema, bins, merges, shares)."""
        return {"schema": self.schema.to_dict(),
                "bins": {k: list(v) for k, v in self.edges.items()},
                "merged": {k: list(v) for k, v in self.merged.items()},
                "shares": {k: list(v) for k, v in self.shares.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Discretization:
        """A discretization from `to_dict`'s values (shares absent: uniform splits)."""
        return cls(Schema.from_dict(data["schema"]),
                   {k: tuple(v) for k, v in data["bins"].items()},
                   {k: tuple(v) for k, v in data["merged"].items()},
                   {k: tuple(v) for k, v in data.get("shares", {}).items()})

    def domain(self) -> Domain:
        """The discretized domain: one attribute per column, its number of (merged) levels."""
        return Domain(self.schema.names, tuple(
            max(self.merged[n]) + 1 if n in self.merged else self._levels(n)
            for n in self.schema.names))

    def _levels(self, name: str) -> int:
        """A column's levels before merging."""
        return level_count(self.schema[name], self.edges.get(name))

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        """Levels of a table's rows (rows × columns, int64): for evaluating synthetic data
        against real data on the same public bins. The table is validated first."""
        return self.levels(self.schema.encode(frame))

    def levels(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """Levels of rows already encoded by the schema (a table's chunk)."""
        return np.column_stack([self._merge(c.name, codes(columns[c.name], c,
                                                          self.edges.get(c.name)))
                                for c in self.schema.columns])

    def _merge(self, name: str, level: np.ndarray) -> np.ndarray:
        return merged(level, self.merged[name]) if name in self.merged else level

    def expand(self, levels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Levels of the merged domain (rows × columns) back on the unmerged one: each
        merged level becomes one of the levels it holds, in proportion to their shares
        (uniformly without shares); post-processing."""
        out = np.array(levels, dtype=np.int64)
        for j, name in enumerate(self.schema.names):
            if name not in self.merged:
                continue
            mapping = np.asarray(self.merged[name])
            order = np.argsort(mapping, kind="stable")  # the original levels, grouped
            ends = np.cumsum(np.bincount(mapping))
            starts = ends - np.bincount(mapping)
            weight = np.asarray(self.shares.get(name, np.ones(mapping.size)))[order]
            cumulative = np.concatenate([[0.0], np.cumsum(weight)])
            group = out[:, j]
            low, high = cumulative[starts[group]], cumulative[ends[group]]
            drawn = low + rng.random(len(out)) * (high - low)
            position = np.searchsorted(cumulative, drawn, side="right") - 1
            out[:, j] = order[np.clip(position, starts[group], ends[group] - 1)]
        return out

    def decode(self, levels: np.ndarray, *, seed: int) -> pd.DataFrame:
        """Values for sampled levels (of the merged domain): the category, or a value drawn
        uniformly inside the bin's public bounds (a whole number for integer columns),
        missing for the missing level. The draw is post-processing of a DP model, so
        numpy's generator serves."""
        rng = np.random.default_rng(seed)
        levels = self.expand(levels, rng)
        columns = {}
        for j, column in enumerate(self.schema.columns):
            columns[column.name] = self._values(column, levels[:, j], rng)
        return pd.DataFrame(columns)

    def _values(self, column: Column, level: np.ndarray, rng: np.random.Generator) -> pd.Series:
        missing = column.nullable & (level == level_count(column, self.edges.get(column.name)) - 1)
        known = np.where(missing, 0, level)
        if isinstance(column, Categorical):
            values = pd.Series(np.asarray(column.categories, dtype=object)[known], dtype=object)
        elif isinstance(column, Boolean):
            values = pd.Series(known.astype(bool), dtype="boolean")
        else:
            inside = self._inside(column, known, rng)
            # Whole numbers stay whole in a CSV or Parquet file (Int64 keeps a missing one).
            values = pd.Series(inside, dtype="Int64" if isinstance(column, Integer) else None)
        return values.mask(missing)

    def _inside(self, column: Column, level: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A value inside each level's bin, clipped to the column's bounds."""
        edges = np.asarray(self.edges[column.name])
        lower, upper = column.bounds()
        low = np.maximum(edges[level], lower)
        high = np.minimum(edges[level + 1], upper)
        if isinstance(column, Integer):
            first = np.ceil(low)
            last_bin = level == len(edges) - 2  # the last bin is closed on the right
            last = np.where(last_bin, np.floor(high), np.ceil(high) - 1)
            last = np.maximum(last, first)
            return first + np.floor(rng.random(level.size) * (last - first + 1))
        return np.minimum(low + rng.random(level.size) * (high - low), upper)


def _shares(name: str, shares: Sequence[float], mapping: tuple[int, ...] | None
            ) -> tuple[float, ...]:
    """A merged column's shares, checked: one finite share >= 0 per level, and every
    merged level's shares adding up to more than 0."""
    if mapping is None:
        raise ArgumentError(f"shares of levels given for {name!r}, which is not merged")
    values = np.asarray(shares, dtype=np.float64)
    if values.shape != (len(mapping),) or not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ArgumentError(f"shares of {name!r}: {list(shares)} must be {len(mapping)} "
                            "finite numbers >= 0, one per level")
    if np.any(np.bincount(mapping, weights=values) <= 0):
        raise ArgumentError(f"shares of {name!r}: each merged level needs a share above 0")
    return tuple(float(v) for v in values)


def _edges(column: Column, count: int) -> tuple[float, ...]:
    lower, upper = column.bounds()
    if isinstance(column, Integer) and upper - lower + 1 <= count:
        return tuple(float(v) for v in np.arange(lower, upper + 2))  # one level per value
    return tuple(float(e) for e in np.linspace(lower, upper, count + 1))
