"""How much of ρ the 1-way marginals get: a quarter, and a second quarter where the
cliques measured after them would show less signal than noise.

The model rests on the 1-way marginals wherever the larger cliques measured later are
not measured, or are measured under more noise than signal; MST also merges the rare
levels they show. How much they deserve therefore depends on the table: on a few hundred
rows at small ε the later cliques hold mostly noise, the model is little more than its
columns, and budget spent on the columns pays; on thousands of rows, or at large ε, the
columns are measured well already and a larger share only adds noise to the cliques.

The first measurement says which case holds (post-processing of a release): the rows n̂
estimated from the columns' noisy totals (`estimate_total`), against the noise σ at which
each of the workload's cliques (every pair, by default) would be measured were the budget
left for measuring split evenly between them. Where n̂ < c̄·σ, c̄ their average number of cells,
their average cell would hold less count than noise; the columns are then measured again
with as much, which pooled with the first (`pool`) is one measurement with half of ρ, the
share OpenDP's MST and AIM spend on them. MST measures only d − 1 of the pairs and AIM
some more, but the model's other pairs rest on the columns: the test asks about all.

On the four held-out tables of the README's synthesizer benchmark (ten fits a cell, mean
2-way TVD), AIM with this rule against a fixed quarter: diabetes 0.554 → 0.512 at ε = 0.3,
0.409 → 0.388 at 1, 0.275 → 0.259 at 3; lymph_node 0.418 → 0.351, 0.212 → 0.195 and
0.115 → 0.105; kidney_transplant 0.197 → 0.171 at 0.3 and 0.102 → 0.093 at 1; within the
spread in the other eight cells, where the signal stood above the noise. A fixed half
did as well where the rule doubles and cost where it does not (kidney_transplant at
ε = 10 0.031 → 0.035, RAND at ε = 1 0.015 → 0.017).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from pet.errors import ArgumentError
from pet.mechanisms import MIN_RHO
from pet.synth.domain import Clique
from pet.synth.estimation import estimate_total
from pet.synth.marginal import NoisyMarginal
from pet.synth.measure import Measurer

ONEWAY_SHARE = 0.25
"""The share of ρ that measures every 1-way marginal first; as much again where the
signal is faint."""


def measure_columns(measurer: Measurer, rho: float, share: float, workload: Sequence[Clique],
                    measuring: Callable[[float], float]) -> tuple[list[NoisyMarginal], bool]:
    """Every column's 1-way marginal, measured with `share` of ρ, and again with as much
    where the signal is faint: where the workload's cliques, each measured with an even
    part of the budget left for measuring (`measuring` maps the ρ left to it), would hold
    less count in their average cell than noise. Returns the releases and whether the
    signal was faint."""
    columns = [(a,) for a in measurer.domain.attributes]
    measured = measurer.measure(columns, share * rho)
    cells = float(np.mean([measurer.domain.size(c) for c in workload]))
    sigma = math.sqrt(len(workload) / (2 * measuring(rho - measurer.spent)))
    faint = estimate_total(measured) < cells * sigma
    if faint:
        measured += measurer.measure(columns, share * rho)
    return measured, faint


def affordable(rho: float, least: float, step: str) -> None:
    """Refuse, before anything is measured or charged, a fit whose smallest planned step
    (`least` of ρ, for `step`) would spend less than a release may (MIN_RHO)."""
    if least < MIN_RHO:
        raise ArgumentError(f"a fit with ρ = {rho:.3g} would spend {least:.3g} on {step}, "
                            f"under the least a release may spend ({MIN_RHO:g}); raise ε")


def pooled(measured: Sequence[NoisyMarginal]) -> list[NoisyMarginal]:
    """The measurements with each clique's measured more than once pooled into one
    (`pool`), in the order of each clique's first."""
    groups: dict[tuple[str, ...], list[NoisyMarginal]] = {}
    for m in measured:
        groups.setdefault(m.clique, []).append(m)
    return [pool(group) for group in groups.values()]


def pool(measured: Sequence[NoisyMarginal]) -> NoisyMarginal:
    """Measurements of one clique as one: each cell their inverse-variance weighted mean,
    with noise sd (Σ sd⁻²)^(-1/2); an exact one (σ = 0) where there is one."""
    sizes = {m.values.size for m in measured}
    if len(sizes) > 1:
        raise ArgumentError(f"measurements of {measured[0].clique} count {sorted(sizes)} "
                            "cells: they measure different levels and cannot be pooled")
    exact = [m for m in measured if m.sigma == 0]
    if exact or len(measured) == 1:
        return (exact or list(measured))[0]
    weights = [m.sd**-2 for m in measured]
    total = sum(weights)
    values = sum(w * m.values for w, m in zip(weights, measured, strict=True)) / total
    sd = total**-0.5
    sigma = float(sd.max())
    scale = None if np.allclose(sd, sigma, rtol=1e-12, atol=0) else sd / sigma
    return NoisyMarginal(measured[0].clique, values, sigma, scale)
