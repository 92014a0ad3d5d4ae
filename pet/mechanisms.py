"""Differential-privacy mechanisms for query layouts, calibrated and sampled by OpenDP.

A layout states how much one row can change its vector (L1 and L2 sensitivity, from the
schema's public bounds). The analyst asks for ε (and δ); OpenDP finds the noise scale:
Laplace noise for pure ε-DP (δ = 0), Gaussian noise under ρ-zCDP otherwise, reported as
ρ and as the (ε, δ) it implies. All noise is drawn by OpenDP's samplers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from opendp import accuracy, combinators, domains, measurements, measures, metrics, mod

from pet.errors import ArgumentError, PetError
from pet.layout import Layout

mod.enable_features("contrib")

CONFIDENCE = 0.95
"""The coverage of the accuracy intervals every DP result carries."""
MIN_EPSILON = 1e-3
"""The smallest ε a query may ask for: below it every answer is noise for any cohort a
site holds, and a ledger's whole-unit rounding (10⁻¹⁵ ρ per release) would no longer be
negligible next to its cost (ε²/2 = 5·10⁻⁷ at the least)."""
MIN_RHO = 1e-9
"""The smallest ρ one release of a synthesizer's fit may spend, for the same reasons."""
MAX_EPSILON = 1e4
"""The largest ε (and ρ) a release may ask for. Past ε ≈ 50 the bound e^ε on how much one
row can shift any outcome's odds already protects nothing; 10^4 still lets benchmarks
approach the noiseless answer, while keeping every noise scale a normal float (ε = 1e308
would ask OpenDP for a scale of 1e-308, below which floats lose their precision)."""
POST_PROCESSING = ("answers post-processed for consistency at no privacy cost: whole "
                   "non-negative counts, histograms and tables adding up to the noisy n, "
                   "survival monotone in [0, 1], positive semi-definite covariance")
"""What DP results say about the post-processing their queries apply to noisy sums."""


@dataclass(frozen=True)
class Mechanism:
    """Noise for one release of a layout's vector: its kind, scale and guarantee."""

    kind: str  # "laplace" or "gaussian"
    scale: float
    sensitivity: float
    size: int
    epsilon: float
    delta: float
    rho: float | None = None

    def release(self, vector: np.ndarray) -> np.ndarray:
        """The vector with this mechanism's noise, drawn by OpenDP."""
        if vector.shape != (self.size,):
            raise PetError(f"a vector of shape {vector.shape} does not fit a mechanism for "
                           f"{self.size} elements")
        return np.asarray(self.measurement()(vector.astype(np.float64).tolist()))

    def measurement(self) -> mod.Measurement:
        """The OpenDP measurement (its privacy map is the guarantee)."""
        return _measurement(self.kind, self.size, self.scale)

    def share(self, parties: int) -> Mechanism:
        """Each of `parties` independent shares of this Gaussian noise (scale σ/√k): their
        sum is exactly this mechanism's noise. Laplace noise has no such split in OpenDP."""
        if self.kind != "gaussian":
            raise PetError("noise shared among sites must be Gaussian: ask for δ > 0 (the "
                           "Laplace noise of pure ε-DP does not split exactly into shares)")
        return replace(self, scale=self.scale / math.sqrt(parties))

    def accuracy(self, alpha: float = 1 - CONFIDENCE) -> float:
        """Half-width a of the interval that holds each element's noise with probability
        1 − alpha: P(|noise| > a) = alpha (OpenDP's accuracy utilities)."""
        if self.kind == "laplace":
            return float(accuracy.laplacian_scale_to_accuracy(self.scale, alpha))
        return float(accuracy.gaussian_scale_to_accuracy(self.scale, alpha))


