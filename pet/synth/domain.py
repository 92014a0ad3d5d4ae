"""The discrete domain a synthesizer works on: attribute names and how many codes each has."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from numbers import Integral

from pet.errors import ArgumentError

Clique = tuple[str, ...]


@dataclass(frozen=True)
class Domain:
    """Attributes (names, in column order) and their sizes: attribute `a` takes codes
    0 … size(a) − 1. A clique is a tuple of attribute names, in any order."""

    attributes: tuple[str, ...]
    sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        attributes = tuple(self.attributes)
        sizes = tuple(self.sizes)
        if len(attributes) != len(sizes):
            raise ArgumentError(
                f"Domain: {len(attributes)} attributes but {len(sizes)} sizes; "
                "give one size per attribute")
        for name in attributes:
            if not isinstance(name, str) or not name:
                raise ArgumentError(f"Domain.attributes: {name!r} is not a non-empty string")
        if len(set(attributes)) != len(attributes):
            repeated = sorted({a for a in attributes if attributes.count(a) > 1})
            raise ArgumentError(f"Domain.attributes: names repeat: {repeated}")
        for name, size in zip(attributes, sizes, strict=True):
            if isinstance(size, bool) or not isinstance(size, Integral) or size < 1:
                raise ArgumentError(
                    f"Domain.sizes: attribute {name!r} has size {size!r}; sizes are integers ≥ 1")
        object.__setattr__(self, "attributes", attributes)
        object.__setattr__(self, "sizes", tuple(int(s) for s in sizes))
        object.__setattr__(self, "_index", {a: i for i, a in enumerate(attributes)})

    def __len__(self) -> int:
        return len(self.attributes)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def index(self, name: str) -> int:
        """Position of an attribute in the domain (its column in sampled rows)."""
        try:
            return self._index[name]
        except (KeyError, TypeError):
            raise ArgumentError(
                f"unknown attribute {name!r}; the domain has: {', '.join(self.attributes)}"
            ) from None

    def check(self, clique: Iterable[str]) -> Clique:
        """The clique as a tuple, after checking every name is known and none repeats."""
        if isinstance(clique, str):
            raise ArgumentError(f"a clique is a tuple of names: write ({clique!r},)")
        clique = tuple(clique)
        for name in clique:
            self.index(name)
        if len(set(clique)) != len(clique):
            raise ArgumentError(f"clique {clique} names an attribute twice")
        return clique

    def ordered(self, clique: Iterable[str]) -> Clique:
        """The clique's attributes in domain order: the canonical form arrays are kept in."""
        return tuple(sorted(self.check(clique), key=self._index.__getitem__))

    def shape(self, clique: Iterable[str]) -> tuple[int, ...]:
        """Sizes of the clique's attributes, in the clique's order."""
        return tuple(self.sizes[self.index(a)] for a in self.check(clique))

    def size(self, clique: Iterable[str] | None = None) -> int:
        """Number of cells of the clique (of the whole domain when None), exactly."""
        return math.prod(self.sizes if clique is None else self.shape(clique))

    def embedded_shape(self, part: Iterable[str], clique: Iterable[str]) -> tuple[int, ...]:
        """Shape under which an array over `part`, its axes in the order they have in
        `clique`, broadcasts against arrays over `clique`: 1 on the axes `part` lacks."""
        part = set(self.check(part))
        return tuple(n if a in part else 1
                     for a, n in zip(self.check(clique), self.shape(clique), strict=True))

    def project(self, clique: Iterable[str]) -> Domain:
        """The domain of the clique's attributes, in the clique's order."""
        clique = self.check(clique)
        return Domain(clique, self.shape(clique))

    def merge(self, other: Domain) -> Domain:
        """This domain followed by the attributes of `other` it lacks (sizes must agree)."""
        extra = [a for a in other.attributes if a not in self]
        for a in other.attributes:
            if a in self and self.sizes[self.index(a)] != other.sizes[other.index(a)]:
                raise ArgumentError(f"attribute {a!r} has different sizes in the two domains")
        return Domain(self.attributes + tuple(extra), self.sizes + other.shape(extra))

