"""How the synthesizers split ρ: the 1-way marginals measured a second time only where
the later cliques' signal is faint, pooled into one measurement (pet.synth.allocation)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pet.errors import ArgumentError
from pet.mechanisms import rho_of
from pet.synth.aim import AIM
from pet.synth.allocation import pool, pooled
from pet.synth.card import Release, card, markdown
from pet.synth.discretize import Discretization
from pet.synth.marginal import NoisyMarginal
from pet.synth.measure import Curator, Federation
from pet.synth.mst import MST, SELECT_SHARE
from pet.synth.synthesizer import Synthesizer
from pet.workloads import Workload, cohort, lung


@pytest.fixture(scope="module")
def lung1() -> Workload:
    return lung(1)


def _fit(workload: Workload, folder: Path, method: Synthesizer, epsilon: float):
    (site,) = workload.sites(ledgers=folder)
    site.ledger.set_budget(site.dataset, epsilon, 1e-6)
    with Curator(site, Discretization.of(workload.schema, bins=4), epsilon=epsilon,
                 delta=1e-6) as measurer:
        return method.fit(measurer)


def test_pool_is_each_cells_inverse_variance_mean() -> None:
    a = NoisyMarginal(("x",), np.array([10.0, 20.0, 30.0]), 2.0)
    b = NoisyMarginal(("x",), np.array([14.0, 16.0, 36.0]), 4.0, np.array([1.0, 2.0, 1.0]))
    both = pool([a, b])
    sd_a, sd_b = np.array([2.0, 2.0, 2.0]), np.array([4.0, 8.0, 4.0])
    weights = np.stack([sd_a**-2, sd_b**-2])
    expected = np.average(np.stack([a.values, b.values]), axis=0, weights=weights)
    np.testing.assert_allclose(both.values, expected, rtol=1e-12)
    np.testing.assert_allclose(both.sd, weights.sum(0) ** -0.5, rtol=1e-12)
    same = pool([a, NoisyMarginal(("x",), np.array([12.0, 18.0, 33.0]), 2.0)])
    assert same.scale is None and same.sigma == pytest.approx(2 / np.sqrt(2))
    np.testing.assert_allclose(same.values, [11.0, 19.0, 31.5])
    exact = NoisyMarginal(("x",), np.array([1.0, 2.0, 3.0]), 0.0)
    assert pool([a, exact, b]) is exact


def test_pooled_keeps_each_cliques_first_place() -> None:
    x1 = NoisyMarginal(("x",), np.array([1.0, 2.0]), 1.0)
    y = NoisyMarginal(("y",), np.array([5.0, 5.0]), 1.0)
    x2 = NoisyMarginal(("x",), np.array([3.0, 4.0]), 1.0)
    out = pooled([x1, y, x2])
    assert [m.clique for m in out] == [("x",), ("y",)]
    np.testing.assert_allclose(out[0].values, [2.0, 3.0])
    assert out[1] is y


@pytest.mark.parametrize("method", [AIM(iterations=50, round_iterations=10),
                                    MST(iterations=50)], ids=["aim", "mst"])
def test_columns_are_measured_again_only_where_the_signal_is_faint(
        lung1: Workload, tmp_path: Path, method: Synthesizer) -> None:
    """Lung's 228 rows at ε = 0.3 leave every later clique's average cell under its noise:
    the columns take half of ρ, in two releases of a quarter. At ε = 30 they take a
    quarter, once. Either way the fit spends its whole budget."""
    columns = tuple((name,) for name in lung1.schema.names)
    for epsilon, releases in ((0.3, 2), (30.0, 1)):
        fit = _fit(lung1, tmp_path / str(epsilon), method, epsilon)
        rho = rho_of(epsilon, 1e-6)
        first = [s for s in fit.spends if s.cliques == columns]
        assert len(first) == releases, epsilon
        assert all(s.rho == pytest.approx(0.25 * rho, rel=1e-6) for s in first)
        assert rho * (1 - 1e-5) <= fit.rho <= rho
        text = markdown(json.loads(json.dumps(card(fit, Release(("site-1",), "dp", 0, 10)))))
        assert ("Steps 1 and 2 measure every column" in text) == (releases == 2)


def test_mst_selects_with_a_twentieth_and_measures_its_pairs_with_the_rest(
        lung1: Workload, tmp_path: Path) -> None:
    fit = _fit(lung1, tmp_path, MST(iterations=50), 30.0)
    rho = rho_of(30.0, 1e-6)
    steps = [(s.step, len(s.cliques[0]), s.rho / rho) for s in fit.spends]
    assert [(step, size) for step, size, _ in steps][-1] == ("measure", 2)
    selection = sum(share for step, _, share in steps if step == "select")
    assert selection == pytest.approx(SELECT_SHARE, rel=1e-6)
    assert steps[-1][2] == pytest.approx(1 - 0.25 - SELECT_SHARE, rel=1e-6)


@pytest.mark.parametrize("rows, epsilon, faint", [(None, 1.0, True), (10_000, 3.0, False)],
                         ids=["lung-faint", "cohort-strong"])
def test_a_federation_selects_with_a_third_unless_the_signal_is_faint(
        tmp_path: Path, rows: int | None, epsilon: float, faint: bool) -> None:
    """A federation picks the tree on one he+dp release of every pair: with 5% of ρ where
    the signal is faint (lung's 228 rows at ε = 1: the columns measured twice), with a
    third where it is strong (10 000 rows a site at ε = 3: the columns once)."""
    workload = lung(3) if rows is None else cohort(rows, 3, 0)
    sites = workload.sites(ledgers=tmp_path)
    for site in sites:
        site.ledger.set_budget(site.dataset, epsilon, 1e-6)
    with Federation(sites, Discretization.of(workload.schema, bins=4), backend="he+dp",
                    epsilon=epsilon, delta=1e-6) as measurer:
        fit = MST(iterations=30).fit(measurer)
    rho = rho_of(epsilon, 1e-6)
    steps = [(s.step, s.rho / rho) for s in fit.spends]
    assert steps[:2 if faint else 1] == [("measure", pytest.approx(0.25, rel=1e-6))] * (
        2 if faint else 1)
    assert steps[-2] == ("select", pytest.approx(SELECT_SHARE if faint else 1 / 3, rel=1e-6))
    assert steps[-1][0] == "measure" and sum(share for _, share in steps) == pytest.approx(1)


@pytest.mark.parametrize("method, epsilon", [(MST(iterations=20), 0.0015),
                                             (AIM(iterations=20, round_iterations=5), 0.004)],
                         ids=["mst", "aim"])
def test_a_fit_too_small_for_its_steps_is_refused_before_the_site_is_charged(
        lung1: Workload, tmp_path: Path, method: Synthesizer, epsilon: float) -> None:
    """At these ε a step (MST's selection of each edge, AIM's first selection) would
    spend less ρ than a release may: the fit says so before it measures anything."""
    (site,) = lung1.sites(ledgers=tmp_path)
    site.ledger.set_budget(site.dataset, 1.0, 1e-6)
    with Curator(site, Discretization.of(lung1.schema, bins=4), epsilon=epsilon,
                 delta=1e-6) as measurer, pytest.raises(ArgumentError, match="raise ε"):
        method.fit(measurer)
    assert site.ledger.budget(site.dataset).spent_rho == 0.0


def test_pool_refuses_measurements_of_different_levels() -> None:
    with pytest.raises(ArgumentError, match="different levels"):
        pool([NoisyMarginal(("x",), np.array([1.0]), 1.0),
              NoisyMarginal(("x",), np.array([1.0, 2.0, 3.0]), 1.0)])

