"""MST: a maximum spanning tree of 2-way marginals (McKenna, Miklau, Sheldon, "Winning the
NIST Contest: A scalable and general approach to differentially private synthetic data",
JPC 2021).

The budget ρ splits in thirds: every 1-way marginal measured at once; the tree's d − 1
edges chosen (by the exponential mechanism, one edge at a time among those that join two
components, scored by how badly the 1-way model gets that pair); the chosen 2-way
marginals measured at once. The model fitted to both sets of measurements is sampled.
"""

from __future__ import annotations

import numpy as np

from pet.synth.domain import Clique
from pet.synth.estimation import estimate
from pet.synth.marginal import NoisyMarginal
from pet.synth.measure import Candidates, Measurer
from pet.synth.model import Model
from pet.synth.synthesizer import Synthesizer, model_marginals, pairs


class MST(Synthesizer):
    """1-way marginals, a spanning tree of 2-way marginals, each third of the budget."""

    name = "mst"

    def run(self, measurer: Measurer, rho: float) -> tuple[Model, list[NoisyMarginal]]:
        domain = measurer.domain
        one_way = measurer.measure([(a,) for a in domain.attributes], rho / 3)
        model = estimate(domain, one_way, iterations=self.iterations)
        tree = self._tree(measurer, model, rho / 3) if len(domain) > 1 else []
        two_way = measurer.measure(tree, rho / 3) if tree else []
        measured = one_way + two_way
        return estimate(domain, measured, iterations=self.iterations, model=model), measured

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
