"""Measurement: the only step of a synthesizer that touches data.

A `Measurer` answers two questions about the sites' rows, each a DP release charged to
every site's ledger: the noisy marginals of some cliques (`measure`, a Gaussian release
of pet's `Marginals` query through a DP backend), and which of several candidate
cliques the current model gets most wrong (`select`). Both spend ρ (zCDP) from the one
(ε, δ) charge of the fit's request, and every spend is itemised.

`Curator` is one data holder (central DP): it measures through the `dp` backend at its
own site and selects by OpenDP's exponential mechanism on the exact errors, as MST and
AIM do. `Federation` is many sites under `he+dp` or `mpc+dp`: no site reveals its
marginals and each measurement carries the noise of one central release; since no party
holds the pooled errors that the exponential mechanism scores, it selects on one
Gaussian measurement of the candidates instead (the argmax of noisy errors, a
post-processing of that release).
"""

from __future__ import annotations

import math
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pet.backends import Backend, get_backend
from pet.errors import ArgumentError
from pet.mechanisms import noisy_max
from pet.queries.marginals import Marginals
from pet.site import Site
from pet.study import Study
from pet.synth.discretize import Discretization
from pet.synth.domain import Clique, Domain
from pet.synth.marginal import NoisyMarginal


@dataclass(frozen=True)
class Spend:
    """One itemised DP step of a fit: what it was, the cliques it touched, its ρ."""

    step: str  # "measure" or "select"
    cliques: tuple[Clique, ...]
    rho: float


def composed(spends: Sequence[Spend]) -> float:
    """The ρ (zCDP) of steps taken together: their ρ add up (zCDP composition)."""
    return float(sum(s.rho for s in spends))


@dataclass(frozen=True)
class Candidates:
    """What selection scores: cliques, the model's current marginals of them (counts,
    flat), a weight per clique, and a penalty per clique subtracted from its L1 error
    (AIM's expected error of measuring it)."""

    cliques: tuple[Clique, ...]
    model: tuple[np.ndarray, ...]
    weights: np.ndarray
    penalties: np.ndarray

    def scores(self, truth: Sequence[np.ndarray]) -> np.ndarray:
        """Weighted L1 error of each model marginal against `truth`, less its penalty."""
        errors = np.array([np.abs(np.ravel(t) - m).sum() for t, m in zip(truth, self.model,
                                                                         strict=True)])
        return self.weights * (errors - self.penalties)


class Measurer(ABC):
    """Measures and selects on discretized data for a synthesizer, spending ρ from one
    (ε, δ) charge per site; `spends` lists every step."""

    def __init__(self, sites: Sequence[Site], discretization: Discretization, *, backend: str,
                 epsilon: float, delta: float, request: str | None = None,
                 opener: Callable[[Backend], Study] | None = None,
                 progress: Callable[[Spend], None] | None = None, **options: object) -> None:
        if not sites and opener is None:
            raise ArgumentError("a measurer needs at least one site")
        self.sites = tuple(sites)
        self.opener = opener or (lambda made: Study(self.sites, backend=made))
        """Opens a study of the sites under a backend: in process by default; the
        coordinator opens one over the site servers."""
        self.progress = progress
        self.discretization = discretization
        self.domain: Domain = discretization.domain()
        self.backend, self.epsilon, self.delta = backend, epsilon, delta
        self.options = options
        self.request = request or uuid.uuid4().hex
        self.spends: list[Spend] = []
        self._studies: dict[float, Study] = {}

    @property
    def spent(self) -> float:
        """The ρ spent so far, every step together."""
        return composed(self.spends)

    def measure(self, cliques: Sequence[Clique], rho: float) -> list[NoisyMarginal]:
        """Noisy counts of every clique, in one Gaussian release that is ρ-zCDP."""
        measured = self._release(cliques, rho)
        self._spent(Spend("measure", tuple(cliques), rho))
        return measured

    def _release(self, cliques: Sequence[Clique], rho: float) -> list[NoisyMarginal]:
        query = self._query(cliques)
        study = self._study(rho)
        result = study.run(query, request=self.request)
        layout = query.layout(study.schema)
        sigma = layout.split(study.backend.noise_sd(layout, len(study.sites)))
        return [NoisyMarginal(c, np.ravel(v), float(sigma[f"m{i}"][0]))
                for i, (c, v) in enumerate(zip(query.cliques, result.value, strict=True))]

    exact_selection: bool = False
    """Whether `select` scores exact errors (the exponential mechanism at a curator);
    otherwise selection scores noisy counts, and a method that selects many times may
    instead release every candidate once with the whole selection budget (`noisy`)."""

    def noisy(self, cliques: Sequence[Clique], rho: float) -> list[np.ndarray]:
        """Noisy counts of the cliques for selection to score (one ρ-zCDP release,
        itemised as a selection)."""
        released = self._release(cliques, rho)
        self._spent(Spend("select", tuple(cliques), rho))
        return [m.values for m in released]

    @abstractmethod
    def select(self, candidates: Candidates, rho: float, *, sensitivity: float) -> int:
        """Index of the candidate with (privately) the highest score, spending ρ; one row
        moves each score by at most `sensitivity`."""

    def merge(self, maps: Mapping[str, Sequence[int]],
              shares: Mapping[str, Sequence[float]] | None = None) -> None:
        """Measure from now on with some columns' levels merged by public `maps` (each
        level's new level), chosen from earlier releases alone; `shares` say how a merged
        level samples back into its levels (`Discretization.merging`)."""
        self.discretization = self.discretization.merging(maps, shares)
        self.domain = self.discretization.domain()

    def close(self) -> None:
        """End every backend session the measurements opened."""
        for study in self._studies.values():
            study.close()
        self._studies.clear()

    def __enter__(self) -> Measurer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spent(self, spend: Spend) -> None:
        """Itemise one step, and report it to whoever follows the fit."""
        self.spends.append(spend)
        if self.progress is not None:
            self.progress(spend)

    def _query(self, cliques: Sequence[Clique]) -> Marginals:
        for clique in cliques:
            self.domain.check(clique)
        used = {c for clique in cliques for c in clique}
        return Marginals(tuple(cliques), {c: e for c, e in self.discretization.edges.items()
                                          if c in used},
                         {c: m for c, m in self.discretization.merged.items() if c in used})

    def _study(self, rho: float) -> Study:
        """One study per distinct ρ (a backend's noise is fixed when it is made), kept open
        for the rest of the fit."""
        if rho not in self._studies:
            backend = get_backend(self.backend, epsilon=self.epsilon, delta=self.delta,
                                  rho=rho, **self.options)
            self._studies[rho] = self.opener(backend)
        return self._studies[rho]


