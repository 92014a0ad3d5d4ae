"""DP synthesizers end to end: public discretization, marginals measured through the DP
backends (one curator or a federation), the ρ each step spends against the sites'
ledgers, and the data card. The estimator itself is tested in test_synth_estimation."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import opendp.prelude as dp
import pandas as pd
import pytest
from scipy import stats

from pet.errors import ArgumentError, PetError
from pet.ledger import BudgetError
from pet.mechanisms import rho_of
from pet.queries import Marginals
from pet.site import Site
from pet.study import Study
from pet.synth import load, save
from pet.synth.aim import AIM, closure
from pet.synth.card import Release, card, markdown
from pet.synth.discretize import Discretization
from pet.synth.domain import Clique, Domain
from pet.synth.estimation import estimate
from pet.synth.marginal import NoisyMarginal, toward_mean
from pet.synth.measure import Candidates, Curator, Federation, Measurer, Spend
from pet.synth.mst import MST, compressed, shrunk
from pet.synth.mwem import MWEM
from pet.synth.synthesizer import Fit, Synthesizer, replay
from pet.workloads import Workload, cohort, lung

BUDGET = (50.0, 1e-3)


def _sites(workload: Workload, folder: Path) -> list[Site]:
    sites = workload.sites(ledgers=folder)
    for site in sites:
        site.ledger.set_budget(site.dataset, *BUDGET)
    return sites


@pytest.fixture(scope="module")
def lung1() -> Workload:
    return lung(1)


def _crosstab(frame: pd.DataFrame, discretization: Discretization, clique: tuple[str, ...],
              shape: tuple[int, ...]) -> np.ndarray:
    """Counts of a clique's levels computed with pandas' binning, independently of pet's."""
    levels = []
    for name in clique:
        column = discretization.schema[name]
        values = frame[name]
        if name in discretization.edges:
            edges = np.asarray(discretization.edges[name])
            level = pd.cut(values, edges, right=False, labels=False)
            level = level.where(values != edges[-1], len(edges) - 2)  # last bin closed
        else:
            level = values.map({c: i for i, c in enumerate(getattr(
                column, "categories", (False, True)))})
        levels.append(level.fillna(shape[len(levels)] - 1).astype(int).to_numpy())
    counts = np.zeros(shape)
    np.add.at(counts, tuple(levels), 1)
    return counts


def test_marginals_count_missing_values_as_a_level(lung1: Workload) -> None:
    discretization = Discretization.of(lung1.schema)
    cliques = (("ph_ecog",), ("sex", "meal_cal"), ("age", "dead", "wt_loss"))
    query = Marginals(cliques, {c: discretization.edges[c] for c in
                                ("ph_ecog", "meal_cal", "age", "wt_loss")})
    site = lung1.sites()[0]
    parts = query.layout(lung1.schema).split(site.partial(query))
    answer = query.answer(parts, lung1.schema, None)
    pooled = lung1.pooled()
    for clique, counts in zip(cliques, answer, strict=True):
        expected = _crosstab(pooled, discretization, clique, counts.shape)
        assert counts.tolist() == expected.tolist()
        assert counts.sum() == len(pooled)  # every row counted, missing ones too
    assert query.layout(lung1.schema).l2 == pytest.approx(np.sqrt(len(cliques) + 1))


def test_marginals_count_merged_levels_as_one(lung1: Workload) -> None:
    discretization = Discretization.of(lung1.schema, bins=6)
    edges = {c: discretization.edges[c] for c in ("age", "ph_ecog")}
    # ph_ecog: 0, 1 | 2, 3, 4 and missing merged; age: bins 0-2 merged, the rest kept.
    merged = {"ph_ecog": (0, 1, 2, 2, 2, 2), "age": (0, 0, 0, 1, 2, 3)}
    query = Marginals((("ph_ecog", "age"),), edges, merged)
    query.check(lung1.schema)
    parts = query.layout(lung1.schema).split(lung1.sites()[0].partial(query))
    (counts,) = query.answer(parts, lung1.schema, None)
    full = _crosstab(lung1.pooled(), discretization, ("ph_ecog", "age"), (6, 6))
    expected = np.zeros((3, 4))
    np.add.at(expected, np.ix_(merged["ph_ecog"], merged["age"]), full)
    assert counts.tolist() == expected.tolist()