@dataclass(frozen=True)
class Noise:
    """One release's noise over a whole layout: a mechanism per non-empty block, each drawn
    by OpenDP on its own block. The blocks' guarantees compose (ρ adds under zCDP, ε under
    pure DP) to the release's."""

    mechanisms: tuple[Mechanism, ...]
    sizes: tuple[int, ...]
    """Every block's size, in layout order (0: an empty block, with no mechanism)."""
    epsilon: float
    delta: float
    rho: float | None

    @property
    def kind(self) -> str:
        """"laplace" or "gaussian", as every block's mechanism."""
        return self.mechanisms[0].kind if self.mechanisms else "gaussian"

    def release(self, vector: np.ndarray) -> np.ndarray:
        """The vector with every block's noise, drawn by OpenDP."""
        size = sum(self.sizes)
        if vector.shape != (size,):
            raise PetError(f"a vector of shape {vector.shape} does not fit a release of "
                           f"{size} elements")
        out, start = np.empty(size), 0
        mechanisms = iter(self.mechanisms)
        for length in self.sizes:
            if length:
                out[start:start + length] = next(mechanisms).release(vector[start:start + length])
            start += length
        return out

    def share(self, parties: int) -> Noise:
        """Each of `parties` independent shares of this Gaussian noise (`Mechanism.share`)."""
        return replace(self, mechanisms=tuple(m.share(parties) for m in self.mechanisms))

    def scales(self) -> np.ndarray:
        """Per element, its mechanism's scale (σ, or the Laplace scale b)."""
        return self._per_element(lambda m: m.scale)

    def accuracy(self, alpha: float = 1 - CONFIDENCE) -> np.ndarray:
        """Per element, the half-width of the interval holding its noise with probability
        1 − alpha."""
        return self._per_element(lambda m: m.accuracy(alpha))

    def _per_element(self, value: Callable[[Mechanism], float]) -> np.ndarray:
        mechanisms = iter(self.mechanisms)
        return np.concatenate([np.full(n, value(next(mechanisms)) if n else 0.0)
                               for n in self.sizes] or [np.zeros(0)])


@lru_cache(maxsize=512)
def plan(layout: Layout, epsilon: float, delta: float, rho: float | None = None) -> Noise:
    """The noise of one DP release of a layout's round, for a query asked at (ε, δ).

    The round spends `layout.share` of the query's budget: ρ = share·ρ(ε, δ) of Gaussian
    noise when δ > 0, or share·ε of Laplace noise when δ = 0 (a synthesizer's release
    passes its own `rho`). That amount splits across the blocks by their public weights w:
    block b gets ρ_b ∝ Δ_b·√w_b (Δ_b its L2 sensitivity), the split that minimises
    Σ w_b·σ_b² — the error a block's noise puts in the answer — for the given total ρ;
    under pure DP, ε_b ∝ (w_b·Δ_b²)^(1/3) minimises Σ w_b·b_b² with Δ_b the L1
    sensitivity. Each block's noise is then calibrated by OpenDP."""
    check_privacy(epsilon, delta)
    blocks = [b for b in layout.blocks if b.size]
    if not layout.share > 0:
        raise PetError("this round has no share of the query's privacy budget left; the "
                       "query asked for more rounds than it budgeted")
    if delta == 0 and rho is None:
        total = layout.share * epsilon
        split = _split([(b.weight * b.l1**2) ** (1 / 3) for b in blocks], total)
        mechanisms = tuple(_block("laplace", b.size, b.l1, e, 0.0)
                           for b, e in zip(blocks, split, strict=True))
        return Noise(mechanisms, tuple(b.size for b in layout.blocks), epsilon, delta, None)
    total = release_rho(layout, epsilon, delta, rho)
    split = _split([b.l2 * math.sqrt(b.weight) for b in blocks], total)
    mechanisms = tuple(_block("gaussian", b.size, b.l2, r, delta)
                       for b, r in zip(blocks, split, strict=True))
    query_rho = rho if rho is not None else rho_of(epsilon, delta)
    return Noise(mechanisms, tuple(b.size for b in layout.blocks), epsilon, delta, query_rho)


@lru_cache(maxsize=4096)
def _block(kind: str, size: int, sensitivity: float, amount: float, delta: float) -> Mechanism:
    """One block's mechanism, calibrated once for every block alike (a synthesizer's
    release has many of one shape): Laplace to ε = `amount` at L1 `sensitivity`, or
    Gaussian to ρ = `amount` at L2 `sensitivity`."""
    def measurement(scale: float) -> mod.Measurement:
        return _measurement(kind, size, scale)

    if kind == "laplace":
        scale = least_scale(measurement, sensitivity, amount, power=1)
        return Mechanism("laplace", scale, sensitivity, size, amount, 0.0)
    scale = least_scale(measurement, sensitivity, amount)
    exact = measurement(scale).map(sensitivity)
    return Mechanism("gaussian", scale, sensitivity, size, _epsilon_at(exact, delta), delta,
                     exact)


