"""Clipping bounds: values outside a query's tighter public bounds are clamped into them
and counted; answers equal numpy's on the clamped values; under DP the noise shrinks with
the range, so statistics the schema's wide bounds bury in noise can be estimated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pet.backends.central_dp import HEDP
from pet.backends.dp import LocalDP
from pet.clipping import private_bounds, split_budget
from pet.errors import QueryError
from pet.mechanisms import rho_of
from pet.queries import Correlation, KaplanMeier, LinearRegression, Mean, Variance
from pet.study import Study
from pet.workloads import Workload
from tests.conftest import NO_CELL_LIMIT


def _dp_study(workload: Workload, folder: Path, epsilon: float = 1.0) -> Study:
    sites = workload.sites(NO_CELL_LIMIT, ledgers=folder)
    for site in sites:
        site.ledger.set_budget(site.dataset, 1000.0, 1e-3)
    return Study(sites, backend=LocalDP(epsilon=epsilon))


def test_clipped_moments_equal_numpy_on_the_clamped_values(lung3: Workload) -> None:
    pooled = lung3.pooled()
    study = lung3.study(policy=NO_CELL_LIMIT)
    ages = pooled.age.to_numpy(dtype=float)
    clamped = np.clip(ages, 50, 70)
    outside = int(np.sum((ages < 50) | (ages > 70)))
    mean = study.run(Mean("age", clip={"age": (50, 70)}))
    assert mean.value == pytest.approx(clamped.mean(), rel=1e-12)
    assert mean.clipped == {"age": outside} and outside > 0
    variance = study.run(Variance("age", clip={"age": (50, 70)}))
    assert variance.value == pytest.approx(clamped.var(ddof=1), rel=1e-10)


def test_a_clipped_regression_equals_least_squares_on_the_clamped_rows(
        lung3: Workload) -> None:
    frame = lung3.pooled()[["wt_loss", "age", "ph_karno"]].dropna()
    y = np.clip(frame.wt_loss.to_numpy(float), -10, 40)
    x = np.column_stack([np.ones(len(frame)), np.clip(frame.age.to_numpy(float), 40, 80),
                         frame.ph_karno.to_numpy(float)])
    want = np.linalg.lstsq(x, y, rcond=None)[0]
    query = LinearRegression("wt_loss", ("age", "ph_karno"),
                             clip={"wt_loss": (-10, 40), "age": (40, 80)})
    fit = lung3.study(policy=NO_CELL_LIMIT).run(query)
    np.testing.assert_allclose(fit.value.coef, want, rtol=1e-9)
    assert set(fit.clipped) == {"wt_loss", "age"}


@pytest.mark.parametrize(("clip", "words"), [
    ({"age": (10, 80)}, r"within the schema's \[18, 100\]"),
    ({"age": (60, 50)}, "must be increasing"),
    ({"sex": (0, 1)}, "only numeric columns take clipping bounds"),
    ({"wt_loss": (0, 10)}, "a column the query does not read"),
    ({"age": ("a", 1)}, "must be two numbers"),
])
def test_bad_clipping_bounds_are_refused_by_name(lung3: Workload, clip: dict,
                                                 words: str) -> None:
    with pytest.raises(QueryError, match=words):
        query = Mean("age", clip=clip) if "sex" not in clip else Mean("sex", clip=clip)
        lung3.study(policy=NO_CELL_LIMIT).run(query)


def test_a_time_to_event_column_clips_its_follow_up_from_zero(lung3: Workload) -> None:
    with pytest.raises(QueryError, match="start at 0"):
        KaplanMeier("time", "dead", grid=(500, 1000), clip={"time": (10, 1000)}).validate(
            lung3.schema)
    curve = lung3.study(policy=NO_CELL_LIMIT).run(
        KaplanMeier("time", "dead", grid=(250, 500, 1000), clip={"time": (0, 1000)}))
    assert curve.clipped["time"] == int(np.sum(lung3.pooled().time > 1000))


def test_under_dp_the_noise_shrinks_with_the_clipping_range(lung3: Workload,
                                                           tmp_path: Path) -> None:
    """Variance noise scales with the range squared: age clipped from [18, 100] to
    [40, 80] narrows the 95% interval about (82/40)² = 4.2 times (the median ratio over
    200 pairs was 3.8, and 5.5% of single ratios fell below 2.5, so the median of 15
    falls below it with probability under 10⁻⁶)."""
    study = _dp_study(lung3, tmp_path)

    def width(result: object) -> float:  # the upper half: the lower one may stop at 0
        _, high = result.interval  # type: ignore[attr-defined]
        return float(high[0] - result.value)  # type: ignore[attr-defined]

    ratios = []
    for _ in range(15):
        wide = study.run(Variance("age"))
        narrow = study.run(Variance("age", clip={"age": (40, 80)}))
        ratios.append(width(wide) / width(narrow))
    assert np.median(ratios) > 2.5
    assert narrow.privacy.epsilon == wide.privacy.epsilon == 1.0


def test_clipping_makes_lungs_correlations_estimable_under_dp(lung3: Workload,
                                                             tmp_path: Path) -> None:
    """With the schema's bounds, age's noisy spread on 228 patients is buried at ε = 1
    even under central noise (NaN); clipped to where most patients lie, the spreads stand
    out of the noise and most draws estimate every correlation."""
    sites = lung3.sites(NO_CELL_LIMIT, ledgers=tmp_path)
    for site in sites:
        site.ledger.set_budget(site.dataset, 1000.0, 1e-3)
    columns = ("age", "ph_karno", "wt_loss")
    clip = {"age": (40, 80), "ph_karno": (50, 100), "wt_loss": (-10, 40)}
    with Study(sites, backend=HEDP(epsilon=1.0, delta=1e-6)) as study:
        wide = [np.isfinite(study.run(Correlation(columns)).value).all() for _ in range(10)]
        narrow = [np.isfinite(study.run(Correlation(columns, clip=clip)).value).all()
                  for _ in range(10)]
    assert np.mean(wide) <= 0.3 and np.mean(narrow) >= 0.7


def test_a_budget_split_for_private_bounds_costs_what_the_query_alone_would(
        lung3: Workload, tmp_path: Path) -> None:
    """Bounds from a DP histogram at a tenth of the query's ρ, then the variance at the
    rest: the ledger's two charges add up to the ρ OpenDP gives (ε, δ) alone, and the
    bounds lie on the public grid around where the patients' ages are."""
    first, rest = split_budget(1.0, 1e-6, 0.1)
    assert rho_of(first, 1e-6) + rho_of(rest, 1e-6) == pytest.approx(rho_of(1.0, 1e-6),
                                                                     rel=1e-6)
    sites = lung3.sites(NO_CELL_LIMIT, ledgers=tmp_path)
    for site in sites:
        site.ledger.set_budget(site.dataset, 10.0, 1e-5)
    with Study(sites, backend=HEDP(epsilon=first, delta=1e-6)) as study:
        clip = private_bounds(study, "age")
    lower, upper = clip["age"]
    ages = lung3.pooled().age
    assert 18 <= lower < ages.median() < upper <= 100
    steps = (np.array([lower, upper]) - 18) / (82 / 32)  # the grid: 32 bins of 82 years
    np.testing.assert_allclose(steps, np.rint(steps), atol=1e-9)
    with Study(sites, backend=HEDP(epsilon=rest, delta=1e-6)) as study:
        result = study.run(Variance("age", clip=clip))
    assert np.isfinite(result.value)
    for site in sites:
        assert site.ledger.budget(site.dataset).spent_rho == pytest.approx(
            rho_of(1.0, 1e-6), rel=1e-6)
    with pytest.raises(QueryError, match="under a DP backend"):
        private_bounds(lung3.study(policy=NO_CELL_LIMIT), "age")
