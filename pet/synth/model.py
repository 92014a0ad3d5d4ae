"""A fitted graphical model: marginals over any clique, and synthetic rows drawn from it.

Everything here is post-processing of a DP model, so sampling uses numpy's generator;
no privacy noise is drawn here or anywhere in pet.synth.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from pet.errors import ArgumentError
from pet.synth.domain import Clique, Domain
from pet.synth.factor import Factor, Summation, logsumexp
from pet.synth.junction_tree import Beliefs, JunctionTree

_RESOLUTION = 2**32
"""Probabilities are drawn at 2⁻³² resolution (integer keys keep sampling exact in int64)."""


@dataclass(frozen=True, eq=False)  # arrays: models compare by identity
class Model:
    """A Markov random field over `domain`, p(x) ∝ exp(Σ_c potentials[c](x_c)), scaled to
    `total` records. Each log-potential is over a clique of `cliques` (domain order) that
    lies inside a clique of the junction tree `tree`, which answers every query."""

    domain: Domain
    tree: JunctionTree
    cliques: tuple[Clique, ...]
    potentials: tuple[np.ndarray, ...]
    total: float

    def __post_init__(self) -> None:
        if self.tree.domain != self.domain:
            raise ArgumentError("Model.tree: the junction tree is over another domain")
        cliques = tuple(tuple(c) for c in self.cliques)
        if len(self.potentials) != len(cliques):
            raise ArgumentError(
                f"Model.potentials: {len(self.potentials)} arrays for {len(cliques)} cliques")
        arrays = []
        for clique, values in zip(cliques, self.potentials, strict=True):
            if clique != self.domain.ordered(clique):
                raise ArgumentError(f"Model.cliques: {clique} is not in domain order")
            self.tree.containing(clique)
            values = np.array(values, dtype=np.float64)
            if values.shape != self.domain.shape(clique) or not np.all(np.isfinite(values)):
                raise ArgumentError(
                    f"Model.potentials of {clique}: need finite values of shape "
                    f"{self.domain.shape(clique)}, got shape {values.shape}")
            values.flags.writeable = False
            arrays.append(values)
        total = float(self.total)
        if not math.isfinite(total) or total <= 0:
            raise ArgumentError(f"Model.total: {self.total!r}; must be finite and > 0")
        object.__setattr__(self, "cliques", cliques)
        object.__setattr__(self, "potentials", tuple(arrays))
        object.__setattr__(self, "total", total)

    @functools.cached_property
    def beliefs(self) -> Beliefs:
        """The calibrated beliefs of the junction-tree cliques (computed once, read-only)."""
        beliefs = self.tree.calibrate(self.tree.collector(self.cliques)(self.potentials))
        for array in (*beliefs.log, *beliefs.prob):
            array.flags.writeable = False
        return beliefs

    def project(self, clique: Iterable[str]) -> np.ndarray:
        """The model's counts over the clique's cells (summing to `total`), shaped by the
        clique in its order. A clique no tree clique holds is answered by variable
        elimination over the smallest subtree that covers it, never via the joint."""
        clique = self.domain.check(clique)
        ordered = self.domain.ordered(clique)
        i = self.tree.find(ordered)
        if i is None:
            prob = np.exp(self._eliminate(ordered))
        else:
            inside = self.tree.cliques[i]
            away = tuple(n for n, a in enumerate(inside) if a not in ordered)
            prob = Summation(self.domain.shape(inside), away)(self.beliefs.prob[i]).reshape(
                self.domain.shape(ordered))
        return self.total * prob.transpose([ordered.index(a) for a in clique])

    def _eliminate(self, ordered: Clique) -> np.ndarray:
        """Log-marginal over `ordered` from the covering subtree's calibrated beliefs, as
        its top belief times each other clique's conditional given its separator."""
        nodes, top = self._subtree(ordered)
        factors = []
        # Cells of probability zero have log-belief -inf: their conditionals stay -inf.
        with np.errstate(divide="ignore", invalid="ignore"):
            for i in nodes:
                inside = self.tree.cliques[i]
                log = self.beliefs.log[i]
                if i != top:
                    away = tuple(n for n, a in enumerate(inside)
                                 if a not in self.tree.separator(i))
                    given = logsumexp(log, away, keepdims=True)
                    log = np.where(np.isfinite(given), log - given, -np.inf)
                factors.append(Factor(self.domain.project(inside), log))
            gone = {a for f in factors for a in f.attributes} - set(ordered)
            while gone:
                a = min(sorted(gone), key=functools.partial(_cells_touched, factors))
                touching = [f for f in factors if a in f.domain]
                factors = [f for f in factors if a not in f.domain]
                factors.append(functools.reduce(Factor.__add__, touching).marginalize((a,)))
                gone.remove(a)
        return functools.reduce(Factor.__add__, factors).transpose(ordered).values

    def _subtree(self, ordered: Clique) -> tuple[list[int], int]:
        """The smallest connected set of tree cliques covering `ordered`, and its top."""
        wanted = {self.tree.containing((a,)) for a in ordered}
        parents = self.tree.parents
        nodes: set[int] = set()
        for i in wanted:
            while i >= 0 and i not in nodes:
                nodes.add(i)
                i = parents[i]
        top = self.tree.order[0]
        while top not in wanted:
            below = [j for j in nodes if parents[j] == top]
            if len(below) != 1:
                break
            nodes.remove(top)
            top = below[0]
        return sorted(nodes), top

    def sample(self, n_rows: int, seed: int | np.random.Generator | None = None) -> np.ndarray:
        """`n_rows` synthetic records drawn from the model (an n_rows × len(domain) int64
        array of codes, columns in domain order): each tree clique in schedule order draws
        its new attributes given its separator, all rows at once. Each row's draw follows
        the model exactly; the rows that share a separator value draw together, stratified
        (`_stratified`), so their counts of each new value are the model's expected
        counts rounded up or down rather than a multinomial's: far less sampling noise in
        small releases, no false correlation between attributes drawn apart."""
        if isinstance(n_rows, bool) or not isinstance(n_rows, int | np.integer) or n_rows < 0:
            raise ArgumentError(f"n_rows={n_rows!r}; must be an integer ≥ 0")
        rng = np.random.default_rng(seed)
        # One contiguous array per attribute: gathering separator codes stays cheap.
        columns: dict[str, np.ndarray] = {}
        for i in self.tree.order:
            inside = self.tree.cliques[i]
            sep = self.tree.separator(i)
            new = tuple(a for a in inside if a not in sep)
            table = self.beliefs.prob[i].transpose([inside.index(a) for a in sep + new])
            table = table.reshape(self.domain.size(sep), self.domain.size(new))
            given = (np.ravel_multi_index([columns[a] for a in sep], self.domain.shape(sep))
                     if sep else np.zeros(int(n_rows), dtype=np.int64))
            drawn = np.unravel_index(_draw(table, given, _stratified(given, rng)),
                                     self.domain.shape(new))
            columns.update(zip(new, drawn, strict=True))
        stacked = np.stack([columns[a] for a in self.domain.attributes]).astype(np.int64,
                                                                                copy=False)
        return np.ascontiguousarray(stacked.T)


