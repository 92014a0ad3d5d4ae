"""MST: a maximum spanning tree of 2-way marginals (McKenna, Miklau, Sheldon, "Winning the
NIST Contest: A scalable and general approach to differentially private synthetic data",
JPC 2021).

The budget ρ splits in thirds: every 1-way marginal measured at once; the tree's d − 1
edges chosen (by the exponential mechanism, one edge at a time among those that join two
components, scored by how badly the 1-way model gets that pair); the chosen 2-way
marginals measured at once. The model fitted to both sets of measurements is sampled.

Between the first and second step, as the paper does, each column's levels whose noisy
count is under 3σ are merged into one (post-processing of the 1-way release): on small
tables most cells of a 16-bin column hold noise alone, and the pairs then count on the
levels that carry signal. The paper samples a merged level back to its levels uniformly;
pet splits it by an empirical-Bayes estimate of their counts from the same release, so
a column whose rare levels differ by more than the noise keeps that shape.
"""

from __future__ import annotations

import math

import numpy as np

from pet.synth.domain import Clique
from pet.synth.marginal import NoisyMarginal, toward_mean
from pet.synth.measure import Candidates, Measurer
from pet.synth.model import Model
from pet.synth.synthesizer import Synthesizer, model_marginals, pairs

RARE = 3.0
"""A level whose noisy 1-way count is below this many noise sds is merged with its column's
other rare levels."""


class MST(Synthesizer):
    """1-way marginals, a spanning tree of 2-way marginals, each third of the budget;
    rare levels merged unless `compress` is False."""

    name = "mst"

    def __init__(self, *, iterations: int = 1000, compress: bool = True) -> None:
        super().__init__(iterations=iterations)
        self.compress = compress

    def run(self, measurer: Measurer, rho: float) -> tuple[Model, list[NoisyMarginal]]:
        one_way = measurer.measure([(a,) for a in measurer.domain.attributes], rho / 3)
        if self.compress:
            one_way = compressed(measurer, one_way)
        domain = measurer.domain
        model = self.estimate(domain, one_way, self.iterations)
        tree = self._tree(measurer, model, rho / 3) if len(domain) > 1 else []
        two_way = measurer.measure(tree, rho / 3) if tree else []
        measured = one_way + two_way
        return self.estimate(domain, measured, self.iterations, model=model), measured

    def _tree(self, measurer: Measurer, model: Model, rho: float) -> list[Clique]:
        """Kruskal's algorithm over the pairs, scored by how badly the 1-way model gets
        each (its L1 error, sensitivity 1). A curator picks each edge by the exponential
        mechanism among those that join two components; a federation, which cannot,
        releases every pair once with the whole selection budget and picks on those
        noisy errors (post-processing)."""
        domain = measurer.domain
        every = pairs(domain)
        current = dict(zip(every, model_marginals(model, every), strict=True))
        rounds = len(domain) - 1

        def scored(cliques: list[Clique]) -> Candidates:
            return Candidates(tuple(cliques), tuple(current[p] for p in cliques),
                              np.ones(len(cliques)), np.zeros(len(cliques)))

        if measurer.exact_selection:
            def pick(joining: list[Clique]) -> Clique:
                return joining[measurer.select(scored(joining), rho / rounds, sensitivity=1.0)]
        else:
            noisy = dict(zip(every, scored(every).scores(measurer.noisy(every, rho)),
                             strict=True))

            def pick(joining: list[Clique]) -> Clique:
                return max(joining, key=noisy.__getitem__)

        component = {a: i for i, a in enumerate(domain.attributes)}
        chosen: list[Clique] = []
        for _ in range(rounds):
            edge = pick([p for p in every if component[p[0]] != component[p[1]]])
            chosen.append(edge)
            merged, absorbed = component[edge[0]], component[edge[1]]
            component = {a: merged if c == absorbed else c for a, c in component.items()}
        return chosen


def compressed(measurer: Measurer, one_way: list[NoisyMarginal]) -> list[NoisyMarginal]:
    """Merge each column's rare levels (noisy count under RARE·σ) into one last level, for
    the measurer's later releases, as the paper does, even when no level stands out (the
    column is then one level, its pairs cost no noise); the 1-way measurements on the
    merged levels: kept cells as measured, the merged cell the sum of the rare ones
    (noise sd √k·σ for k of them). The merged level's share of each rare level is
    `shrunk`'s estimate of its count."""
    maps, shares, out = {}, {}, []
    for m in one_way:
        rare = m.values < RARE * m.sigma
        if rare.sum() < 2:  # nothing to merge: at most one level would move
            out.append(m)
            continue
        kept = int((~rare).sum())
        name = m.clique[0]
        maps[name] = tuple(np.where(rare, kept, np.cumsum(~rare) - 1).tolist())
        share = np.ones(m.values.size)
        share[rare] = shrunk(m.values[rare], m.sigma)
        shares[name] = tuple(share.tolist())
        values = np.append(m.values[~rare], m.values[rare].sum())
        scale = np.append(np.ones(kept), math.sqrt(rare.sum()))
        out.append(NoisyMarginal(m.clique, values, m.sigma, scale))
    if maps:
        measurer.merge(maps, shares)
    return out


def shrunk(noisy: np.ndarray, sigma: float) -> np.ndarray:
    """Counts of levels estimated from their noisy counts (`toward_mean`), clipped at 0,
    uniform when nothing stays above it. Levels of equal counts then split evenly, a
    skewed column keeps its skew."""
    estimate = np.maximum(toward_mean(noisy, sigma), 0.0)
    return estimate if estimate.sum() > 0 else np.ones(noisy.size)