@pytest.mark.parametrize(("merged", "message"), [
    ({"ph_ecog": (0, 1, 1)}, "map 3 levels, but it has 6"),
    ({"ph_ecog": (0, 2, 2, 2, 2, 2)}, "must use every level from 0 to 2"),
    ({"ph_ecog": (0, 0.5, 1, 1, 1, 1)}, "must be whole numbers"),
    ({"sex": (0, 0)}, "columns in no clique: \\['sex'\\]"),
])
def test_marginals_refuse_a_bad_merge(lung1: Workload, merged: dict, message: str) -> None:
    edges = {"ph_ecog": Discretization.of(lung1.schema).edges["ph_ecog"]}
    with pytest.raises(PetError, match=message):
        Marginals((("ph_ecog",),), edges, merged).check(lung1.schema)


def test_merged_levels_sample_back_among_the_levels_they_hold(lung1: Workload) -> None:
    discretization = Discretization.of(lung1.schema, bins=6).merging(
        {"age": (0, 0, 0, 1, 2, 3), "ph_ecog": (0, 1, 2, 2, 2, 2)})
    assert discretization.merging({"age": (0, 0, 1, 1)}).merged["age"] == (0, 0, 0, 0, 1, 1)
    domain = discretization.domain()
    assert domain.shape(("age", "ph_ecog")) == (4, 3)
    levels = np.zeros((6000, len(domain)), dtype=np.int64)
    values = discretization.decode(levels, seed=1)
    age = values["age"]
    lower, _ = lung1.schema["age"].bounds()
    assert age.between(lower, discretization.edges["age"][3]).all()
    # Each of the three merged age bins is drawn about equally often (chi-square test).
    bins = np.digitize(age, discretization.edges["age"][1:3])
    assert stats.chisquare(np.bincount(bins, minlength=3)).pvalue > 1e-6
    assert set(values["ph_ecog"].dropna()) == {0}
    assert np.array_equal(discretization.encode(values)[:, domain.index("age")],
                          levels[:, domain.index("age")])


def test_a_merged_level_samples_back_in_proportion_to_its_shares(lung1: Workload) -> None:
    discretization = Discretization.of(lung1.schema, bins=6).merging(
        {"age": (0, 0, 0, 1, 1, 1)}, {"age": (3.0, 0.0, 1.0, 1.0, 1.0, 2.0)})
    levels = np.zeros((40_000, len(discretization.schema.names)), dtype=np.int64)
    column = discretization.schema.names.index("age")
    levels[20_000:, column] = 1
    counts = np.bincount(discretization.expand(levels, np.random.default_rng(3))[:, column],
                         minlength=6)
    assert counts[1] == 0  # a level of share 0 is never drawn
    expected = np.array([3, 0, 1, 1, 1, 2]) / np.array([4, 4, 4, 4, 4, 4]) * 20_000
    kept = expected > 0
    assert stats.chisquare(counts[kept], expected[kept]).pvalue > 1e-6
    again = Discretization.from_dict(json.loads(json.dumps(discretization.to_dict())))
    assert again == discretization


@pytest.mark.parametrize(("shares", "message"), [
    ({"age": (1.0, 1.0)}, "must be 6 finite numbers"),
    ({"age": (1.0, -1.0, 1.0, 1.0, 1.0, 1.0)}, "must be 6 finite numbers"),
    ({"age": (0.0, 0.0, 0.0, 1.0, 1.0, 1.0)}, "each merged level needs a share above 0"),
    ({"sex": (1.0, 1.0)}, "'sex', which is not merged"),
])
def test_bad_shares_are_refused_naming_the_column(lung1: Workload, shares: dict,
                                                  message: str) -> None:
    discretization = Discretization.of(lung1.schema, bins=6)
    with pytest.raises(ArgumentError, match=message):
        discretization.merging({"age": (0, 0, 0, 1, 1, 1)}, shares)