def _cells_touched(factors: list[Factor], name: str) -> int:
    """Cells of the product of the factors that hold `name`: the cost of eliminating it."""
    sizes = {a: n for f in factors if name in f.domain
             for a, n in zip(f.attributes, f.domain.sizes, strict=True)}
    return math.prod(sizes.values())


def _stratified(given: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniform on [0, 1) per row, stratified within each value of `given`: the n rows of
    a value get (k + u)/n for k = 0, …, n − 1 in random order, u one uniform for them all
    (systematic sampling). Each row's is uniform; the random order keeps one draw's
    strata from lining up with another's."""
    order = rng.permutation(len(given))
    order = order[np.argsort(given[order], kind="stable")]
    grouped = given[order]
    starts = np.flatnonzero(np.concatenate([[True], grouped[1:] != grouped[:-1]]))
    sizes = np.diff(np.append(starts, len(given)))
    rank = np.arange(len(given)) - np.repeat(starts, sizes)
    uniforms = np.empty(len(given))
    uniforms[order] = (rank + np.repeat(rng.random(len(starts)), sizes)) / np.repeat(sizes,
                                                                                      sizes)
    return uniforms


def _draw(table: np.ndarray, given: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """For each row r, the column of table[given[r], :] (as probabilities) that its uniform
    falls in. One sorted search serves all rows: row s of the table's CDF is offset by
    s·2³³ in integer keys, so every row's key lands in its own separator value's block."""
    rows, cols = table.shape
    mass = table.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        cdf = np.cumsum(table, axis=1) / mass
    # Separator values the model gives no mass are never drawn; keep their keys ordered.
    cdf[mass[:, 0] <= 0] = np.arange(1, cols + 1) / cols
    keys = np.floor(cdf * _RESOLUTION).astype(np.int64)
    keys[:, -1] = _RESOLUTION
    keys += np.arange(rows, dtype=np.int64)[:, None] << 33
    given = given.astype(np.int64)
    drawn = np.minimum(np.floor(uniforms * _RESOLUTION).astype(np.int64), _RESOLUTION - 1)
    found = np.searchsorted(keys.ravel(), (given << 33) + drawn, side="right")
    return found - given * cols
