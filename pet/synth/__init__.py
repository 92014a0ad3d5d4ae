"""Differentially private synthetic data: marginals measured by pet's DP backends, a
graphical model fitted to them, rows sampled from it, and a data card for the release.

    fit = pet.synth.fit(workload.sites(ledgers=folder), "aim", epsilon=1.0, delta=1e-6)
    rows = fit.sample(1000, seed=0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pet.errors import ArgumentError
from pet.site import Site
from pet.synth.aim import AIM
from pet.synth.card import Release, card
from pet.synth.discretize import DEFAULT_BINS, Discretization
from pet.synth.domain import Domain
from pet.synth.estimation import estimate
from pet.synth.marginal import NoisyMarginal
from pet.synth.measure import Curator, Federation, Measurer
from pet.synth.model import Model
from pet.synth.mst import MST
from pet.synth.mwem import MWEM
from pet.synth.store import load, save
from pet.synth.synthesizer import Fit, Synthesizer

SYNTHESIZERS: dict[str, type[Synthesizer]] = {s.name: s for s in (MST, AIM, MWEM)}
"""The synthesizers by name (for the command line and the services)."""


def fit(sites: Sequence[Site], method: str = "aim", *, epsilon: float, delta: float = 1e-6,
        backend: str | None = None, bins: int = DEFAULT_BINS, **options: Any) -> Fit:
    """Fit a synthesizer to the sites' rows, charging (ε, δ) to every site's ledger: one
    site measures under `dp` (central DP), several under `he+dp` (the default) or
    `mpc+dp`, where no site reveals its marginals."""
    if method not in SYNTHESIZERS:
        raise ArgumentError(f"unknown synthesizer {method!r}; choose one of "
                            f"{sorted(SYNTHESIZERS)}")
    discretization = Discretization.of(sites[0].schema, bins=bins)
    measurer: Measurer
    if len(sites) == 1 and backend in (None, "dp"):
        measurer = Curator(sites[0], discretization, epsilon=epsilon, delta=delta)
    else:
        measurer = Federation(sites, discretization, backend=backend or "he+dp",
                              epsilon=epsilon, delta=delta)
    with measurer:
        return SYNTHESIZERS[method](**options).fit(measurer)


__all__ = ["AIM", "MST", "MWEM", "SYNTHESIZERS", "Curator", "Discretization", "Domain",
           "Federation", "Fit", "Measurer", "Model", "NoisyMarginal", "Release", "Synthesizer",
           "card", "estimate", "fit", "load", "save"]