@pytest.mark.parametrize(("truth", "flat"), [
    (np.full(8, 80.0), True),
    (np.array([0, 0, 5, 20, 60, 90, 40, 10.0]), False),
    (np.array([0, 0, 0, 0, 0, 0, 300, 0.0]), False),
])
def test_shrunk_counts_split_a_merged_level_close_to_the_truth(truth: np.ndarray,
                                                               flat: bool) -> None:
    """Mean squared error of the split (shares as proportions) over many noisy draws: on
    flat counts near the uniform split's (the paper's, exact there) and far below the
    clipped noisy counts' (keeping the levels); on skewed counts far below the uniform
    split's and within a quarter of the noisy counts'."""
    rng = np.random.default_rng(0)
    sigma = 30.0
    errors = np.zeros(3)
    for _ in range(2000):
        noisy = truth + rng.normal(0, sigma, truth.size)
        for k, guess in enumerate((shrunk(noisy, sigma), np.maximum(noisy, 0),
                                   np.full(truth.size, noisy.mean()))):
            errors[k] += ((guess / guess.sum() - truth / truth.sum()) ** 2).sum()
    shrunk_error, noisy_error, uniform_error = errors
    if flat:
        assert shrunk_error < 0.2 * noisy_error
    else:
        assert shrunk_error < 0.6 * uniform_error and shrunk_error < 1.25 * noisy_error


SKEWED = np.array([0, 0, 5, 20, 60, 90, 40, 10, 0, 0.0])


@pytest.mark.parametrize(("truth", "sigma", "low", "high"), [
    (np.full(10, 40.0), 60.0, 0.0, 0.3),  # noise alone: far better than the noisy counts
    (SKEWED, 60.0, 0.0, 0.6),  # noise swamps the skew: still better
    (SKEWED, 0.5, 0.98, 1.01),  # noise far below the skew: nearly the noisy counts
])
def test_counts_shrunk_toward_their_mean_err_less_than_the_noisy_ones(
        truth: np.ndarray, sigma: float, low: float, high: float) -> None:
    """Squared error of the estimate over many noisy draws as a fraction of the noisy
    counts'; the sum is kept."""
    rng = np.random.default_rng(1)
    shrunk_error = noisy_error = 0.0
    for _ in range(2000):
        noisy = truth + rng.normal(0, sigma, truth.size)
        estimate = toward_mean(noisy, sigma)
        assert estimate.sum() == pytest.approx(noisy.sum())
        shrunk_error += ((estimate - truth) ** 2).sum()
        noisy_error += ((noisy - truth) ** 2).sum()
    assert low * noisy_error < shrunk_error < high * noisy_error
    exact = NoisyMarginal(("age",), truth, 0.0)
    assert exact.shrunk() is exact


def test_two_counts_swamped_by_noise_are_shrunk_far_below_the_noisy_ones_error() -> None:
    """A binary column whose levels differ by less than the noise: the estimate of its
    split errs far less than the noisy counts clipped at zero (which often put the whole
    column on one level). Squared error of the proportions over many draws."""
    truth, sigma = np.array([90.0, 60.0]), 150.0
    rng = np.random.default_rng(4)

    def error(counts: np.ndarray) -> float:
        share = counts / counts.sum() if counts.sum() > 0 else np.full(2, 0.5)
        return float(((share - truth / truth.sum()) ** 2).sum())

    draws = [truth + rng.normal(0, sigma, 2) for _ in range(4000)]
    shrunk_error = sum(error(np.maximum(toward_mean(d, sigma), 0)) for d in draws)
    clipped_error = sum(error(np.maximum(d, 0)) for d in draws)
    assert shrunk_error < 0.5 * clipped_error


