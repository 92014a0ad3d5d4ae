"""Log-potentials over a few attributes, and the algebra a graphical model needs of them.

A factor holds log-values, so a product of potentials is a sum of arrays and summing an
attribute out is a logsumexp: nothing under- or overflows however peaked the model is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from pet.errors import ArgumentError
from pet.synth.domain import Clique, Domain

_LOWEST = np.finfo(np.float64).min

_SHORT = 16
"""A summed run followed by at most this many kept cells is summed by a matrix product…"""
_MATRIX_CELLS = 8192
"""… whose 0/1 matrix (run × cells after it, by cells after it) holds at most this many."""
_INNER = 128
"""Contiguous cells a broadcast operation's innermost loop is made to cover, at least."""


@dataclass(frozen=True, eq=False)  # arrays: factors compare by identity
class Factor:
    """A log-potential: `values[i, j, …]` is the log-value of the cell whose codes are
    i, j, … for `domain.attributes` in order."""

    domain: Domain
    values: np.ndarray

    def __post_init__(self) -> None:
        values = np.asarray(self.values, dtype=np.float64)
        if values.shape != self.domain.sizes:
            raise ArgumentError(
                f"Factor.values: shape {values.shape} does not fit the attributes "
                f"{self.domain.attributes} of sizes {self.domain.sizes}")
        object.__setattr__(self, "values", values)

    @property
    def attributes(self) -> Clique:
        """The factor's attributes, in the order of its array's axes."""
        return self.domain.attributes

    def broadcast(self, domain: Domain) -> np.ndarray:
        """The values as an array that broadcasts against arrays over `domain`, which must
        hold every attribute of this factor (axes of other attributes have length 1)."""
        missing = [a for a in self.attributes if a not in domain]
        if missing:
            raise ArgumentError(
                f"factor over {self.attributes} cannot be expanded to {domain.attributes}: "
                f"{missing} missing")
        inside = [a for a in domain.attributes if a in self.domain]
        values = self.values.transpose([self.domain.index(a) for a in inside])
        return values.reshape(domain.embedded_shape(inside, domain.attributes))

    def transpose(self, attributes: Iterable[str]) -> Factor:
        """The same potential with its axes in the order of `attributes`."""
        order = self.domain.check(attributes)
        if set(order) != set(self.attributes):
            raise ArgumentError(f"cannot reorder {self.attributes} as {order}")
        return Factor(self.domain.project(order),
                      self.values.transpose([self.domain.index(a) for a in order]))

    def __add__(self, other: Factor) -> Factor:
        """The product of two potentials (a sum of log-values), over the union of their
        attributes: this factor's first, then the other's new ones."""
        domain = self.domain.merge(other.domain)
        return Factor(domain, self.broadcast(domain) + other.broadcast(domain))

    def marginalize(self, attributes: Iterable[str]) -> Factor:
        """Sum the given attributes out (a logsumexp over their axes)."""
        gone = set(self.domain.check(attributes))
        keep = tuple(a for a in self.attributes if a not in gone)
        axes = tuple(i for i, a in enumerate(self.attributes) if a in gone)
        return Factor(self.domain.project(keep), logsumexp(self.values, axes))


def logsumexp(values: np.ndarray, axes: tuple[int, ...], *, keepdims: bool = False) -> np.ndarray:
    """log Σ exp(values) over `axes`, shifted by each slice's maximum so that no slice
    underflows, whatever the spread of the values elsewhere."""
    if not axes:
        return values
    # A slice of -inf only keeps its shift finite, so it comes out as -inf, not NaN.
    top = np.maximum(np.maximum.reduce(values, axis=axes, keepdims=True), _LOWEST)
    out = np.log(np.add.reduce(np.exp(values - top), axis=axes, keepdims=True)) + top
    return out if keepdims else out.reshape([n for i, n in enumerate(values.shape)
                                             if i not in axes])


class Summation:
    """Sums arrays of one shape over some of their axes, keeping those as length-1 axes,
    along a plan worked out once. numpy loops slowly over short innermost axes, so adjacent
    summed axes are merged into runs, the longest run is summed first, and a run followed
    by few kept cells is summed as a product with a 0/1 matrix, which BLAS does at speed."""

    def __init__(self, shape: tuple[int, ...], axes: Iterable[int]) -> None:
        summed = set(axes)
        self.shape = tuple(1 if n in summed else size for n, size in enumerate(shape))
        runs: list[tuple[int, bool]] = []
        for n, size in enumerate(shape):
            if runs and runs[-1][1] == (n in summed):
                runs[-1] = (runs[-1][0] * size, n in summed)
            else:
                runs.append((size, n in summed))
        self._steps: list[tuple[tuple[int, ...], np.ndarray | None]] = []
        while any(s for _, s in runs):
            r = max((r for r, (_, s) in enumerate(runs) if s), key=lambda r: runs[r][0])
            before = math.prod(n for n, _ in runs[:r])
            size = runs[r][0]
            after = math.prod(n for n, _ in runs[r + 1:])
            if after <= _SHORT and size * after * after <= _MATRIX_CELLS:
                self._steps.append(((before, size * after), np.tile(np.eye(after), (size, 1))))
            else:
                self._steps.append(((before, size, after), None))
            del runs[r]

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """The sums of `values` (the input itself, reshaped, when no axis is summed)."""
        out = values
        for shape, matrix in self._steps:
            out = (np.add.reduce(out.reshape(shape), axis=1) if matrix is None
                   else out.reshape(shape) @ matrix)
        return out.reshape(self.shape)


class Broadcast:
    """Elementwise operations between arrays of one shape and smaller ones that broadcast
    against them (length 1 on the axes they are constant along), along a plan worked out
    once. numpy loops slowly over short innermost axes, so the smaller array is first
    spread over the fewest trailing axes that hold `_INNER` cells, and each operation then
    runs its innermost loop over that many contiguous cells."""

    def __init__(self, shape: tuple[int, ...], part: tuple[int, ...]) -> None:
        split = len(shape)
        while split > 0 and math.prod(shape[split:]) < _INNER:
            split -= 1
        if math.prod(part[:split]) * math.prod(shape[split:]) >= math.prod(shape):
            split = len(shape)  # spreading would copy a whole array: leave it to numpy
        inner = math.prod(shape[split:])
        self.shape, self.part = shape, part
        self._plain = split == len(shape)
        self._copy = part[split:] != shape[split:]
        self._whole = (*shape[:split], inner)
        self._spread = (*part[:split], *shape[split:])
        self._piece = (*part[:split], inner)

    def apply(self, ufunc: np.ufunc, whole: np.ndarray, piece: np.ndarray,
              out: np.ndarray | None = None) -> np.ndarray:
        """`ufunc(whole, piece)`, into `out` when given (which may be `whole`); `piece` is
        taken in the part's shape, so an array over the part's attributes alone will do."""
        if self._plain:
            return ufunc(whole, piece.reshape(self.part), out=out)
        spread = piece.reshape(self.part)
        if self._copy:
            spread = np.empty(self._spread)
            np.copyto(spread, piece.reshape(self.part))
        target = None if out is None else out.reshape(self._whole)
        return ufunc(whole.reshape(self._whole), spread.reshape(self._piece),
                     out=target).reshape(self.shape)
