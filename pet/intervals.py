"""95% intervals for DP answers, computed from the noise the release actually carries.

A DP release reveals T̃ = T + Z, with Z independent noise of known kind and scale on
every element of the layout (Gaussian, or for local pure-ε DP a sum of one Laplace draw
per site). An answer is a function f of the revealed sums (the query's finalize); to
first order f(T̃) − f(T) = J·Z, with J the Jacobian of f at T̃. The interval holds
f(T) — the answer the same rows would give without noise — with probability 95%:
Gaussian J·Z has standard deviation √(Σ J²σ²); a weighted sum of Laplace draws has no
closed form, so its quantile is found from its characteristic function (Gil-Pelaez).

The Jacobian is taken by central differences through finalize itself, so every query's
post-processing is followed as it is; a step of a hundredth of each element's noise
scale keeps the secant inside the region the noise explores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import special

from pet.mechanisms import CONFIDENCE

MAX_JACOBIAN = 10**7
"""The most numbers × elements the delta method differentiates; a larger answer gets no
interval (NaN) rather than costing the analyst's machine its memory and minutes."""
STEP = 0.01
"""Finite-difference step, as a fraction of each element's noise scale."""
RATIO = 1.001
"""Resolution of the relative scales at which Laplace quantiles are solved and kept."""
BOUND_FAILURE = 1e-9
"""The chance, per number, that an error bound set on random rounding noise (CKKS
decoding) is exceeded."""
BOUND_Z = float(special.ndtri(1 - BOUND_FAILURE / 2))
"""Standard deviations of Gaussian rounding noise that a bound spans (6.1)."""


@dataclass(frozen=True)
class Spread:
    """The noise on each element of a revealed sum: `copies` independent draws of `kind`
    ("gaussian" or "laplace") with the given scale each (a sum of one draw per site
    under local DP; Gaussian sums are folded into one draw)."""

    kind: str
    scales: np.ndarray
    copies: int = 1

    def sd(self) -> np.ndarray:
        """Per element, the standard deviation of its noise."""
        factor = np.sqrt(2.0) if self.kind == "laplace" else 1.0
        return self.scales * factor * np.sqrt(self.copies)


Interval = tuple[np.ndarray, np.ndarray]
"""Lower and upper ends, one per number of the answer."""


def delta_method(answer: Callable[[np.ndarray], np.ndarray], total: np.ndarray,
                 spread: Spread) -> Interval:
    """The interval of each number of `answer(total)` for the noise `spread` (first order
    in the noise, with the exact distribution of the linearised noise)."""
    value = answer(total)
    if value.size * np.count_nonzero(spread.scales) > MAX_JACOBIAN:
        return np.full(value.size, np.nan), np.full(value.size, np.nan)
    jacobian = _jacobian(answer, total, spread.scales, value.size)
    half = np.array([_half_width(row, spread) for row in jacobian])
    return value - half, value + half


def propagated(answer: Callable[[np.ndarray], np.ndarray], total: np.ndarray,
               bounds: np.ndarray, independent: bool) -> np.ndarray:
    """Each number's error bound from the sums' bounds, to first order through `answer`:
    Σ|J·b| for worst-case bounds (fixed-point rounding), √Σ(J·b)² for independent
    Gaussian errors each bounded at `BOUND_Z` standard deviations (CKKS), which then
    bounds the number at `BOUND_Z` of its own. Only elements with a bound are varied."""
    value = answer(total)
    if value.size * np.count_nonzero(bounds) > MAX_JACOBIAN:
        return np.full(value.size, np.nan)
    weighted = _jacobian(answer, total, bounds, value.size) * bounds
    if independent:
        return np.sqrt(np.sum(weighted**2, axis=1))
    return np.sum(np.abs(weighted), axis=1)


def cellwise(values: np.ndarray, spread: Spread) -> Interval:
    """The interval of answers that are the revealed elements themselves (counts of a
    table): each element's own noise quantile."""
    half = np.array([_half_width(np.array([1.0]), Spread(spread.kind, np.array([s]),
                                                          spread.copies))
                     for s in spread.scales])
    return values - half, values + half


def table(values: np.ndarray, cell_scale: float, n_scale: float, spread: Spread) -> Interval:
    """The interval of a table's K noisy cells made to add up to the noisy n by
    c − (Σc − n)/K (`consistent_counts` away from 0), in whole rows from 0: each cell's
    error is (1 − 1/K) of its own noise, 1/K of each other cell's and of n's. Every cell's
    noise has one scale, so one half-width serves them all."""
    k = values.size
    weights = np.concatenate([[1 - 1 / k], np.full(k - 1, 1 / k), [1 / k]])
    scales = np.concatenate([np.full(k, cell_scale), [n_scale]])
    half = _half_width(weights, Spread(spread.kind, scales, spread.copies))
    low, high = whole((values - half, values + half), values)
    return np.maximum(low, 0.0), high