def test_a_column_measured_as_noise_alone_is_fitted_near_uniform_once_shrunk() -> None:
    """A 1-way marginal of 300 rows measured at σ = 200 a cell: fitted as measured, the
    model piles the rows onto the levels the noise raised (TVD to the truth far above the
    uniform's); fitted to the empirical-Bayes estimate, it stays near the uniform's. Means
    over 200 noise draws."""
    rng = np.random.default_rng(2)
    truth = 300 * SKEWED / SKEWED.sum()
    domain = Domain(("a",), (truth.size,))

    def tvd(counts: np.ndarray) -> float:
        return 0.5 * float(np.abs(counts / counts.sum() - truth / truth.sum()).sum())

    raw, shrunk_fit = [], []
    for _ in range(200):
        noisy = NoisyMarginal(("a",), truth + rng.normal(0, 200.0, truth.size), 200.0)
        for fits, m in ((raw, noisy), (shrunk_fit, noisy.shrunk())):
            fits.append(tvd(np.ravel(estimate(domain, [m], iterations=200).project(("a",)))))
    uniform = tvd(np.ones(truth.size))
    assert np.mean(raw) > uniform + 0.15
    assert np.mean(shrunk_fit) < uniform + 0.05


def test_aim_fits_its_1_way_measurements_as_their_empirical_bayes_estimates(
        lung1: Workload, tmp_path: Path) -> None:
    """The fit records every release as released; its model is the estimator's on each
    column's 1-way releases pooled and shrunk (replayed with AIM's preparation it comes
    back exactly, replayed on the releases as they are it does not)."""
    released: list[NoisyMarginal] = []

    class Recording(Curator):
        def measure(self, cliques: Sequence[Clique], rho: float) -> list[NoisyMarginal]:
            out = super().measure(cliques, rho)
            released.extend(out)
            return out

    (site,) = _sites(lung1, tmp_path)
    with Recording(site, Discretization.of(lung1.schema), epsilon=0.3,
                   delta=1e-6) as measurer:
        fit = AIM(iterations=100, round_iterations=20).fit(measurer)
    assert [m.values.tolist() for m in fit.measurements] == [m.values.tolist() for m in released]
    prepared = {m.clique: m for m in AIM.prepared(released)}
    assert prepared.keys() == {m.clique for m in released}
    for clique, kept in prepared.items():
        raw = [m for m in released if m.clique == clique]
        weights = [m.sigma**-2 for m in raw]
        mean = np.average([m.values for m in raw], axis=0, weights=weights)
        if len(clique) == 1:
            assert len(raw) >= 2  # a faint signal at ε = 0.3: every column measured twice
            mean = toward_mean(mean, sum(weights) ** -0.5)
        np.testing.assert_allclose(kept.values, mean, rtol=1e-12)
    domain = fit.model.domain
    probe = fit.model.cliques[0]
    again = replay(domain, fit.measurements, fit.trace, AIM.prepared).project(probe)
    np.testing.assert_array_equal(again, fit.model.project(probe))
    unprepared = replay(domain, fit.measurements, fit.trace).project(probe)
    assert np.abs(unprepared - fit.model.project(probe)).max() > 1e-6


def test_mst_merges_a_column_none_of_whose_levels_stands_out(lung1: Workload) -> None:
    """As the paper does: every level rare means one level, its pairs then cost no
    noise; the split back keeps what the 1-way release said."""
    class Fixed(Measurer):
        def __init__(self) -> None:
            super().__init__(_sites(lung1, Path(tempfile.mkdtemp())), discretization,
                             backend="dp", epsilon=1.0, delta=1e-6)

        def select(self, candidates: Candidates, rho: float, *, sensitivity: float) -> int:
            raise AssertionError

    discretization = Discretization.of(lung1.schema, bins=6)
    measurer = Fixed()
    flat = NoisyMarginal(("age",), np.array([20.0, 25, 18, 29, 22, 26]), 10.0)
    skewed = NoisyMarginal(("ph_ecog",), np.array([70.0, 50, 2, -4, 1, 3]), 30.0)
    out = compressed(measurer, [flat, skewed])
    merged = measurer.discretization.merged
    assert merged["age"] == (0,) * 6 and out[0].values.tolist() == [140.0]
    assert out[0].scale.tolist() == [pytest.approx(np.sqrt(6))]
    assert merged["ph_ecog"] == (0,) * 6
    shares = measurer.discretization.shares
    assert np.ptp(shares["age"]) < np.ptp(flat.values)  # shrunk toward the mean
    assert shares["ph_ecog"][0] > shares["ph_ecog"][1] > shares["ph_ecog"][2]


