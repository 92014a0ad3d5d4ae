"""MST: a maximum spanning tree of 2-way marginals (McKenna, Miklau, Sheldon, "Winning the
NIST Contest: A scalable and general approach to differentially private synthetic data",
JPC 2021).

Every 1-way marginal is measured at once; the tree's d − 1 edges are chosen (by the
exponential mechanism, one edge at a time among those that join two components, scored by
how badly the 1-way model gets that pair); the chosen 2-way marginals are measured at
once. The model fitted to both sets of measurements is sampled.

The paper splits ρ in thirds. pet gives the 1-way marginals a quarter, or half where
the pairs would be measured under more noise than signal (`pet.synth.allocation`), the
selection 5% (`SELECT_SHARE`, as OpenDP's MST) and the pairs the rest. A pair's score is
its L1 error in counts, which one row moves by at most 1: where the scores that tell
pairs apart are much larger than the exponential mechanism's slack, a small budget picks
the same tree, and where they are far smaller (a few hundred rows at small ε) no budget
within reach picks well, so the budget measures instead. In between a third picks
better, which the marginals barely show but a model of one column may: on lymph_node at
ε = 1 the TSTR AUC of the README's benchmark fell from 0.87 (three fits) to 0.74 ± 0.16
(ten), its 2-way TVD went from 0.218 to 0.214. On the README's four held-out tables
(ten fits a cell, 2-way TVD against the thirds' three to ten) this did as well or better
in fifteen of the sixteen cells: lymph_node 0.408 → 0.342 at ε = 0.3 and 0.133 → 0.114
at 3, diabetes 0.452 → 0.428 at 1, kidney_transplant 0.068 → 0.055 at 3; diabetes at
ε = 0.3 is the exception, within the spread (0.521 ± 0.019 over three, 0.524 over ten).
A split derived from the two errors was tried and is not used: each pick falls short of
the best score by about ln K Gumbel scales and each pair is off by √(2/π)·σ·c, both
falling as ρ^-½, which puts 10–17% of the tree's budget on selection. Over twenty to
thirty fits a cell it won lymph_node's TSTR AUC at ε = 1 (0.84 ± 0.01 against
0.71 ± 0.03) and lost 2-way TVD wherever the signal is faint (diabetes at ε = 0.3
0.554 against 0.535, kidney_transplant at ε = 0.3 0.204 against 0.189, at ε = 1 0.121
against 0.117): how much to spend telling pairs apart trades the marginals against a
model of one column, and 5% keeps the marginals.

A federation cannot run the exponential mechanism: it releases every pair once and picks
on those noisy counts, whose noise grows with the number of pairs, not the log of it.
There 5% left the tree blind where the signal is strong (lymph_node at ε = 10: TSTR AUC
0.74 against 0.88 with a third; ten fits each), so a federation selects with a third
(`NOISY_SELECT_SHARE`) unless the signal is faint, where no share in reach lets it see
and 5% measured better (kidney_transplant at ε = 1: 2-way TVD 0.119 against 0.138).

Between the 1-way release and the selection, as the paper does, each column's levels
whose noisy count is under 3σ are merged into one (post-processing of the 1-way release):
on small tables most cells of a 16-bin column hold noise alone, and the pairs then count
on the levels that carry signal. The paper samples a merged level back to its levels
uniformly; pet splits it by an empirical-Bayes estimate of their counts from the same
release, so a column whose rare levels differ by more than the noise keeps that shape.
"""

from __future__ import annotations

import math

import numpy as np

from pet.synth.allocation import ONEWAY_SHARE, affordable, measure_columns, pooled
from pet.synth.domain import Clique
from pet.synth.marginal import NoisyMarginal, toward_mean
from pet.synth.measure import Candidates, Measurer
from pet.synth.model import Model
from pet.synth.synthesizer import Synthesizer, model_marginals, pairs

SELECT_SHARE = 0.05
"""The share of ρ that selects the tree (see the module's docstring)."""
NOISY_SELECT_SHARE = 1 / 3
"""The share that selects it on one release of every pair (a federation's selection),
unless the signal is faint (see the module's docstring)."""
RARE = 3.0
"""A level whose noisy 1-way count is below this many noise sds is merged with its column's
other rare levels."""


class MST(Synthesizer):
    """1-way marginals, a spanning tree of 2-way marginals (see the module's docstring for
    the budget's split); rare levels merged unless `compress` is False."""

    name = "mst"

    def __init__(self, *, iterations: int = 1000, compress: bool = True) -> None:
        super().__init__(iterations=iterations)
        self.compress = compress

    def run(self, measurer: Measurer, rho: float) -> tuple[Model, list[NoisyMarginal]]:
        domain = measurer.domain
        if len(domain) == 1:  # no pairs: the column takes the whole budget
            one_way = measurer.measure([(domain.attributes[0],)], rho)
            return self.estimate(domain, one_way, self.iterations), one_way
        # The faint test asks about the pairs' budget were the signal strong.
        strong = SELECT_SHARE * rho if measurer.exact_selection else NOISY_SELECT_SHARE * rho
        picks = len(domain) - 1 if measurer.exact_selection else 1
        affordable(rho, SELECT_SHARE * rho / picks, "each of the tree's selections")
        released, faint = measure_columns(measurer, rho, ONEWAY_SHARE, pairs(domain),
                                          lambda left: left - strong)
        one_way = pooled(released)
        select = SELECT_SHARE * rho if faint else strong
        if self.compress:
            one_way = compressed(measurer, one_way)
        domain = measurer.domain
        model = self.estimate(domain, one_way, self.iterations)
        tree = self._tree(measurer, model, select)
        two_way = measurer.measure(tree, rho - measurer.spent)
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