def _split(importance: list[float], total: float) -> list[float]:
    """`total` split in proportion to each block's importance (blocks that no row can
    change, importance 0, get an equal part of nothing and need no noise: a tiny share)."""
    whole = sum(importance)
    if whole == 0:
        return [total / len(importance)] * len(importance)
    floored = [max(i, 1e-12 * whole) for i in importance]
    scale = total / sum(floored)
    return [i * scale for i in floored]


def calibrate(layout: Layout, epsilon: float, delta: float = 0.0) -> Mechanism:
    """The least noise that makes one release of the layout (ε, δ)-DP with respect to
    adding or removing one row: Laplace scaled to the L1 sensitivity when δ = 0, else
    Gaussian scaled to the L2 sensitivity under zCDP, converted to (ε, δ) by OpenDP."""
    check_privacy(epsilon, delta)
    if delta == 0:
        scale = least_scale(lambda s: _measurement("laplace", layout.size, s), layout.l1,
                            epsilon, power=1)
        return Mechanism("laplace", scale, layout.l1, layout.size, epsilon, 0.0)
    scale = mod.binary_search_param(
        lambda s: _approximate(_measurement("gaussian", layout.size, s), delta),
        d_in=layout.l2, d_out=(epsilon, delta))
    rho = _measurement("gaussian", layout.size, scale).map(layout.l2)
    return Mechanism("gaussian", scale, layout.l2, layout.size, epsilon, delta, rho)


def calibrate_rho(layout: Layout, rho: float, delta: float) -> Mechanism:
    """The least Gaussian noise that makes one release of the layout ρ-zCDP (OpenDP's
    search on its own zCDP map); its ε is what that ρ alone implies at δ."""
    check_rho(rho)
    scale = least_scale(lambda s: _measurement("gaussian", layout.size, s), layout.l2, rho)
    exact = _measurement("gaussian", layout.size, scale).map(layout.l2)
    return Mechanism("gaussian", scale, layout.l2, layout.size, epsilon_of(exact, delta),
                     delta, exact)


@lru_cache(maxsize=256)
def rho_of(epsilon: float, delta: float) -> float:
    """The largest ρ whose zCDP guarantee OpenDP converts to (ε, δ)-DP: the ρ budget that
    an (ε, δ) charge affords a run of Gaussian releases (zCDP composes by adding ρ)."""
    check_privacy(epsilon, delta)
    if delta == 0:
        raise ArgumentError("a zCDP budget needs δ > 0 (ρ-zCDP implies no pure ε-DP)")
    scale = mod.binary_search_param(lambda s: _approximate(_measurement("gaussian", 1, s), delta),
                                   d_in=1.0, d_out=(epsilon, delta))
    return float(_measurement("gaussian", 1, scale).map(1.0))


def query_rho(epsilon: float, delta: float) -> float:
    """The ρ a query asked at (ε, δ) costs a ledger: the ρ whose zCDP guarantee OpenDP
    converts to (ε, δ), or ε²/2 for pure ε-DP (which implies ε²/2-zCDP)."""
    check_privacy(epsilon, delta)
    return epsilon**2 / 2 if delta == 0 else rho_of(epsilon, delta)


def release_rho(layout: Layout, epsilon: float, delta: float, rho: float | None) -> float:
    """The ρ one release of a round spends from its query's: its share of it (`plan`); a
    synthesizer's release states its own ρ. Under pure DP a round of share s is
    (s·ε)-DP, which is (s·ε)²/2-zCDP, but it spends s·ε²/2: the request's releases are then
    capped at ε²/2 exactly when their ε add up to at most ε, so the query stays ε-DP
    whatever rounds a peer asks for (and its ρ is no more than spent)."""
    if rho is not None:
        return rho
    return layout.share * query_rho(epsilon, delta)


def epsilon_of(rho: float, delta: float) -> float:
    """The ε at δ that OpenDP's conversion gives a ρ-zCDP guarantee: how a zCDP total is
    reported as (ε, δ)."""
    check_rho(rho)
    return _epsilon_at(rho, delta)


def _epsilon_at(rho: float, delta: float) -> float:
    """`epsilon_of` for any ρ > 0 (one block of a release may spend less than MIN_RHO)."""
    scale = 1.0 / math.sqrt(2 * rho)  # a unit-sensitivity Gaussian whose map is ρ
    gaussian = _measurement("gaussian", 1, scale)
    return float(_approximate(gaussian, delta).map(1.0)[0])


