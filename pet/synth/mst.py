"""MST: a maximum spanning tree of 2-way marginals (McKenna, Miklau, Sheldon, "Winning the
NIST Contest: A scalable and general approach to differentially private synthetic data",
JPC 2021).

The budget ρ splits in thirds: every 1-way marginal measured at once; the tree's d − 1
edges chosen one at a time (by the exponential mechanism, each an edge that joins two
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
        """Kruskal's algorithm with each edge picked privately among those that join two
        components, by the 1-way model's L1 error on the pair (sensitivity 1)."""
        domain = measurer.domain
        component = {a: i for i, a in enumerate(domain.attributes)}
        every = pairs(domain)
        current = dict(zip(every, model_marginals(model, every), strict=True))
        chosen: list[Clique] = []
        for _ in range(len(domain) - 1):
            joining = [p for p in every if component[p[0]] != component[p[1]]]
            candidates = Candidates(tuple(joining), tuple(current[p] for p in joining),
                                    np.ones(len(joining)), np.zeros(len(joining)))
            edge = joining[measurer.select(candidates, rho / (len(domain) - 1),
                                           sensitivity=1.0)]
            chosen.append(edge)
            merged, absorbed = component[edge[0]], component[edge[1]]
            component = {a: merged if c == absorbed else c for a, c in component.items()}
        return chosen
