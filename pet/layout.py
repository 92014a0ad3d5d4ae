"""The public layout of a query's sufficient statistics: a fixed-length vector of blocks.

A layout is known before any data is touched (it depends only on the schema and the
query). Each block states what one row can contribute to it, so every backend can derive
what it needs without seeing data: DP its sensitivity, HE its plain modulus or scale,
MPC its fixed-point range, and disclosure control which cells are small-count cells.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pet.errors import QueryError

HEAD = ("n", "missing", "clipped")
"""The blocks a query's layout starts with, in order, that results report: rows used,
rows left out per nullable column for a missing value, rows clamped per clipped column."""


@dataclass(frozen=True)
class Block:
    """A named run of `size` elements of the layout vector.

    `bound` is the largest absolute amount one row adds to any one element; `l1` and `l2`
    bound the norms of one row's whole contribution to the block (a one-hot histogram
    row adds 1 to one cell: bound = l1 = l2 = 1, whatever the number of cells).
    `integer` blocks hold exact whole numbers (counts); `cells` blocks are counts of
    people that output disclosure control checks against a site's minimum cell size.
    `weight` is the block's public importance to the answer's error: a DP release splits
    its privacy budget across blocks by it (`pet.mechanisms.plan`).
    """

    name: str
    size: int
    bound: float
    l1: float
    l2: float
    integer: bool = False
    cells: bool = False
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.size < 0:
            raise QueryError(f"block {self.name!r} cannot have {self.size} elements")
        if min(self.bound, self.l1, self.l2) < 0:
            raise QueryError(f"block {self.name!r}: bounds must be non-negative")
        if not self.weight > 0:
            raise QueryError(f"block {self.name!r}: its weight must be positive")

    @classmethod
    def counts(cls, name: str, size: int, *, per_row: int = 1, cells: bool = True,
               weight: float = 1.0) -> Block:
        """Counts where one row adds 1 to at most `per_row` of the elements."""
        return cls(name, size, 1.0, float(per_row), math.sqrt(per_row), integer=True,
                   cells=cells, weight=weight)

    @classmethod
    def sums(cls, name: str, size: int, *, bound: float = 1.0, weight: float = 1.0) -> Block:
        """Sums where one row may add up to `bound` (in absolute value) to every element."""
        return cls(name, size, bound, bound * size, bound * math.sqrt(size), weight=weight)


@dataclass(frozen=True)
class Layout:
    """The ordered blocks of one round's vector of sufficient statistics.

    `parameters` is the number of model parameters a regression fits from it (0 for
    descriptive statistics), which disclosure control compares with the row count.
    `share` is the fraction of the query's privacy budget a DP release of this round
    spends (1 for single-round queries; an iterative query splits it across its rounds).
    """

    blocks: tuple[Block, ...]
    parameters: int = 0
    share: float = 1.0

    def __post_init__(self) -> None:
        names = [b.name for b in self.blocks]
        if len(set(names)) != len(names):
            raise QueryError(f"layout block names repeat: {names}")
        if not 0 <= self.share <= 1:
            raise QueryError(f"a round's share of the budget must lie in [0, 1], got "
                             f"{self.share!r}")

    @property
    def size(self) -> int:
        """Length of the vector."""
        return sum(b.size for b in self.blocks)

    @property
    def l1(self) -> float:
        """L1 sensitivity of the whole vector to adding or removing one row."""
        return sum(b.l1 for b in self.blocks)

    @property
    def l2(self) -> float:
        """L2 sensitivity of the whole vector to adding or removing one row."""
        return math.sqrt(sum(b.l2**2 for b in self.blocks))

    @property
    def integer(self) -> bool:
        """Whether every element is an exact count (so exact integer schemes apply)."""
        return all(b.integer for b in self.blocks)

    def bounds(self) -> np.ndarray:
        """Per element, the largest absolute amount one row contributes."""
        return np.concatenate([np.full(b.size, b.bound) for b in self.blocks] or [np.zeros(0)])

    def counts_mask(self) -> np.ndarray:
        """Per element, whether it is an exact count (so a backend may round it back)."""
        return np.concatenate([np.full(b.size, b.integer) for b in self.blocks]
                              or [np.zeros(0, bool)])

    def __iter__(self) -> Iterator[tuple[Block, slice]]:
        start = 0
        for block in self.blocks:
            yield block, slice(start, start + block.size)
            start += block.size

    def split(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        """The vector's blocks by name (views, not copies)."""
        if vector.shape != (self.size,):
            raise QueryError(f"vector of shape {vector.shape} does not fit a layout of "
                             f"{self.size} elements")
        return {block.name: vector[where] for block, where in self}

    def head(self, vector: np.ndarray) -> np.ndarray:
        """The vector's head blocks, which every result reports beside its answer: n,
        then the missing counts, then the clipped counts (`HEAD`)."""
        parts = self.split(vector)
        return np.concatenate([parts[name] for name in HEAD if name in parts])

    def join(self, parts: dict[str, np.ndarray]) -> np.ndarray:
        """The vector from its blocks (the inverse of `split`)."""
        return np.concatenate([np.ravel(parts[b.name]).astype(np.float64) for b in self.blocks])