def counts(values: np.ndarray, spread: Spread) -> Interval:
    """The interval of noisy counts that were rounded and kept at 0 or more: each one's
    own noise quantile (`cellwise`), in whole rows (`whole`), from 0."""
    low, high = whole(cellwise(values, spread), values)
    return np.maximum(low, 0.0), high


def whole(interval: Interval, value: np.ndarray) -> Interval:
    """The interval of counts that were rounded after the noise: a rounded count n̂ is
    within h of n exactly when the noise is below h + ½, so each half-width a becomes the
    least whole h with h + ½ ≥ a."""
    low, high = interval
    half = np.ceil(np.maximum((high - low) / 2 - 0.5, 0.0))
    return value - half, value + half


def _jacobian(answer: Callable[[np.ndarray], np.ndarray], total: np.ndarray,
              scales: np.ndarray, outputs: int) -> np.ndarray:
    """outputs × elements matrix of central differences, zero where no noise was added."""
    jacobian = np.zeros((outputs, total.size))
    for j in np.flatnonzero(scales > 0):
        step = STEP * scales[j]
        up, down = total.copy(), total.copy()
        up[j] += step
        down[j] -= step
        jacobian[:, j] = (answer(up) - answer(down)) / (2 * step)
    return jacobian


def _half_width(weights: np.ndarray, spread: Spread) -> float:
    """Half-width a with P(|Σ wᵢ·Zᵢ| ≤ a) = CONFIDENCE for the spread's noise."""
    scaled = np.abs(weights) * spread.scales
    scaled = scaled[np.isfinite(scaled) & (scaled > 0)]
    if scaled.size == 0:
        return 0.0 if np.all(np.isfinite(weights)) else np.nan
    z = special.ndtri(0.5 + CONFIDENCE / 2)
    if spread.kind == "gaussian":
        return float(z * np.sqrt(spread.copies * np.sum(scaled**2)))
    return _laplace_quantile(scaled, spread.copies)


def _laplace_quantile(scales: np.ndarray, copies: int) -> float:
    """The two-sided CONFIDENCE quantile of a sum of `copies` Laplace draws of each scale.
    It grows with every scale and in proportion to them all, so it is solved once per
    shape: each scale relative to the largest, rounded up to a power of 1.001 (the
    quantile is then at most 0.1% wider, never narrower), those below 10⁻⁴ dropped (they
    move it by less than that)."""
    top = float(np.max(scales))
    relative = scales[scales >= 1e-4 * top] / top
    steps = np.ceil(np.log(relative) / np.log(RATIO) - 1e-9).astype(int)
    return top * _unit_laplace_quantile(tuple(sorted(steps.tolist())), copies)


@lru_cache(maxsize=4096)
def _unit_laplace_quantile(steps: tuple[int, ...], copies: int) -> float:
    """`_laplace_quantile` for scales RATIO^step (at most 1), by Newton's method on the
    Gil-Pelaez inversion F(x) = ½ + (1/π)∫₀^∞ φ(t)·sin(tx)/t dt, f(x) = (1/π)∫₀^∞
    φ(t)·cos(tx) dt, with φ(t) = Π (1 + bᵢ²t²)^(−copies) the characteristic function.
    scipy's integrate and optimize are imported here, where they are used: they take a
    tenth of a second to import, which every command that reads a query would pay."""
    from scipy import integrate, optimize

    b = RATIO ** np.asarray(steps, dtype=np.float64)

    def phi(t: float) -> float:
        return float(np.prod((1 + (b * t) ** 2) ** -copies))

    def cdf(x: float) -> float:  # near 0 sin(tx)/t is smooth; beyond, oscillatory
        near, _ = integrate.quad(lambda t: phi(t) * np.sinc(t * x / np.pi) * x, 0, 1.0)
        far, _ = integrate.quad(lambda t: phi(t) / t, 1.0, np.inf, weight="sin", wvar=x)
        return 0.5 + (near + far) / np.pi

    def pdf(x: float) -> float:
        value, _ = integrate.quad(phi, 0, np.inf, weight="cos", wvar=x)
        return value / np.pi

    target = 0.5 + CONFIDENCE / 2
    sd = float(np.sqrt(2 * copies * np.sum(b**2)))
    x = special.ndtri(target) * sd
    for _ in range(50):
        step = (cdf(x) - target) / pdf(x)
        x = max(x - step, x / 2)
        if abs(step) < 1e-10 * sd:
            return x
    return float(optimize.brentq(lambda v: cdf(v) - target, 0.0, 20 * sd))