def check_rho(rho: float) -> None:
    """Refuse a ρ that is not a number in [MIN_RHO, MAX_EPSILON] (ρ-zCDP implies ε ≥ ρ,
    so a larger ρ guarantees nothing an allowed ε would not)."""
    if not (isinstance(rho, int | float) and MIN_RHO <= rho <= MAX_EPSILON):
        raise ArgumentError(f"rho must be a number in [{MIN_RHO:g}, {MAX_EPSILON:g}], got "
                            f"{rho!r}")


def noisy_max(scores: np.ndarray, sensitivity: float, rho: float) -> int:
    """The index of the highest score by OpenDP's exponential mechanism (Gumbel noisy max),
    ρ-zCDP for scores that one row moves by at most `sensitivity` each."""
    check_rho(rho)
    domain = domains.vector_domain(domains.atom_domain(T=float, nan=False), size=len(scores))

    def selection(s: float) -> mod.Measurement:
        return measurements.make_noisy_max(domain, metrics.linf_distance(T=float),
                                   measures.zero_concentrated_divergence(), scale=s)

    scale = least_scale(selection, float(sensitivity), rho)
    return int(selection(scale)(np.asarray(scores, dtype=np.float64).tolist()))


def least_scale(make: Callable[[float], mod.Measurement], d_in: float, d_out: float, *,
                power: int = 2) -> float:
    """The least noise scale at which `make(scale)` maps `d_in` within `d_out`, for a map
    that falls as 1/scale^power (2: zCDP of Gaussian noise and Gumbel noisy max; 1: pure
    DP of Laplace noise): read off OpenDP's map at scale 1, confirmed on its map at the
    answer and nudged past its rounding; OpenDP's binary search should that fail. One map
    instead of a search's forty: a fit calibrates a release per round."""
    scale = (make(1.0).map(d_in) / d_out) ** (1 / power)
    for nudge in (0.0, 1e-14, 1e-12, 1e-10):
        if make(scale * (1 + nudge)).map(d_in) <= d_out:
            return scale * (1 + nudge)
    return float(mod.binary_search_param(make, d_in=d_in, d_out=d_out))


def whole_counts(total: np.ndarray, layout: Layout) -> np.ndarray:
    """The noisy sum with its counts rounded and clipped at zero (post-processing)."""
    total = total.copy()
    counts = layout.counts_mask()
    total[counts] = np.maximum(np.rint(total[counts]), 0.0)
    return total


def check_privacy(epsilon: float, delta: float) -> None:
    """Refuse an ε outside [MIN_EPSILON, MAX_EPSILON], or a δ outside [0, 1)."""
    if not (isinstance(epsilon, int | float) and MIN_EPSILON <= epsilon <= MAX_EPSILON):
        raise ArgumentError(f"epsilon must be a number in [{MIN_EPSILON:g}, {MAX_EPSILON:g}],"
                            f" got {epsilon!r}")
    if not (isinstance(delta, int | float) and 0 <= delta < 1):
        raise ArgumentError(f"delta must lie in [0, 1), got {delta!r}")


def check_budget(epsilon: float, delta: float,
                 rho: float | None) -> tuple[float, float, float | None]:
    """A DP backend's (ε, δ) and, for a request of many releases, the ρ each one spends:
    refused unless ρ fits inside what (ε, δ) affords."""
    check_privacy(epsilon, delta)
    if rho is not None:
        check_rho(rho)
        if rho > rho_of(epsilon, delta):
            raise ArgumentError(f"rho={rho:g} per release exceeds the ρ={rho_of(epsilon, delta):g}"
                                f" that ε={epsilon:g}, δ={delta:g} afford")
    return epsilon, delta, rho


def _measurement(kind: str, size: int, scale: float) -> mod.Measurement:
    domain = domains.vector_domain(domains.atom_domain(T=float, nan=False), size=size)
    if kind == "laplace":
        return measurements.make_laplace(domain, metrics.l1_distance(T=float), scale=scale)
    return measurements.make_gaussian(domain, metrics.l2_distance(T=float), scale=scale)


def _approximate(gaussian: mod.Measurement, delta: float) -> mod.Measurement:
    """The zCDP Gaussian as an (ε, δ)-DP measurement at the given δ."""
    return combinators.make_fix_delta(combinators.make_zCDP_to_approxDP(gaussian), delta)
