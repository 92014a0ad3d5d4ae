"""The `dp` backend: local differential privacy — every site noises its own partial fully
before it leaves, so no party (not even the coordinator) is trusted with exact sums.

Each site's release of a query is (ε, δ)-DP for its own rows over all its rounds (OpenDP's
Laplace for δ = 0, its zCDP Gaussian otherwise, split across rounds and blocks by
`pet.mechanisms.plan`) and is charged to the site's ledger before it leaves
(`Site.contribute`). The sum of k sites' partials carries k independent noises,
k times the variance of one central release: the price of trusting no one.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from pet.backends.base import Aggregate, Backend, Limits, Privacy
from pet.backends.plaintext import decode
from pet.intervals import Spread
from pet.layout import Layout
from pet.mechanisms import (
    CONFIDENCE,
    POST_PROCESSING,
    Noise,
    check_budget,
    plan,
    whole_counts,
)

CONFIDENTIALITY = ("each site's partial carries its own DP noise; the coordinator sees "
                   f"only noisy partials; {POST_PROCESSING}")


class LocalDP(Backend):
    """Every site adds a full (ε, δ) mechanism's noise to its partial; sums in clear."""

    name = "dp"
    differentially_private = True
    suppresses_cells = True

    def __init__(self, *, epsilon: float = 1.0, delta: float = 1e-6, rho: float | None = None,
                 max_rows_per_site: int = 10**8, max_sites: int = 100) -> None:
        self.epsilon, self.delta, self.rho = check_budget(epsilon, delta, rho)
        self.limits = Limits(max_rows_per_site, max_sites)

    def cost(self) -> tuple[float, float]:
        """The (ε, δ) one site's releases of one query spend, over all its rounds."""
        return self.epsilon, self.delta

    def protect(self, partial: np.ndarray, layout: Layout) -> bytes:
        """The site's partial, clamped to the session's limits, with its round's noise
        (`pet.mechanisms.plan`), drawn by OpenDP."""
        noise = plan(layout, self.epsilon, self.delta, self.rho)
        return noise.release(self.limits.clamp(partial, layout)).astype("<f8").tobytes()

    def suppress(self, message: bytes, layout: Layout, minimum: int) -> bytes:
        """The site's noisy release with every counts-of-people cell below `minimum` set to
        0: post-processing of its own noisy release, so it costs no privacy and, unlike a
        check of the exact counts, answers nothing about the rows."""
        noisy = decode(message, layout).copy()
        cells = np.concatenate([np.full(b.size, b.cells) for b in layout.blocks])
        noisy[cells & (noisy < minimum)] = 0.0
        return noisy.astype("<f8").tobytes()

    def combine(self, messages: Sequence[bytes], layout: Layout) -> bytes:
        total = np.sum([decode(m, layout) for m in messages], axis=0)
        return struct.pack("<I", len(messages)) + total.astype("<f8").tobytes()

    def reveal(self, combined: bytes, layout: Layout) -> Aggregate:
        """The noisy sum, its counts rounded and clipped at zero (post-processing, which
        costs no privacy); each element's error bound is the half-width of a 95% interval
        for the sum of the sites' noises: exact for Gaussian noise (the sum of k is
        Gaussian with √k times the scale), by a union bound for Laplace (each site's noise
        within its 1 − 0.05/k interval, so the sum within k times that)."""
        (sites,) = struct.unpack_from("<I", combined)
        total = whole_counts(decode(combined[4:], layout), layout)
        noise = plan(layout, self.epsilon, self.delta, self.rho)
        privacy = Privacy(CONFIDENTIALITY, noise.rho, self.epsilon, self.delta)
        return Aggregate(total, _sum_accuracy(noise, sites), privacy,
                         spread=_spread(noise, sites))

    def noise_sd(self, layout: Layout, sites: int) -> np.ndarray:
        """Per element, the standard deviation of the noise on the sum of `sites` releases
        (k independent noises: √k times one's)."""
        return _spread(plan(layout, self.epsilon, self.delta, self.rho), sites).sd()


def _spread(noise: Noise, sites: int) -> Spread:
    """The noise on the sum of `sites` releases: Gaussian draws add into one Gaussian of
    √k times the scale; Laplace draws stay k draws."""
    if noise.kind == "gaussian":
        return Spread("gaussian", noise.scales() * np.sqrt(sites))
    return Spread("laplace", noise.scales(), sites)


def _sum_accuracy(noise: Noise, sites: int) -> np.ndarray:
    """Per element, the half-width of the interval holding the sum of `sites` independent
    noises with probability CONFIDENCE."""
    alpha = 1 - CONFIDENCE
    if noise.kind == "gaussian":
        return noise.accuracy(alpha) * float(np.sqrt(sites))
    return noise.accuracy(alpha / sites) * sites
