"""The `he+dp` and `mpc+dp` backends: central-DP accuracy without a trusted curator.

Each of the k sites adds its share of the noise — Gaussian with scale σ/√k, drawn by
OpenDP — to its partial before encrypting or secret-sharing it; the shares add up to
exactly the Gaussian noise N(0, σ²) that a trusted curator would add once to the sum
(σ calibrated by OpenDP per block of the layout, `pet.mechanisms.plan`, for the asked
(ε, δ) under zCDP).
Nobody ever sees a sum without that noise, so the noisy sum may be revealed and
finalized in the clear.

Collusion: a coalition of c sites knows its own shares and can subtract them; what is
left is Gaussian with variance σ²·(k − c)/k, so towards the coalition the release is
ρ·k/(k − c)-zCDP instead of ρ. The coordinator and the analyst learn nothing more.
"""

from __future__ import annotations

import copy
import struct
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np

from pet.backends.base import Aggregate, Backend, Privacy
from pet.backends.he import HE
from pet.backends.mpc import MPC
from pet.errors import ArgumentError, PetError
from pet.intervals import Spread
from pet.layout import Layout
from pet.mechanisms import (
    CONFIDENCE,
    POST_PROCESSING,
    check_budget,
    plan,
    whole_counts,
)


class CentralDP(Backend):
    """Sites add Gaussian noise shares, then the inner backend sums under encryption."""

    differentially_private = True
    shares_noise = True
    inner: ClassVar[type[Backend]]

    def __init__(self, *, epsilon: float = 1.0, delta: float = 1e-6, rho: float | None = None,
                 sites: int = 0, **options: object) -> None:
        if delta == 0:
            raise ArgumentError(f"{self.name} needs δ > 0: its sites share Gaussian noise, which "
                           "splits exactly; Laplace noise (pure ε-DP) does not")
        self.epsilon, self.delta, self.rho = check_budget(epsilon, delta, rho)
        self.backend = self.inner(**options)
        self.sites = sites
        """Number of sites, each adding 1/sites of the noise variance: set by `open`, or
        given where a site's server protects its partial without opening a session."""

    def at_rho(self, rho: float) -> CentralDP:
        """This backend with its keys and sites, for a release that spends `rho` of its
        (ε, δ): the analyst of a synthesizer's fit reveals each release with its own ρ."""
        other = copy.copy(self)
        other.epsilon, other.delta, other.rho = check_budget(self.epsilon, self.delta, rho)
        return other

    @property
    def startup_s(self) -> float:  # type: ignore[override]
        return self.backend.startup_s

    @property
    def session_bytes(self) -> int:
        return self.backend.session_bytes

    def open(self, n_sites: int) -> None:
        """Fix the number of sites (each adds 1/k of the noise variance) and open the
        inner backend's session."""
        self.sites = n_sites
        self.backend.open(n_sites)

    def close(self) -> None:
        self.backend.close()

    def cost(self) -> tuple[float, float]:
        return self.epsilon, self.delta

    def protect(self, partial: np.ndarray, layout: Layout) -> bytes:
        """The partial plus this site's share of the round's noise, protected by the inner
        backend (counts travel as real numbers: with noise they are no longer whole). The
        partial and the noisy partial are clamped to the session's limits, never refused:
        the inner backend then has nothing left to refuse that depends on the rows."""
        if self.sites < 1:
            raise PetError(f"{self.name} must be opened with the number of sites first")
        noise = plan(layout, self.epsilon, self.delta, self.rho)
        limits = self.backend.limits
        noisy = noise.share(self.sites).release(limits.clamp(partial, layout))
        return self.backend.protect(limits.clamp(noisy, layout), _real(layout))

    def combine(self, messages: Sequence[bytes], layout: Layout) -> bytes:
        return struct.pack("<I", self.sites) + self.backend.combine(messages, _real(layout))

    def reveal(self, combined: bytes, layout: Layout) -> Aggregate:
        """The noisy sum, its counts rounded and clipped at zero (post-processing); each
        element's error bound adds the inner backend's to the central noise's 95%
        half-width."""
        aggregate = self.backend.reveal(combined[4:], _real(layout))
        total = whole_counts(aggregate.total, layout)
        noise = plan(layout, self.epsilon, self.delta, self.rho)
        bounds = aggregate.error_bounds + noise.accuracy(1 - CONFIDENCE)
        privacy = Privacy(f"{aggregate.privacy.confidentiality}; the sum carries central "
                          f"DP noise that the sites added in shares; {POST_PROCESSING}",
                          noise.rho, self.epsilon, self.delta)
        return Aggregate(total, bounds, privacy, aggregate.site_bytes, aggregate.comm_rounds,
                         spread=Spread("gaussian", noise.scales()))

    def noise_sd(self, layout: Layout, sites: int) -> np.ndarray:
        """Per element, the standard deviation of the central noise on the revealed sum
        (the sites' shares add up to one mechanism's noise, whatever their number)."""
        return plan(layout, self.epsilon, self.delta, self.rho).scales()


def _real(layout: Layout) -> Layout:
    """The layout with its counts treated as real sums (noise makes them fractional)."""
    return replace(layout, blocks=tuple(replace(b, integer=False) for b in layout.blocks))


class HEDP(CentralDP):
    """`he` with noise shares: the analyst decrypts only the noisy sum."""

    name = "he+dp"
    inner = HE


class MPCDP(CentralDP):
    """`mpc` with noise shares: the parties reveal only the noisy sum."""

    name = "mpc+dp"
    inner = MPC

    def programs(self, query: Any, schema: Any, state: Any) -> dict[str, dict[str, Any]]:
        """share_sum of the noisy partials (counts as real sums), then reveal_sum."""
        layout = _real(query.layout(schema, state))
        return {"share_sum": self.backend.share_public(layout),  # type: ignore[attr-defined]
                "reveal_sum": {}}
