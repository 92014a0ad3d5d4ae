"""DP mechanisms: the calibration agrees with OpenDP's own privacy maps and with the
closed forms, the noise drawn matches its calibration, and the accuracy intervals hold
their coverage. Statistical checks allow 5.5 standard errors: under the normal
approximation each fails by chance with probability below 4·10⁻⁸, all together below 10⁻⁶."""

from __future__ import annotations

import math

import numpy as np
import opendp.prelude as dp
import pytest
from scipy import optimize

from pet.errors import PetError
from pet.layout import Block, Layout
from pet.mechanisms import (
    calibrate,
    calibrate_rho,
    epsilon_of,
    least_scale,
    noisy_max,
    plan,
    rho_of,
)
from pet.queries import Contingency, Covariance, Histogram, Mean
from pet.workloads.base import packaged_schema

SCHEMA = packaged_schema("cohort")
LAYOUTS = [Mean("sbp").layout(SCHEMA), Histogram("age", tuple(range(30, 91, 5))).layout(SCHEMA),
           Contingency(("sex", "smoking")).layout(SCHEMA),
           Covariance(("age", "bmi", "sbp")).layout(SCHEMA)]
Z = 5.5


@pytest.mark.parametrize("layout", LAYOUTS, ids=["mean", "histogram", "contingency", "cov"])
@pytest.mark.parametrize("epsilon", [0.1, 1.0, 10.0])
def test_laplace_calibration_is_tight_under_openDPs_map(layout: Layout, epsilon: float) -> None:
    mechanism = calibrate(layout, epsilon)
    spent = mechanism.measurement().map(layout.l1)
    assert mechanism.kind == "laplace" and epsilon * 0.999 <= spent <= epsilon
    assert mechanism.scale == pytest.approx(layout.l1 / epsilon, rel=1e-3)  # b = Δ₁/ε


@pytest.mark.parametrize("layout", LAYOUTS, ids=["mean", "histogram", "contingency", "cov"])
@pytest.mark.parametrize(("epsilon", "delta"), [(0.1, 1e-6), (1.0, 1e-8), (10.0, 1e-5)])
def test_gaussian_calibration_is_zcdp_within_the_asked_epsilon(layout: Layout, epsilon: float,
                                                              delta: float) -> None:
    mechanism = calibrate(layout, epsilon, delta)
    assert mechanism.kind == "gaussian"
    assert mechanism.measurement().map(layout.l2) == mechanism.rho
    assert mechanism.rho == pytest.approx(layout.l2**2 / (2 * mechanism.scale**2), rel=1e-9)
    approximate = dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(mechanism.measurement()),
                                      delta)
    spent, spent_delta = approximate.map(layout.l2)
    assert epsilon * 0.999 <= spent <= epsilon and spent_delta == delta
    # OpenDP's conversion is tighter than the textbook ε = ρ + 2√(ρ·ln(1/δ))
    rho = mechanism.rho
    assert rho + 2 * math.sqrt(rho * math.log(1 / delta)) >= spent


@pytest.mark.parametrize(("epsilon", "delta"), [(1.0, 0.0), (0.5, 1e-6)])
def test_noise_matches_its_calibration(epsilon: float, delta: float) -> None:
    layout = Layout((Block.counts("n", 1), Block.sums("s", 19_999)))
    mechanism = calibrate(layout, epsilon, delta)
    noise = mechanism.release(np.zeros(layout.size))
    n, b = noise.size, mechanism.scale
    variance, fourth = (2 * b**2, 24 * b**4) if delta == 0 else (b**2, 3 * b**4)
    assert abs(noise.mean()) <= Z * math.sqrt(variance / n)
    assert abs(noise.var() - variance) <= Z * math.sqrt((fourth - variance**2) / n)
    outside = np.mean(np.abs(noise) > mechanism.accuracy(0.05))
    assert abs(outside - 0.05) <= Z * math.sqrt(0.05 * 0.95 / n)


def test_bad_requests_get_clear_errors() -> None:
    layout = LAYOUTS[0]
    for epsilon in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(PetError, match=r"epsilon must be a number in \[0.001, 10000\]"):
            calibrate(layout, epsilon)
    with pytest.raises(PetError, match=r"delta must lie in \[0, 1\)"):
        calibrate(layout, 1.0, 1.0)
    with pytest.raises(PetError, match=f"does not fit a mechanism for {layout.size} elements"):
        calibrate(layout, 1.0).release(np.zeros(layout.size + 1))


@pytest.mark.parametrize(("epsilon", "delta"), [(0.5, 1e-6), (1.0, 1e-6), (5.0, 1e-9)])
def test_the_rho_an_epsilon_delta_charge_affords_converts_back_to_it(epsilon: float,
                                                                    delta: float) -> None:
    rho = rho_of(epsilon, delta)
    # OpenDP's conversion is tighter than the classic ρ + 2√(ρ ln(1/δ)) (Bun & Steinke).
    assert rho + 2 * math.sqrt(rho * math.log(1 / delta)) > epsilon
    assert epsilon_of(rho, delta) == pytest.approx(epsilon, rel=1e-6)
    assert epsilon_of(rho, delta) <= epsilon * (1 + 1e-9)