class Curator(Measurer):
    """One data holder's table (central DP): measured by `dp` at the site, selected by
    OpenDP's exponential mechanism on the exact errors."""

    def __init__(self, site: Site, discretization: Discretization, *, epsilon: float,
                 delta: float, request: str | None = None) -> None:
        super().__init__([site], discretization, backend="dp", epsilon=epsilon, delta=delta,
                         request=request)
        self._exact: dict[Clique, np.ndarray] = {}

    exact_selection = True

    def select(self, candidates: Candidates, rho: float, *, sensitivity: float) -> int:
        site = self.sites[0]
        query = self._query(candidates.cliques)
        # The site charges the selection like a release, before it touches the rows.
        site.charge(query, self._study(rho).backend, self.request)
        self._spent(Spend("select", query.cliques, rho))
        truth = self._counts(candidates.cliques)
        return noisy_max(candidates.scores(truth), sensitivity, rho)

    def merge(self, maps: Mapping[str, Sequence[int]],
              shares: Mapping[str, Sequence[float]] | None = None) -> None:
        super().merge(maps, shares)
        self._exact.clear()  # counted on the levels before the merge

    def _counts(self, cliques: Sequence[Clique]) -> list[np.ndarray]:
        """Exact marginals at the site, each computed once per fit (selection rounds ask
        for the same cliques again): they never leave this object unprotected."""
        new = [c for c in dict.fromkeys(cliques) if c not in self._exact]
        if new:
            site, query = self.sites[0], self._query(new)
            parts = query.layout(site.schema).split(site.partial(query))
            self._exact.update(zip(new, query.answer(parts, site.schema, None), strict=True))
        return [self._exact[c] for c in cliques]


class Federation(Measurer):
    """Sites under `he+dp` or `mpc+dp`: central-DP measurements without a curator."""

    def __init__(self, sites: Sequence[Site], discretization: Discretization, *,
                 backend: str = "he+dp", epsilon: float, delta: float,
                 request: str | None = None, opener: Callable[[Backend], Study] | None = None,
                 progress: Callable[[Spend], None] | None = None, **options: object) -> None:
        if backend not in ("he+dp", "mpc+dp"):
            raise ArgumentError(f"a federation measures under he+dp or mpc+dp, not {backend!r}")
        super().__init__(sites, discretization, backend=backend, epsilon=epsilon, delta=delta,
                         request=request, opener=opener, progress=progress, **options)

    def select(self, candidates: Candidates, rho: float, *, sensitivity: float) -> int:
        return int(np.argmax(candidates.scores(self.noisy(candidates.cliques, rho))))


def expected_error(sigma: float, cells: int) -> float:
    """Expected L1 norm of Gaussian noise of sd σ over `cells` cells: √(2/π)·σ·cells (AIM's
    penalty for measuring a clique at that noise)."""
    return math.sqrt(2 / math.pi) * sigma * cells
