"""Tables as numbers on public scales, for distances and models.

Every numeric column is divided by its public range, so a difference across the whole
range counts 1; a category is one-hot at half weight, so a mismatch also counts 1 in L1
(Gower's distance); a boolean is 0 or 1; a missing value is an indicator of its own and
leaves its column at 0. Nothing is fitted to the data: real and synthetic tables land on
the same scale, and no statistic of the real rows leaks into the comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pet.errors import ArgumentError
from pet.schema import Boolean, Categorical, Schema


@dataclass(frozen=True)
class Features:
    """The encoding of some of a schema's columns (all by default) as numbers."""

    schema: Schema
    columns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        columns = tuple(self.columns) or self.schema.names
        unknown = [name for name in columns if self.schema.get(name) is None]
        if unknown:
            raise ArgumentError(f"columns {unknown} are not in the schema "
                                f"{list(self.schema.names)}")
        object.__setattr__(self, "columns", columns)

    def without(self, *names: str) -> Features:
        """The same encoding, leaving out some columns."""
        kept = tuple(c for c in self.columns if c not in names)
        if not kept:
            raise ArgumentError(f"no column is left once {list(names)} are left out")
        return Features(self.schema, kept)

    def names(self) -> list[str]:
        """The feature names, in matrix order."""
        out = []
        for name in self.columns:
            column = self.schema[name]
            if isinstance(column, Categorical):
                out += [f"{name}={c}" for c in column.categories]
            else:
                out.append(name)
            if column.nullable:
                out.append(f"{name} missing")
        return out

    def matrix(self, frame: pd.DataFrame) -> np.ndarray:
        """The rows of `frame` (validated against the schema) as a float matrix."""
        encoded = self.schema.encode(frame, columns=self.columns)
        parts = []
        for name in self.columns:
            parts += _encoded(self.schema, name, encoded[name])
        return np.column_stack(parts) if parts else np.zeros((len(frame), 0))


def _encoded(schema: Schema, name: str, values: np.ndarray) -> list[np.ndarray]:
    column = schema[name]
    missing = np.isnan(values)
    known = np.where(missing, 0.0, values)
    if isinstance(column, Categorical):
        out = [0.5 * (known == k) for k in range(len(column.categories))]
    elif isinstance(column, Boolean):
        out = [known]
    else:
        lower, upper = column.bounds()
        out = [np.where(missing, 0.0, (known - lower) / max(upper - lower, 1e-300))]
    if column.nullable:
        out.append(missing.astype(np.float64))
    return [np.asarray(o, dtype=np.float64) for o in out]


def split(frame: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A seeded random split of rows into (train, holdout), `fraction` of them in train."""
    if not 0 < fraction < 1:
        raise ArgumentError(f"the train fraction must lie in (0, 1), got {fraction!r}")
    order = np.random.default_rng(seed).permutation(len(frame))
    cut = round(fraction * len(frame))
    if cut < 1 or cut >= len(frame):
        raise ArgumentError(f"{len(frame)} rows cannot be split {fraction:g} / {1 - fraction:g}")
    pick = frame.reset_index(drop=True)
    return (pick.iloc[np.sort(order[:cut])].reset_index(drop=True),
            pick.iloc[np.sort(order[cut:])].reset_index(drop=True))


def subsample(frame: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """At most `rows` rows of `frame`, drawn without replacement (seeded)."""
    if len(frame) <= rows:
        return frame.reset_index(drop=True)
    chosen = np.sort(np.random.default_rng(seed).choice(len(frame), rows, replace=False))
    return frame.iloc[chosen].reset_index(drop=True)