def test_mst_merges_rare_levels_and_measures_pairs_on_them(lung1: Workload, tmp_path: Path) -> None:
    with Curator(_sites(lung1, tmp_path)[0], Discretization.of(lung1.schema), epsilon=2.0,
                 delta=1e-6) as measurer:
        fit = MST(iterations=200).fit(measurer)
    merged = fit.discretization.merged
    assert merged, "lung at ε = 2 has rare levels"
    for m in fit.measurements:
        if len(m.clique) == 1 and m.clique[0] in merged:
            rare = sum(1 for v in merged[m.clique[0]] if v == max(merged[m.clique[0]]))
            assert m.values.size == max(merged[m.clique[0]]) + 1
            assert m.scale.tolist() == [1.0] * (m.values.size - 1) + [pytest.approx(
                np.sqrt(rare))]
            assert m.values[-1] < 3 * m.sigma * rare  # each merged level was under 3σ
    two_way = [m for m in fit.measurements if len(m.clique) == 2]
    for m in two_way:
        assert m.values.size == fit.model.domain.size(m.clique)
    rows = fit.sample(400, seed=2)
    assert len(rows) == 400 and rows["age"].dtype == "Int64"  # whole numbers stay whole
    for column in lung1.schema.columns:
        if column.kind in ("integer", "continuous", "time_to_event"):
            lower, upper = column.bounds()
            assert rows[column.name].dropna().between(lower, upper).all(), column.name


def test_a_noisy_marginal_needs_one_positive_scale_per_cell() -> None:
    with pytest.raises(PetError, match="one finite factor > 0 per cell"):
        NoisyMarginal(("a",), np.array([1.0, 2.0]), 1.0, np.array([1.0]))
    with pytest.raises(PetError, match="one finite factor > 0 per cell"):
        NoisyMarginal(("a",), np.array([1.0, 2.0]), 1.0, np.array([1.0, 0.0]))


def test_marginals_are_released_only_under_dp(lung1: Workload) -> None:
    query = Marginals((("sex",),))
    with pytest.raises(PetError, match="only be released under a DP backend"):
        Study(lung1.sites()).run(query)


def test_bins_come_from_the_schema_and_values_stay_inside_them(lung1: Workload) -> None:
    discretization = Discretization.of(lung1.schema, bins=8)
    assert discretization == Discretization.of(lung(2).schema, bins=8)  # no data involved
    domain = discretization.domain()
    rng = np.random.default_rng(5)
    levels = np.column_stack([rng.integers(0, size, 5000) for size in domain.sizes])
    values = discretization.decode(levels, seed=3)
    for column in lung1.schema.columns:
        known = values[column.name].dropna()
        if column.kind in ("integer", "continuous", "time_to_event"):
            lower, upper = column.bounds()
            assert known.between(lower, upper).all(), column.name
        if column.kind == "integer":
            assert (known == np.round(known)).all(), column.name
    assert np.array_equal(discretization.encode(values), levels)


