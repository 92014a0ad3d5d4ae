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
from pet.synth.factor import logsumexp

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

    def collector(self, cliques: Sequence[Clique]) -> Callable[[Sequence[np.ndarray]],
                                                               list[np.ndarray]]:
        """A function summing potentials over `cliques` (domain order, each inside some tree
        clique) into one potential per tree clique, with the mapping worked out once."""
        plan: list[list[tuple[int, tuple[int, ...]]]] = [[] for _ in self.cliques]
        for k, clique in enumerate(cliques):
            i = self.containing(clique)
            plan[i].append((k, self.domain.embedded_shape(clique, self.cliques[i])))
        zeros = [np.zeros(self.domain.shape(c)) for c in self.cliques]
        # A tree clique that is itself the one potential clique in it takes that array as is.
        alias = [parts[0][0] if len(parts) == 1 and cliques[parts[0][0]] == clique else None
                 for parts, clique in zip(plan, self.cliques, strict=True)]

        def collect(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
            out = []
            for i, parts in enumerate(plan):
                if alias[i] is not None:
                    out.append(arrays[alias[i]])
                    continue
                total = zeros[i]
                for k, shape in parts:
                    total = total + arrays[k].reshape(shape)
                out.append(total)
            return out

        return collect

    @functools.cached_property
    def _schedule(self) -> _Schedule:
        return _Schedule.of(self)

    def calibrate(self, potentials: Sequence[np.ndarray]) -> Beliefs:
        """Sum-product belief propagation in log space (Hugin-style: one upward pass of
        logsumexp messages, then a downward pass that divides out each child's own message),
        so every clique's belief becomes its exact marginal. Inputs are not modified."""
        s = self._schedule
        log = list(potentials)
        up: list[np.ndarray | None] = [None] * len(log)
        for i in reversed(self.order):
            belief = log[i]
            for j in s.children[i]:
                belief = belief + up[j].reshape(s.in_parent[j])
            log[i] = belief
            if self.parents[i] >= 0:
                up[i] = logsumexp(belief, s.up_axes[i], keepdims=True)
        root = self.order[0]
        log[root] = log[root] - logsumexp(log[root], tuple(range(log[root].ndim)))
        prob: list[np.ndarray | None] = [None] * len(log)
        with np.errstate(divide="ignore"):
            for i in self.order:
                parent = self.parents[i]
                if parent >= 0:
                    incoming = np.log(np.add.reduce(prob[parent], axis=s.down_axes[i],
                                                    keepdims=True))
                    log[i] = log[i] + (incoming.reshape(s.in_child[i]) - up[i])
                prob[i] = np.exp(log[i])
        return Beliefs(log, prob)


@dataclass(frozen=True)
class _Schedule:
    """Per clique: its children, and for the edge to its parent the axes each side sums
    out and the shapes a separator message takes on each side."""

    children: tuple[tuple[int, ...], ...]
    up_axes: tuple[tuple[int, ...], ...]
    down_axes: tuple[tuple[int, ...], ...]
    in_parent: tuple[tuple[int, ...], ...]
    in_child: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, tree: JunctionTree) -> _Schedule:
        k = len(tree.cliques)
        children: list[list[int]] = [[] for _ in range(k)]
        up_axes, down_axes, in_parent, in_child = [()] * k, [()] * k, [()] * k, [()] * k
        for i in tree.order:
            parent = tree.parents[i]
            if parent < 0:
                continue
            children[parent].append(i)
            sep = set(tree.separator(i))
            mine, theirs = tree.cliques[i], tree.cliques[parent]
            up_axes[i] = tuple(n for n, a in enumerate(mine) if a not in sep)
            down_axes[i] = tuple(n for n, a in enumerate(theirs) if a not in sep)
            in_parent[i] = tree.domain.embedded_shape(tree.separator(i), theirs)
            in_child[i] = tree.domain.embedded_shape(tree.separator(i), mine)
        return cls(tuple(map(tuple, children)), tuple(up_axes), tuple(down_axes),
                   tuple(in_parent), tuple(in_child))


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
