"""Junction trees: the structure that lets a graphical model be fitted and sampled without
ever forming its joint table.

From a set of cliques: their interaction graph, a triangulation by greedy elimination
(min-fill or weighted min-size, as in Koller & Friedman, *Probabilistic Graphical Models*,
§9.4.3), its maximal cliques, a junction tree joining them (a maximum spanning tree on
separator sizes) and the message schedule of sum-product belief propagation over it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

from pet.errors import ArgumentError
from pet.synth.domain import Clique, Domain
from pet.synth.factor import Broadcast, Summation

MAX_CELLS = 10**7
"""Default limit on the cells of one junction-tree clique (80 MB of float64)."""

Method = Literal["min_size", "min_fill"]


class Beliefs(NamedTuple):
    """Calibrated beliefs, one array per junction-tree clique (axes in the clique's order):
    normalised log-marginals and the marginal probabilities."""

    log: list[np.ndarray]
    prob: list[np.ndarray]


@dataclass(frozen=True)
class JunctionTree:
    """Cliques (attributes in domain order) joined in a tree with the running-intersection
    property; `parents[i]` is clique i's parent (−1 for the root) and `order` lists every
    clique after its parent, which is the schedule of the downward pass."""

    domain: Domain
    cliques: tuple[Clique, ...]
    parents: tuple[int, ...]
    order: tuple[int, ...]

    def __post_init__(self) -> None:
        k = len(self.cliques)
        if len(self.parents) != k or sorted(self.order) != list(range(k)):
            raise ArgumentError("JunctionTree: parents and order must cover every clique once")
        seen: set[int] = set()
        for n, i in enumerate(self.order):
            parent = self.parents[i]
            if (n == 0) != (parent < 0) or (n > 0 and parent not in seen):
                raise ArgumentError(
                    f"JunctionTree.order: clique {i} must come after its parent, and only "
                    "the first clique may be the root")
            seen.add(i)
        for clique in self.cliques:
            if clique != self.domain.ordered(clique):
                raise ArgumentError(f"JunctionTree.cliques: {clique} is not in domain order")

    @property
    def cells(self) -> int:
        """Cells over all cliques: what one set of potentials or beliefs takes."""
        return sum(self.domain.size(c) for c in self.cliques)

    def separator(self, i: int) -> Clique:
        """Attributes clique i shares with its parent (none for the root)."""
        parent = self.parents[i]
        if parent < 0:
            return ()
        return tuple(a for a in self.cliques[i] if a in self.cliques[parent])

    def find(self, clique: Iterable[str]) -> int | None:
        """Index of the smallest clique holding every attribute of `clique`, or None."""
        wanted = set(self.domain.check(clique))
        fits = [i for i, c in enumerate(self.cliques) if wanted <= set(c)]
        return min(fits, key=lambda i: self.domain.size(self.cliques[i])) if fits else None

    def containing(self, clique: Iterable[str]) -> int:
        """Like `find`, but raises ArgumentError when no clique holds them all."""
        clique = tuple(clique)
        found = self.find(clique)
        if found is None:
            raise ArgumentError(f"no junction-tree clique holds all of {clique}")
        return found

    def collector(self, cliques: Sequence[Clique]) -> Callable[..., list[np.ndarray]]:
        """A function summing potentials over `cliques` (domain order, each inside some tree
        clique) into one potential per tree clique, with the mapping worked out once."""
        nests = self._nests(cliques)

        def collect(arrays: Sequence[np.ndarray],
                    out: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
            """The summed potentials, written into `out` (one array per tree clique, left
            unused where an input serves as is) when given."""
            return [nest.collect(arrays, None if out is None else out[i])
                    for i, nest in enumerate(nests)]

        return collect

    def projector(self, cliques: Sequence[Clique]) -> Callable[[Sequence[np.ndarray]],
                                                               list[np.ndarray]]:
        """A function summing calibrated probabilities down to each of `cliques` (domain
        order, each inside some tree clique; arrays shaped by the clique), with the sums
        worked out once: what `collector` spreads up, this sums back down."""
        nests = self._nests(cliques)

        def project(prob: Sequence[np.ndarray]) -> list[np.ndarray]:
            out: list[np.ndarray] = [np.empty(0)] * len(cliques)
            for nest, values in zip(nests, prob, strict=True):
                nest.project(values, out)
            return out

        return project

    def _nests(self, cliques: Sequence[Clique]) -> list[_Nest]:
        """Per tree clique, the given cliques that `containing` puts in it, nested."""
        inside: list[list[tuple[int, Clique]]] = [[] for _ in self.cliques]
        for k, clique in enumerate(cliques):
            inside[self.containing(clique)].append((k, tuple(clique)))
        return [_Nest.of(self.domain, clique, members)
                for clique, members in zip(self.cliques, inside, strict=True)]

    @functools.cached_property
    def _schedule(self) -> _Schedule:
        return _Schedule.of(self)

    def calibrate(self, potentials: Sequence[np.ndarray]) -> Beliefs:
        """Sum-product belief propagation (Hugin-style: one upward pass of messages kept in
        logs, then a downward pass that divides out each child's own message), so every
        clique's belief becomes its exact marginal. Inputs are not modified."""
        prob, log = self._propagate(potentials, logs=True)
        return Beliefs(log, prob)

    def probabilities(self, potentials: Sequence[np.ndarray],
                      out: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
        """`calibrate(potentials).prob` alone, written into `out` (one array per clique)
        when given: fitting needs no log-beliefs, which cost a pass over every cell, and
        reusing its arrays spares allocating them at every step."""
        return self._propagate(potentials, logs=False, out=out)[0]

    def _propagate(self, potentials: Sequence[np.ndarray], *, logs: bool,
                   out: Sequence[np.ndarray] | None = None,
                   ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Calibrated probabilities, and log-beliefs when `logs`. Upward, each clique's
        log-belief (its potential plus its children's messages) is shifted and
        exponentiated once; its sums onto the separator, back in logs, are its message.
        Downward, that exponentiated belief is rescaled so that its separator marginal is
        its parent's, which makes it the clique's marginal without a second exp."""
        s = self._schedule
        k = len(self.cliques)
        centred: list[np.ndarray] = [np.empty(0)] * k
        scaled: list[np.ndarray] = [np.empty(0)] * k
        mass: list[np.ndarray] = [np.empty(0)] * k
        messages: list[np.ndarray] = [np.empty(0)] * k
        with np.errstate(divide="ignore"):
            for i in reversed(self.order):
                belief = potentials[i]
                for n, j in enumerate(s.children[i]):
                    # The first message makes a new array: the potential is left as it was.
                    belief = s.into_parent[j].apply(np.add, belief, messages[j],
                                                    out=belief if n else None)
                centred[i], scaled[i], mass[i], shift = _exponentiated(
                    belief, s.up[i], s.up_axes[i], None if out is None else out[i], keep=logs)
                if self.parents[i] >= 0:
                    messages[i] = (np.log(mass[i]) + shift).reshape(s.in_parent[i])
            prob: list[np.ndarray] = [np.empty(0)] * k
            log: list[np.ndarray] = [np.empty(0)] * k
            for i in self.order:
                parent = self.parents[i]
                separator = 1.0 if parent < 0 else s.down[i](prob[parent]).reshape(
                    s.in_child[i])
                ratio = separator / mass[i]
                prob[i] = s.into_child[i].apply(np.multiply, scaled[i], ratio, out=scaled[i])
                if logs:
                    log[i] = s.into_child[i].apply(np.add, centred[i], np.log(ratio),
                                                   out=centred[i])
        return prob, log


_LOWEST = np.finfo(np.float64).min
_UNDERFLOW = 1e-200
"""A separator value whose exponentiated belief, shifted by the clique's maximum, sums to
less than this makes the clique shift each separator value by its own maximum instead."""


def _exponentiated(belief: np.ndarray, up: Summation, axes: tuple[int, ...],
                   out: np.ndarray | None, *,
                   keep: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(belief − shift, exp(belief − shift), its sums onto the separator, the shift), the
    first written into `out` when given and overwritten by the second unless `keep`;
    `belief` itself is left as it is. The shift is the clique's maximum, one number and
    cheap to find; where a separator value's sum would then come near underflow, it is
    each value's own maximum, so no value loses more than rounding."""

    def shifted(shift: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        centred = np.subtract(belief, shift, out=out)
        scaled = np.exp(centred) if keep else np.exp(centred, out=centred)
        return centred, scaled, up(scaled)

    shift = np.asarray(max(float(belief.max()), _LOWEST))
    centred, scaled, mass = shifted(shift)
    if mass.min() < _UNDERFLOW:
        shift = np.maximum(np.maximum.reduce(belief, axis=axes, keepdims=True), _LOWEST)
        centred, scaled, mass = shifted(shift)
    return centred, scaled, mass, shift


@dataclass(frozen=True)
class _Schedule:
    """Per clique: its children, the axes it sums out towards its parent (every axis at the
    root) and those sums' plan, the shapes its separator takes on each side, the plan of
    its parent's sums onto it, and the plans that spread a separator array into each
    side."""

    children: tuple[tuple[int, ...], ...]
    up_axes: tuple[tuple[int, ...], ...]
    up: tuple[Summation, ...]
    down: tuple[Summation | None, ...]
    in_parent: tuple[tuple[int, ...], ...]
    in_child: tuple[tuple[int, ...], ...]
    into_parent: tuple[Broadcast | None, ...]
    into_child: tuple[Broadcast, ...]

    @classmethod
    def of(cls, tree: JunctionTree) -> _Schedule:
        k = len(tree.cliques)
        children: list[list[int]] = [[] for _ in range(k)]
        shape = [tree.domain.shape(c) for c in tree.cliques]
        up_axes = [tuple(range(len(c))) for c in tree.cliques]
        in_child = [(1,) * len(c) for c in tree.cliques]
        in_parent = list(in_child)
        down: list[Summation | None] = [None] * k
        into_parent: list[Broadcast | None] = [None] * k
        for i in tree.order:
            parent = tree.parents[i]
            if parent < 0:
                continue
            children[parent].append(i)
            sep = set(tree.separator(i))
            mine, theirs = tree.cliques[i], tree.cliques[parent]
            up_axes[i] = tuple(n for n, a in enumerate(mine) if a not in sep)
            in_parent[i] = tree.domain.embedded_shape(tree.separator(i), theirs)
            in_child[i] = tree.domain.embedded_shape(tree.separator(i), mine)
            down[i] = Summation(shape[parent], [n for n, a in enumerate(theirs)
                                                if a not in sep])
            into_parent[i] = Broadcast(shape[parent], in_parent[i])
        return cls(tuple(map(tuple, children)), tuple(up_axes),
                   tuple(Summation(shape[i], up_axes[i]) for i in range(k)), tuple(down),
                   tuple(in_parent), tuple(in_child), tuple(into_parent),
                   tuple(Broadcast(shape[i], in_child[i]) for i in range(k)))


_NEST_CELLS = 4096
"""What one more array operation costs beyond its cells, in cells: nesting must save more."""


@dataclass(frozen=True)
class _Nest:
    """Cliques inside a clique, arranged so that each is summed from the smallest clique
    above it: `members` index the given cliques equal to `clique`, and each child holds
    cliques inside a smaller one, with the plans that sum this clique's array onto the
    child's and spread the child's array back into this one. Summing an attribute out once
    for several cliques that all lack it spares a pass over the large array for each."""

    clique: Clique
    shape: tuple[int, ...]
    members: tuple[int, ...]
    children: tuple[tuple[_Nest, Summation, Broadcast], ...]

    @classmethod
    def of(cls, domain: Domain, clique: Clique, cliques: list[tuple[int, Clique]]) -> _Nest:
        """The nest of `cliques` (index, clique) inside `clique`, built greedily: the
        attribute the most of them lack is summed out first, while that saves work."""
        shape = domain.shape(clique)
        size = dict(zip(clique, shape, strict=True))
        members = tuple(k for k, c in cliques if c == clique)
        rest = [(k, c) for k, c in cliques if c != clique]
        groups = []
        while rest:
            gone = max(clique, key=lambda a: (sum(a not in c for _, c in rest), size[a]))
            lacking = [(k, c) for k, c in rest if gone not in c]
            cells = math.prod(shape)
            if (len(lacking) - 1) * cells - len(lacking) * cells / size[gone] <= _NEST_CELLS:
                break
            groups.append((tuple(a for a in clique if a != gone), lacking))
            rest = [(k, c) for k, c in rest if gone in c]
        groups += [(c, [(k, c)]) for k, c in rest]
        children = []
        for smaller, within in groups:
            away = tuple(n for n, a in enumerate(clique) if a not in smaller)
            part = tuple(1 if n in away else m for n, m in enumerate(shape))
            children.append((cls.of(domain, smaller, within), Summation(shape, away),
                             Broadcast(shape, part)))
        return cls(clique, shape, members, tuple(children))

    def collect(self, arrays: Sequence[np.ndarray], out: np.ndarray | None = None
                ) -> np.ndarray:
        """The sum of the nested cliques' arrays over `clique`, into `out` when given; the
        one array of a nest of a single clique serves as is."""
        if len(self.members) == 1 and not self.children:
            return arrays[self.members[0]]
        if out is None:
            total = np.zeros(self.shape)
        else:
            total = out
            total.fill(0.0)
        for k in self.members:
            np.add(total, arrays[k], out=total)
        for nest, _, spread in self.children:
            spread.apply(np.add, total, nest.collect(arrays), out=total)
        return total

    def project(self, values: np.ndarray, out: list[np.ndarray]) -> None:
        """Sets `out[k]` to the sums of `values` (over `clique`) onto each nested clique k."""
        for k in self.members:
            out[k] = values
        for nest, total, _ in self.children:
            nest.project(total(values).reshape(nest.shape), out)


def elimination_order(domain: Domain, cliques: Iterable[Clique], *,
                      method: Method = "min_size") -> tuple[str, ...]:
    """A greedy elimination order of the interaction graph of `cliques` (every attribute of
    the domain is a vertex): each step eliminates the vertex whose elimination clique has
    the fewest cells ("min_size", the cost that bounds memory) or adds the fewest fill
    edges ("min_fill"), the other criterion breaking ties, then domain order."""
    return tuple(v for v, _ in _eliminate_greedily(domain, cliques, method))


def junction_tree(domain: Domain, cliques: Iterable[Iterable[str]], *,
                  max_cells: int = MAX_CELLS, method: Method = "min_size") -> JunctionTree:
    """The junction tree of a triangulation of the cliques' interaction graph, covering
    every attribute of the domain. Raises ArgumentError, naming the clique, when one of its
    cliques would exceed `max_cells` cells, so callers can refuse models that do not fit."""
    if isinstance(max_cells, bool) or not isinstance(max_cells, int) or max_cells < 1:
        raise ArgumentError(f"max_cells={max_cells!r}; must be an integer ≥ 1")
    if not len(domain):
        raise ArgumentError("cannot build a junction tree over a domain without attributes")
    found = maximal([c for _, c in _eliminate_greedily(
        domain, [domain.ordered(c) for c in cliques], method)])
    for clique in found:
        cells = domain.size(clique)
        if cells > max_cells:
            raise ArgumentError(
                f"junction-tree clique {clique} would have {cells} cells, more than "
                f"max_cells={max_cells}; measure fewer or smaller marginals")
    parents, order = _spanning_tree(found)
    return JunctionTree(domain, tuple(found), parents, order)


def maximal(cliques: Sequence[Clique]) -> list[Clique]:
    """The distinct cliques that no other one contains, in the order first seen."""
    unique = list(dict.fromkeys(cliques))
    return [c for c in unique if not any(set(c) < set(o) for o in unique)]


def _eliminate_greedily(domain: Domain, cliques: Iterable[Clique],
                        method: Method) -> list[tuple[str, Clique]]:
    """Each vertex in greedy elimination order, with its elimination clique (domain order).
    Costs are kept between steps: an elimination only changes those of its neighbours and
    their neighbours."""
    if method not in ("min_size", "min_fill"):
        raise ArgumentError(f"elimination method {method!r}; use 'min_size' or 'min_fill'")
    graph = _interaction_graph(domain, cliques)

    def cost(v: str) -> tuple[int, int, int]:
        cells = math.prod(domain.sizes[domain.index(u)] for u in (v, *graph[v]))
        fill = _fill(graph, v)
        return (cells, fill, domain.index(v)) if method == "min_size" else (
            fill, cells, domain.index(v))

    costs = {v: cost(v) for v in graph}
    out = []
    while costs:
        v = min(costs, key=costs.__getitem__)
        nbrs = set(graph[v])
        out.append((v, domain.ordered({v, *nbrs})))
        _eliminate(graph, v)
        del costs[v]
        for u in nbrs.union(*(graph[u] for u in nbrs)):
            costs[u] = cost(u)
    return out


def _interaction_graph(domain: Domain, cliques: Iterable[Clique]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {a: set() for a in domain.attributes}
    for clique in cliques:
        for a in domain.check(clique):
            graph[a].update(b for b in clique if b != a)
    return graph


def _fill(graph: dict[str, set[str]], v: str) -> int:
    nbrs = list(graph[v])
    return sum(1 for i, a in enumerate(nbrs) for b in nbrs[i + 1:] if b not in graph[a])


def _eliminate(graph: dict[str, set[str]], v: str) -> None:
    nbrs = graph.pop(v)
    for a in nbrs:
        graph[a].discard(v)
        graph[a].update(b for b in nbrs if b != a)


def _spanning_tree(cliques: list[Clique]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Kruskal's maximum spanning tree on separator sizes (zero-size edges join separate
    components into one tree), rooted at clique 0: (parents, pre-order)."""
    k = len(cliques)
    edges = sorted(((len(set(cliques[i]) & set(cliques[j])), i, j)
                    for i in range(k) for j in range(i + 1, k)), key=lambda e: (-e[0], e[1], e[2]))
    root = list(range(k))

    def find(i: int) -> int:
        while root[i] != i:
            root[i] = root[root[i]]
            i = root[i]
        return i

    adjacent: list[list[int]] = [[] for _ in range(k)]
    for _, i, j in edges:
        a, b = find(i), find(j)
        if a != b:
            root[a] = b
            adjacent[i].append(j)
            adjacent[j].append(i)
    parents = [-1] * k
    order = [0]
    for i in order:
        for j in adjacent[i]:
            if j != parents[i]:
                parents[j] = i
                order.append(j)
    return tuple(parents), tuple(order)