def test_a_curator_charges_once_and_itemises_every_step(lung1: Workload,
                                                       tmp_path: Path) -> None:
    (site,) = _sites(lung1, tmp_path)
    epsilon, delta = 1.0, 1e-6
    with Curator(site, Discretization.of(lung1.schema), epsilon=epsilon,
                 delta=delta) as measurer:
        fit = MST(iterations=200).fit(measurer)
        request = measurer.request
    whole = rho_of(epsilon, delta)
    assert fit.rho == pytest.approx(whole, rel=1e-6) and fit.rho <= whole
    assert fit.epsilon_spent <= epsilon
    steps = [s.step for s in fit.spends]
    d = len(lung1.schema.columns)
    # lung's 228 rows at ε = 1: the columns twice (a faint signal: pet.synth.allocation)
    assert steps == ["measure"] * 2 + ["select"] * (d - 1) + ["measure"]
    assert [len(c) for c in fit.spends[-1].cliques] == [2] * (d - 1)
    budget = site.ledger.budget(site.dataset)
    assert budget.spent_rho == pytest.approx(whole, rel=1e-12) and budget.releases == 1
    assert site.ledger.spent_rho(request, site.dataset) == pytest.approx(fit.rho, abs=1e-12)


def test_a_site_refuses_a_release_past_the_rho_its_charge_affords(lung1: Workload,
                                                                 tmp_path: Path) -> None:
    (site,) = _sites(lung1, tmp_path)
    with Curator(site, Discretization.of(lung1.schema), epsilon=1.0,
                 delta=1e-6) as measurer:
        measurer.measure([("sex",)], rho_of(1.0, 1e-6) * 0.75)
        with pytest.raises(BudgetError, match="cannot spend"):
            measurer.measure([("dead",)], rho_of(1.0, 1e-6) * 0.5)
        assert site.ledger.spent_rho(measurer.request, site.dataset) == pytest.approx(
            rho_of(1.0, 1e-6) * 0.75, rel=1e-12)


@pytest.mark.parametrize("method", [AIM(iterations=200, round_iterations=30),
                                    MWEM(iterations=200, round_iterations=30)])
def test_adaptive_methods_spend_their_whole_budget_and_no_more(
        lung1: Workload, tmp_path: Path, method: Synthesizer) -> None:
    (site,) = _sites(lung1, tmp_path)
    with Curator(site, Discretization.of(lung1.schema, bins=6), epsilon=2.0,
                 delta=1e-6) as measurer:
        fit = method.fit(measurer)
    assert rho_of(2.0, 1e-6) * (1 - 1e-5) <= fit.rho <= rho_of(2.0, 1e-6)
    assert {s.step for s in fit.spends} == {"measure", "select"}
    sample = fit.sample(300, seed=4)
    assert list(sample.columns) == list(lung1.schema.names) and len(sample) == 300
    lung1.schema.validate(sample)  # every value inside the schema


@pytest.mark.parametrize("share", [0.25, 0.4])
def test_aim_measures_every_column_first_with_its_share_of_the_budget(
        lung1: Workload, tmp_path: Path, share: float) -> None:
    (site,) = _sites(lung1, tmp_path)
    with Curator(site, Discretization.of(lung1.schema, bins=6), epsilon=1.0,
                 delta=1e-6) as measurer:
        fit = AIM(iterations=50, round_iterations=10, oneway_share=share).fit(measurer)
    first = fit.spends[0]
    assert first.step == "measure"
    assert first.cliques == tuple((name,) for name in lung1.schema.names)
    assert first.rho == pytest.approx(share * rho_of(1.0, 1e-6), rel=1e-6)
    assert len(fit.spends) > 1  # the rounds spend the rest
    assert fit.settings["oneway_share"] == share


@pytest.mark.parametrize("share", [0, 0.5, 1, -0.1, 1.5, "0.3", True, float("nan")])
def test_aim_refuses_a_1_way_share_outside_0_to_half(share: float) -> None:
    with pytest.raises(ArgumentError, match="oneway_share"):
        AIM(oneway_share=share)


