"""AIM: an adaptive, iterative mechanism for workload marginals (McKenna, Mullins, Sheldon,
Miklau, "AIM: An Adaptive and Iterative Mechanism for Differentially Private Synthetic
Data", VLDB 2022, Algorithm 1).

It measures every 1-way marginal, then, round by round, selects (exponential mechanism)
the clique of the workload's downward closure whose model marginal is worst relative to
the noise of measuring it, measures it, and re-fits the model from the last one (warm
start). A round whose measurement barely moved the model halves the next rounds' noise
and doubles their selection's ε (four times the ρ of each); the last round spends what
is left. Candidates are limited to those that keep the model's junction tree within a
size that grows with the budget spent.

Two steps are pet's, not the paper's. The first is the 1-way measurements' budget: a
share of ρ (`oneway_share`, a quarter, twice that where the pairs would be measured under
more noise than signal: `pet.synth.allocation`), where the paper measures them at the
noise of one of its T = 16·d rounds (1/16 of the measurement budget). The annealing ends a run
after far fewer rounds than T: 1.5 to 5 per attribute on the tables measured (10 to 53
rounds where T is 96 to 192). The paper's 1-way measurements are then much noisier than
the rounds actually run, and on a small table at small ε, where the model is little more
than its 1-way marginals, that noise is most of its error. Had the 1-ways the noise of
the R rounds per attribute a run realises, they would take 1/R of the budget, a fifth
to two thirds. In the README's benchmarks (2-way TVD, the paper's split → a quarter):
scikit-learn's breast cancer table at ε = 1 0.586 → 0.476, diabetes progression at ε = 1
0.444 → 0.409; at most +0.008 where the columns were well measured already. Half, as
OpenDP's AIM spends, gained more on the small tables at small ε and lost where the
signal is strong (kidney transplants at ε = 10: 0.031 → 0.035): the second quarter is
spent only where the first measurement shows the signal faint.

The second: the estimator reads every 1-way measurement as its empirical-Bayes estimate
(`NoisyMarginal.shrunk`; the fit records the measurement as released). At small ε a
column's noisy counts are mostly noise, and the model that fits them best piles the rows
onto the few levels the noise raised: on diabetes progression (442 × 11) at ε = 0.3,
with the paper's split, AIM's synthetic 1-way marginals were further from the real ones
(TVD 0.51) than the uniform distribution is (0.31). The estimate keeps what stands out
of the noise and nothing else, and changes nothing where the counts differ by far more
than the noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations

import numpy as np

from pet.errors import ArgumentError
from pet.synth.allocation import ONEWAY_SHARE, affordable, measure_columns, pooled
from pet.synth.domain import Clique, Domain
from pet.synth.junction_tree import junction_tree
from pet.synth.marginal import NoisyMarginal
from pet.synth.measure import Candidates, Measurer, expected_error
from pet.synth.model import Model
from pet.synth.synthesizer import Synthesizer, model_marginals, pairs

MAX_CELLS = 10**7
"""The largest model AIM may grow to, in junction-tree cells (80 MB of float64 beliefs)."""


class AIM(Synthesizer):
    """Workload-adaptive selection and measurement, re-fitting the model every round."""

    name = "aim"

    def __init__(self, *, workload: list[Clique] | None = None, rounds_per_attribute: int = 16,
                 max_cells: int = MAX_CELLS, iterations: int = 1000,
                 round_iterations: int = 100, oneway_share: float = ONEWAY_SHARE) -> None:
        super().__init__(iterations=iterations)
        if rounds_per_attribute < 1 or max_cells < 1 or round_iterations < 1:
            raise ArgumentError("rounds_per_attribute, max_cells and round_iterations must "
                                "be at least 1")
        if isinstance(oneway_share, bool) or not isinstance(oneway_share, int | float) \
                or not 0 < oneway_share < 0.5:
            raise ArgumentError(f"oneway_share={oneway_share!r}; must lie strictly between "
                                "0 and 0.5 (twice it is spent where the signal is faint)")
        self.workload = workload
        self.rounds_per_attribute = rounds_per_attribute
        self.max_cells = max_cells
        self.round_iterations = round_iterations
        self.oneway_share = oneway_share

    @staticmethod
    def prepared(measured: Sequence[NoisyMarginal]) -> list[NoisyMarginal]:
        """Each column's 1-way measurements pooled (inverse-variance) into one, read as
        its empirical-Bayes estimate (see the module's docstring); the others as
        measured."""
        return [m.shrunk() if len(m.clique) == 1 else m for m in pooled(measured)]

    def run(self, measurer: Measurer, rho: float) -> tuple[Model, list[NoisyMarginal]]:
        domain = measurer.domain
        workload = self.workload or pairs(domain) or [(domain.attributes[0],)]
        candidates, weights = closure(domain, workload)
        rounds = self.rounds_per_attribute * len(domain)
        # The first round's selection, the smallest step, after a second column release.
        affordable(rho, 0.1 * (1 - 2 * self.oneway_share) * rho / rounds,
                   "the first round's selection")
        measured, _ = measure_columns(measurer, rho, self.oneway_share, workload,
                                      lambda left: 0.9 * left)
        used = measurer.spent
        left = rho - used
        sigma, epsilon = math.sqrt(rounds / (2 * 0.9 * left)), math.sqrt(8 * 0.1 * left / rounds)
        model = self.estimate(domain, measured, self.round_iterations)
        while rho - used > 1e-6 * rho:
            left = rho - used
            if left < 2 * (1 / (2 * sigma**2) + epsilon**2 / 8):  # the last round
                left *= 1 - 1e-7  # headroom for the ledgers' rounding up
                sigma, epsilon = math.sqrt(1 / (2 * 0.9 * left)), math.sqrt(8 * 0.1 * left)
            cap = self.max_cells * (used + 1 / (2 * sigma**2) + epsilon**2 / 8) / rho
            allowed = _fitting(domain, [m.clique for m in measured], candidates, cap)
            chosen = self._select(measurer, model, allowed, weights, sigma, epsilon)
            new = measurer.measure([chosen], 1 / (2 * sigma**2))
            measured += new
            used = measurer.spent
            before = np.ravel(model.project(chosen))
            model = self.estimate(domain, measured, self.round_iterations, model=model)
            moved = np.abs(np.ravel(model.project(chosen)) - before).sum()
            # A 1-way measurement that is mostly noise is shrunk and moves the model
            # little: the budget then grows, as it should where a round told little.
            if moved <= expected_error(new[0].sigma, domain.size(chosen)):
                sigma, epsilon = sigma / 2, 2 * epsilon  # each part's ρ times 4
        # The last fit starts afresh: potentials carried through every round's short fit
        # converge slower than a fresh start (on lung at ε = 1 its loss stayed 0.3 above
        # the optimum after 1 000 iterations, which a fresh start reaches).
        return self.estimate(domain, measured, self.iterations), measured

    def _select(self, measurer: Measurer, model: Model, allowed: list[Clique],
                weights: dict[Clique, float], sigma: float, epsilon: float) -> Clique:
        """The exponential mechanism over the allowed candidates, each scored by its
        weighted L1 error less the error measuring it at σ would bring (the paper's
        penalty; the release's noisy n takes a negligible part of its ρ)."""
        weight = np.array([weights[c] for c in allowed])
        penalty = np.array([expected_error(sigma, measurer.domain.size(c)) for c in allowed])
        scored = Candidates(tuple(allowed), model_marginals(model, allowed), weight, penalty)
        return allowed[measurer.select(scored, epsilon**2 / 8, sensitivity=float(weight.max()))]


def closure(domain: Domain, workload: list[Clique]) -> tuple[list[Clique], dict[Clique, float]]:
    """Every non-empty subset of a workload clique (in domain order), weighted by how many
    workload attributes it covers: w_r = Σ_s |r ∩ s| (AIM's weights, workload weights 1)."""
    cliques = [domain.ordered(c) for c in workload]
    subsets = {domain.ordered(s) for c in cliques for k in range(1, len(c) + 1)
               for s in combinations(c, k)}
    weights = {r: float(sum(len(set(r) & set(s)) for s in cliques)) for r in subsets}
    return sorted(subsets, key=lambda r: (len(r), r)), weights


def _fitting(domain: Domain, measured: list[Clique], candidates: list[Clique],
             cap: float) -> list[Clique]:
    """The candidates whose measurement keeps the model's junction tree within `cap` cells;
    one that lies inside a clique of the current tree leaves the tree as it is."""
    cliques = list(dict.fromkeys(domain.ordered(c) for c in measured))
    current = junction_tree(domain, cliques)
    return [c for c in candidates
            if (current.cells <= cap if current.find(c) is not None
                else _fits(domain, cliques, c, cap))]


def _fits(domain: Domain, measured: list[Clique], candidate: Clique, cap: float) -> bool:
    """Whether adding the candidate keeps the model's junction tree within `cap` cells."""
    try:
        tree = junction_tree(domain, [*measured, candidate])
    except ArgumentError:  # one of its cliques alone exceeds the hard limit
        return False
    return tree.cells <= cap
