"""Log-potentials over a few attributes, and the algebra a graphical model needs of them.

A factor holds log-values, so a product of potentials is a sum of arrays and summing an
attribute out is a logsumexp: nothing under- or overflows however peaked the model is.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from pet.errors import ArgumentError
from pet.synth.domain import Clique, Domain

_LOWEST = np.finfo(np.float64).min


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