def test_aim_candidates_are_the_workload_closure_weighted_by_overlap() -> None:
    domain = Discretization.of(lung(1).schema).domain()
    cliques, weights = closure(domain, [("age", "sex"), ("sex", "dead")])
    assert set(cliques) == {("dead",), ("age",), ("sex",), ("dead", "sex"), ("age", "sex")}
    assert len(cliques) == 5 and [len(c) for c in cliques] == [1, 1, 1, 2, 2]
    assert weights[("sex",)] == 2 and weights[("age", "sex")] == 3 and weights[("age",)] == 1


def test_a_federation_measures_with_the_noise_of_one_central_release(tmp_path: Path) -> None:
    workload = cohort(3000, 3, 7)
    discretization = Discretization.of(workload.schema, bins=4)
    sites = _sites(workload, tmp_path)
    clique = ("sex", "smoking", "diabetes")
    exact = _crosstab(workload.pooled(), discretization, clique,
                      discretization.domain().shape(clique)).ravel()
    residuals = []
    with Federation(sites, discretization, backend="he+dp", epsilon=40.0,
                    delta=1e-5) as measurer:
        for _ in range(8):
            (noisy,) = measurer.measure([clique], 0.05)
            residuals.append((noisy.values - exact) / noisy.sigma)
    # The table's σ in one central release at ρ = 0.05: of ρ, n (importance √1e-6 = 0.001)
    # and the table (importance 1) take 0.001/1.001 and 1/1.001, and ρ_table = 1/(2σ²).
    assert noisy.sigma == pytest.approx(1 / np.sqrt(2 * 0.05 / 1.001), rel=1e-6)
    # Standard normal residuals: a KS test that fails wrongly once in a million runs.
    assert stats.kstest(np.concatenate(residuals), "norm").pvalue > 1e-6
    for site in sites:
        assert site.ledger.spent_rho(measurer.request, site.dataset) == pytest.approx(0.4)


def test_the_data_card_accounts_for_every_step(lung1: Workload, tmp_path: Path) -> None:
    (site,) = _sites(lung1, tmp_path)
    with Curator(site, Discretization.of(lung1.schema), epsilon=1.0, delta=1e-6) as measurer:
        fit = MST(iterations=100).fit(measurer)
    data = json.loads(json.dumps(card(fit, Release(("site-1",), "dp", seed=9, rows=100))))
    privacy = data["privacy"]
    assert sum(s["rho"] for s in privacy["itemised"]) == pytest.approx(privacy["rho_spent"])
    assert privacy["charged"] == {"epsilon": 1.0, "delta": 1e-6}
    assert privacy["spent_as"]["epsilon"] <= 1.0
    assert [m["clique"] for m in data["measured"]] == [list(m.clique) for m in fit.measurements]
    assert data["versions"]["opendp"] and data["seed"] == 9
    text = markdown(data)
    assert text.count("| measure |") == 3 and "select" in text  # the columns twice


def test_a_saved_fit_samples_the_same_rows_after_loading(lung1: Workload, tmp_path: Path) -> None:
    (site,) = _sites(lung1, tmp_path)
    with Curator(site, Discretization.of(lung1.schema), epsilon=1.0, delta=1e-6) as measurer:
        fit = MST(iterations=100).fit(measurer)
    loaded = load(save(fit, tmp_path / "fit"))
    assert loaded.spends == fit.spends and loaded.rho == fit.rho
    assert [m.clique for m in loaded.measurements] == [m.clique for m in fit.measurements]
    pd.testing.assert_frame_equal(loaded.sample(400, seed=2), fit.sample(400, seed=2))


