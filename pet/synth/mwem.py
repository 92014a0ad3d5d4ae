"""MWEM with a graphical model: the simple baseline (Hardt, Ligett, McSherry, "A Simple and
Practical Algorithm for Differentially Private Data Release", NeurIPS 2012; with
Private-PGM's estimator in place of multiplicative weights over the full domain).

A first share of ρ measures every 1-way marginal (the starting model, and the total that
scores compare counts against); each of T rounds then splits its share evenly between
selecting the workload clique the model gets most wrong (exponential mechanism,
sensitivity 1) and measuring it.
"""

from __future__ import annotations

import numpy as np

from pet.errors import ArgumentError
from pet.synth.domain import Clique
from pet.synth.marginal import NoisyMarginal
from pet.synth.measure import Candidates, Measurer
from pet.synth.model import Model
from pet.synth.synthesizer import Synthesizer, model_marginals, pairs


class MWEM(Synthesizer):
    """T rounds of select-then-measure over the workload (all 2-way marginals)."""

    name = "mwem"

    def __init__(self, *, rounds: int | None = None, workload: list[Clique] | None = None,
                 iterations: int = 1000, round_iterations: int = 100) -> None:
        super().__init__(iterations=iterations)
        if rounds is not None and rounds < 1:
            raise ArgumentError(f"rounds must be at least 1, got {rounds!r}")
        self.rounds, self.workload = rounds, workload
        self.round_iterations = round_iterations

    def run(self, measurer: Measurer, rho: float) -> tuple[Model, list[NoisyMarginal]]:
        domain = measurer.domain
        workload = [domain.ordered(c) for c in (self.workload or pairs(domain))]
        if not workload:
            workload = [(domain.attributes[0],)]
        rounds = self.rounds or len(domain)
        share = rho / (rounds + 1)
        measured = measurer.measure([(a,) for a in domain.attributes], share)
        model = self.estimate(domain, measured, self.round_iterations)
        for _ in range(rounds):
            scored = Candidates(tuple(workload), model_marginals(model, workload),
                                np.ones(len(workload)), np.zeros(len(workload)))
            chosen = workload[measurer.select(scored, share / 2, sensitivity=1.0)]
            measured += measurer.measure([chosen], share / 2)
            model = self.estimate(domain, measured, self.round_iterations, model=model)
        return self.estimate(domain, measured, self.iterations, model=model), measured
