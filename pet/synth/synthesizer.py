"""The synthesizer interface and what a fit returns.

A synthesizer spends a zCDP budget ρ — the most that the fit's (ε, δ) charge affords —
on selections and measurements through a `Measurer`, and fits a graphical model to the
noisy marginals; it never sees a row. Sampling the model is post-processing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from pet.errors import ArgumentError
from pet.mechanisms import epsilon_of, rho_of
from pet.synth.discretize import Discretization
from pet.synth.domain import Clique, Domain
from pet.synth.estimation import estimate
from pet.synth.marginal import NoisyMarginal
from pet.synth.measure import Measurer, Spend, composed
from pet.synth.model import Model


@dataclass(frozen=True)
class Fit:
    """A fitted synthesizer: its model, the measurements it was fitted to and every ρ it
    spent, within the (ε, δ) that was charged for it."""

    method: str
    model: Model
    discretization: Discretization
    measurements: tuple[NoisyMarginal, ...]
    spends: tuple[Spend, ...]
    epsilon: float
    delta: float
    trace: tuple[tuple[int, int, bool], ...] = ()
    """The estimator's calls in order, each (measurements it saw, iterations, whether it
    warm-started from the last call's model): what `replay` repeats to rebuild the
    model."""
    settings: Mapping[str, Any] = field(default_factory=dict)
    """The synthesizer's options (iterations, rounds, cell caps, ...), for its data card."""
    request: str = ""
    """The request every site charged and audited the fit under: its audit entries, the
    first with the site's data fingerprint, carry this id."""

    @property
    def rho(self) -> float:
        """The ρ (zCDP) the fit spent, every step together."""
        return composed(self.spends)

    @property
    def epsilon_spent(self) -> float:
        """The spent ρ as ε at the fit's δ (OpenDP's conversion); at most the charged ε."""
        return epsilon_of(self.rho, self.delta)

    def sample(self, rows: int, *, seed: int) -> pd.DataFrame:
        """`rows` synthetic records with the schema's columns and values inside its bounds."""
        if not isinstance(rows, int) or rows < 1:
            raise ArgumentError(f"rows must be a whole number >= 1, got {rows!r}")
        levels = self.model.sample(rows, seed)
        return self.discretization.decode(levels, seed=seed + 1)


class Synthesizer(ABC):
    """A marginal-based DP synthesizer (MST, AIM, MWEM)."""

    name: ClassVar[str]

    def __init__(self, *, iterations: int = 1000) -> None:
        if not isinstance(iterations, int) or iterations < 1:
            raise ArgumentError(f"iterations must be a whole number >= 1, got {iterations!r}")
        self.iterations = iterations
        self.trace: list[tuple[int, int, bool]] = []

    def fit(self, measurer: Measurer) -> Fit:
        """Spend the measurer's whole budget and fit the model."""
        # A hair under the whole ρ: each site's ledger rounds every spend up to its unit.
        rho = rho_of(measurer.epsilon, measurer.delta) * (1 - 1e-9)
        self.trace = []
        model, measurements = self.run(measurer, rho)
        return Fit(self.name, model, measurer.discretization, tuple(measurements),
                   tuple(measurer.spends), measurer.epsilon, measurer.delta,
                   tuple(self.trace), self.settings(), measurer.request)

    def settings(self) -> dict[str, Any]:
        """The options this synthesizer was made with, as JSON-ready values."""
        return {name: [list(c) for c in value] if isinstance(value, list | tuple) else value
                for name, value in vars(self).items() if name != "trace"}

    @staticmethod
    def prepared(measured: Sequence[NoisyMarginal]) -> list[NoisyMarginal]:
        """The measurements as the estimator reads them: as measured, unless a method
        says otherwise (AIM). The fit and its data card keep them as measured, and
        `replay` prepares them the same way."""
        return list(measured)

    def estimate(self, domain: Domain, measured: list[NoisyMarginal], iterations: int,
                 model: Model | None = None) -> Model:
        """`pet.synth.estimate` on the measurements so far, recorded in the fit's trace."""
        self.trace.append((len(measured), iterations, model is not None))
        return estimate(domain, self.prepared(measured), iterations=iterations, model=model)

    @abstractmethod
    def run(self, measurer: Measurer, rho: float) -> tuple[Model, list[NoisyMarginal]]:
        """Select and measure with at most ρ in all; the model and its measurements."""


def pairs(domain: Domain) -> list[Clique]:
    """Every 2-way clique of the domain, in domain order."""
    return list(combinations(domain.attributes, 2))


def model_marginals(model: Model, cliques: list[Clique]) -> tuple[np.ndarray, ...]:
    """The model's marginals of the cliques, flat, for selection to score."""
    return tuple(np.ravel(model.project(c)) for c in cliques)


def replay(domain: Domain, measurements: Sequence[NoisyMarginal],
           trace: Sequence[tuple[int, int, bool]],
           prepared: Callable[[Sequence[NoisyMarginal]], list[NoisyMarginal]] = list) -> Model:
    """The model a fit's estimator built, rebuilt from its measurements and its trace:
    the same calls, in order, on the measurements as its method `prepared` them, each
    warm-started from the last where it was (deterministic, so the same model on the same
    versions of pet and numpy)."""
    if not trace:
        raise ArgumentError("the fit records no estimator calls to replay")
    model: Model | None = None
    for seen, iterations, warm in trace:
        if not 0 < seen <= len(measurements):
            raise ArgumentError(f"the trace names {seen} measurements of "
                                f"{len(measurements)}")
        model = estimate(domain, prepared(measurements[:seen]), iterations=iterations,
                         model=model if warm else None)
    return model  # type: ignore[return-value]  # the trace is not empty


def traced(calls: Sequence[Sequence[Any]]) -> tuple[tuple[int, int, bool], ...]:
    """A trace read back from JSON; a call without its warm flag (an older pet's) warm-
    started unless it was the first."""
    return tuple((int(call[0]), int(call[1]), bool(call[2]) if len(call) > 2 else k > 0)
                 for k, call in enumerate(calls))