@pytest.mark.parametrize("rho", [0.001, 0.1, 2.0])
def test_a_rho_release_has_the_gaussian_scale_of_its_closed_form(rho: float) -> None:
    layout = LAYOUTS[2]
    mechanism = calibrate_rho(layout, rho, 1e-6)
    assert mechanism.scale == pytest.approx(layout.l2 / math.sqrt(2 * rho), rel=1e-6)
    assert mechanism.rho <= rho and mechanism.epsilon == pytest.approx(epsilon_of(rho, 1e-6),
                                                                       rel=1e-6)


@pytest.mark.parametrize("kind", ["gaussian", "noisy max"])
@pytest.mark.parametrize(("d_in", "rho"), [(1.0, 1e-4), (3.0, 0.05), (0.5, 7.0)])
def test_the_least_scale_is_what_openDPs_binary_search_finds(kind: str, d_in: float,
                                                             rho: float) -> None:
    domain = dp.vector_domain(dp.atom_domain(T=float, nan=False), size=3)
    if kind == "gaussian":
        def make(s: float) -> dp.Measurement:
            return dp.m.make_gaussian(domain, dp.l2_distance(T=float), scale=s)
    else:
        def make(s: float) -> dp.Measurement:
            return dp.m.make_noisy_max(domain, dp.linf_distance(T=float),
                                       dp.zero_concentrated_divergence(), scale=s)
    scale = least_scale(make, d_in, rho)
    assert make(scale).map(d_in) <= rho
    searched = dp.binary_search_param(make, d_in=d_in, d_out=rho)
    assert scale == pytest.approx(searched, rel=1e-9)
    assert make(scale * (1 - 1e-9)).map(d_in) > rho  # any less noise would spend more


def test_noisy_max_prefers_the_best_score_as_the_exponential_mechanism_does() -> None:
    # Under ρ-zCDP the Gumbel scale s satisfies ρ = (1/s)²/8 · (2Δ)² for non-monotone scores,
    # so a lead of L wins against one rival with probability 1 / (1 + e^{-L/s}).
    rho, draws = 0.5, 2000
    scale = 2 / math.sqrt(8 * rho)
    lead = scale * math.log(3)  # wins 3 times in 4
    picks = np.array([noisy_max(np.array([lead, 0.0]), 1.0, rho) for _ in range(draws)])
    wins, expected = (picks == 0).mean(), 0.75
    assert abs(wins - expected) < Z * math.sqrt(expected * (1 - expected) / draws)


SPLIT_LAYOUT = Layout((Block.counts("n", 1, weight=0.25), Block.sums("sum", 1),
                       Block.sums("cross", 6, weight=4.0), Block.counts("cells", 12)),
                      share=0.5)


def test_a_rounds_blocks_compose_to_its_share_of_the_querys_rho() -> None:
    """Each block's Gaussian, measured by OpenDP's own map at its sensitivity, adds up to
    the round's share of the ρ that (ε, δ) converts to."""
    noise = plan(SPLIT_LAYOUT, 1.0, 1e-6)
    spent = sum(dp.m.make_gaussian(dp.vector_domain(dp.atom_domain(T=float, nan=False),
                                                    size=b.size),
                                   dp.l2_distance(T=float), scale=m.scale).map(b.l2)
                for b, m in zip(SPLIT_LAYOUT.blocks, noise.mechanisms, strict=True))
    assert spent == pytest.approx(0.5 * rho_of(1.0, 1e-6), rel=1e-9)
    assert spent <= 0.5 * rho_of(1.0, 1e-6)


def test_the_split_minimises_the_weighted_noise_variance() -> None:
    """Against a numerical optimiser: no other split of the same ρ gives a smaller
    Σ wᵢ·σᵢ² (the error the blocks' noise puts in the answer)."""
    blocks = SPLIT_LAYOUT.blocks
    rho = 0.5 * rho_of(1.0, 1e-6)
    weights = np.array([b.weight for b in blocks])
    l2 = np.array([b.l2 for b in blocks])

    def loss(shares: np.ndarray) -> float:
        parts = rho * np.exp(shares) / np.exp(shares).sum()
        return float(np.sum(weights * l2**2 / (2 * parts)))

    best = optimize.minimize(loss, np.zeros(len(blocks)), method="Nelder-Mead",
                             options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 20000})
    ours = plan(SPLIT_LAYOUT, 1.0, 1e-6).scales()
    sigmas = np.array([ours[sum(b.size for b in blocks[:i])] for i in range(len(blocks))])
    assert np.sum(weights * sigmas**2) <= best.fun * (1 + 1e-6)


def test_pure_dp_splits_epsilon_and_its_blocks_add_up() -> None:
    noise = plan(SPLIT_LAYOUT, 2.0, 0.0)
    spent = sum(m.measurement().map(b.l1)
                for b, m in zip(SPLIT_LAYOUT.blocks, noise.mechanisms, strict=True))
    assert noise.kind == "laplace"
    assert spent == pytest.approx(1.0, rel=1e-6) and spent <= 1.0
