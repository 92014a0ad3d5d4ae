"""The `dp` backend: local differential privacy — every site noises its own partial fully
before it leaves, so no party (not even the coordinator) is trusted with exact sums.

Each site's release is (ε, δ)-DP for its own rows (OpenDP's Laplace for δ = 0, its zCDP
Gaussian otherwise, see `pet.mechanisms`) and is charged to the site's ledger before it
leaves (`Site.contribute`). The sum of k sites' partials carries k independent noises,
k times the variance of one central release: the price of trusting no one.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from pet.backends.base import Aggregate, Backend, Limits, Privacy
from pet.backends.plaintext import decode
from pet.layout import Layout
from pet.mechanisms import (
    CONFIDENCE,
    POST_PROCESSING,
    Mechanism,
    check_budget,
    release_mechanism,
    whole_counts,
)

CONFIDENTIALITY = ("each site's partial carries its own DP noise; the coordinator sees "
                   f"only noisy partials; {POST_PROCESSING}")


class LocalDP(Backend):
    """Every site adds a full (ε, δ) mechanism's noise to its partial; sums in clear."""

    name = "dp"
    differentially_private = True

    def __init__(self, *, epsilon: float = 1.0, delta: float = 1e-6, rho: float | None = None,
                 max_rows_per_site: int = 10**8, max_sites: int = 100) -> None:
        self.epsilon, self.delta, self.rho = check_budget(epsilon, delta, rho)
        self.limits = Limits(max_rows_per_site, max_sites)

    def cost(self) -> tuple[float, float]:
        """The (ε, δ) one site's release of one round spends."""
        return self.epsilon, self.delta

    def protect(self, partial: np.ndarray, layout: Layout) -> bytes:
        """The site's partial, clamped to the session's limits, with its mechanism's noise,
        drawn by OpenDP."""
        mechanism = release_mechanism(layout, self.epsilon, self.delta, self.rho)
        return mechanism.release(self.limits.clamp(partial, layout)).astype("<f8").tobytes()

    def combine(self, messages: Sequence[bytes], layout: Layout) -> bytes:
        total = np.sum([decode(m, layout) for m in messages], axis=0)
        return struct.pack("<I", len(messages)) + total.astype("<f8").tobytes()

    def reveal(self, combined: bytes, layout: Layout) -> Aggregate:
        """The noisy sum, its counts rounded and clipped at zero (post-processing, which
        costs no privacy); its error bound is the half-width of a 95% interval for the sum
        of the sites' noises: exact for Gaussian noise (the sum of k is Gaussian with √k
        times the scale), by a union bound for Laplace (each site's noise within its
        1 − 0.05/k interval, so the sum within k times that)."""
        (sites,) = struct.unpack_from("<I", combined)
        total = whole_counts(decode(combined[4:], layout), layout)
        mechanism = release_mechanism(layout, self.epsilon, self.delta, self.rho)
        bound = _sum_accuracy(mechanism, sites)
        privacy = Privacy(CONFIDENTIALITY, mechanism.rho, mechanism.epsilon, self.delta)
        return Aggregate(total, np.full(layout.size, bound), privacy)


    def noise_sd(self, layout: Layout, sites: int) -> float:
        """Standard deviation of the noise on each element of the sum of `sites` releases
        (k independent noises: √k times one's)."""
        mechanism = release_mechanism(layout, self.epsilon, self.delta, self.rho)
        spread = mechanism.scale * (1.0 if mechanism.kind == "gaussian" else np.sqrt(2.0))
        return float(spread * np.sqrt(sites))


def _sum_accuracy(mechanism: Mechanism, sites: int) -> float:
    """Half-width of the interval holding the sum of `sites` independent noises of the
    mechanism with probability CONFIDENCE."""
    alpha = 1 - CONFIDENCE
    if mechanism.kind == "gaussian":
        return mechanism.accuracy(alpha) * float(np.sqrt(sites))
    return mechanism.accuracy(alpha / sites) * sites