def test_the_command_line_fits_and_samples_with_a_data_card(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pet.cli import main

    fitted = tmp_path / "fit"
    assert main(["synth", "fit", "--workload", "lung", "--sites", "3", "--method", "mwem",
                 "--epsilon", "2", "--bins", "6", "--out", str(fitted)]) == 0
    out = tmp_path / "release" / "synthetic.csv"
    assert main(["synth", "sample", str(fitted), "--rows", "150", "--seed", "1",
                 "--out", str(out), "--json"]) == 0
    reported = json.loads(capsys.readouterr().out.split("\n", 1)[1])  # after fit's own line
    assert reported == {"rows": 150, "table": str(out), "card": str(out.parent / "card.json"),
                        "card_markdown": str(out.parent / "card.md")}
    rows = pd.read_csv(out)
    assert len(rows) == 150 and list(rows.columns) == list(lung(1).schema.names)
    data = json.loads((out.parent / "card.json").read_text())
    assert data["backend"] == "he+dp" and data["sites"] == ["site-1", "site-2", "site-3"]
    assert data["method"] == "mwem" and data["privacy"]["charged"]["epsilon"] == 2.0
    assert (out.parent / "card.md").read_text().startswith("# Data card: synthetic lung")


class Recording(Federation):
    """A federation that keeps its noisy releases: those its selections scored, and its
    measurements as released (before any post-processing)."""

    selections: list[list[np.ndarray]]
    released: list[NoisyMarginal]

    def measure(self, cliques: Sequence[Clique], rho: float) -> list[NoisyMarginal]:
        measured = super().measure(cliques, rho)
        self.released = [*getattr(self, "released", []), *measured]
        return measured

    def noisy(self, cliques: Sequence[Clique], rho: float) -> list[np.ndarray]:
        released = super().noisy(cliques, rho)
        self.selections = [*getattr(self, "selections", []), released]
        return released


class Replay(Measurer):
    """A measurer that hands back another fit's noisy releases in order, touching no data,
    and itemises each step as the fit's measurer did."""

    def __init__(self, fit: Fit, recorded: Recording, discretization: Discretization) -> None:
        super().__init__([], discretization, backend="he+dp", epsilon=fit.epsilon,
                         delta=fit.delta, opener=lambda backend: None)
        self.selections, self.measured = iter(recorded.selections), iter(recorded.released)

    def measure(self, cliques: Sequence[Clique], rho: float) -> list[NoisyMarginal]:
        self._spent(Spend("measure", tuple(cliques), rho))
        return [next(self.measured) for _ in cliques]

    def noisy(self, cliques: Sequence[Clique], rho: float) -> list[np.ndarray]:
        self._spent(Spend("select", tuple(cliques), rho))
        return next(self.selections)

    def select(self, candidates: Candidates, rho: float, *, sensitivity: float) -> int:
        raise AssertionError("a federation's MST selects on one release")


def test_the_federated_fit_is_the_model_of_its_noisy_marginals_alone(tmp_path: Path) -> None:
    workload = lung(3)
    discretization = Discretization.of(workload.schema, bins=6)
    with Recording(_sites(workload, tmp_path), discretization, backend="he+dp", epsilon=2.0,
                   delta=1e-6) as measurer:
        federated = MST(iterations=300).fit(measurer)
    replayed = MST(iterations=300).fit(Replay(federated, measurer, discretization))
    assert federated.discretization.merged, "no level was rare: the replay tests less"
    assert replayed.discretization == federated.discretization
    for clique in [("age", "sex"), ("time", "dead"), ("ph_ecog", "wt_loss", "sex")]:
        assert np.allclose(replayed.model.project(clique), federated.model.project(clique),
                           rtol=1e-12, atol=1e-9)
    # Every measurement's noise is what OpenDP's Gaussian map says its part of ρ buys:
    # each of m tables (importance 1) takes 1/(m + 0.001) of it, n (importance 0.001) the
    # rest; a column measured in several releases, pooled, has what they buy together.
    measures = [s for s in federated.spends if s.step == "measure"]
    for spends, marginal in ((measures[:-1], federated.measurements[0]),
                             (measures[-1:], federated.measurements[-1])):
        gaussian = dp.m.make_gaussian(dp.vector_domain(dp.atom_domain(T=float, nan=False)),
                                      dp.l2_distance(T=float), scale=marginal.sigma)
        share = sum(s.rho / (len(s.cliques) + 0.001) for s in spends)
        assert gaussian.map(1.0) == pytest.approx(share, rel=1e-6)
