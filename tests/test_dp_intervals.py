"""Every DP answer's 95% interval means what it says: over many releases it holds the
answer the same rows give without noise 95% of the time, for counts, proportions, means,
variances, correlations and survival probabilities, under Gaussian and Laplace noise.

Each check draws DRAWS releases (noise by OpenDP, as the sites draw it) and accepts a
coverage in [0.93, 0.97]. At a true coverage of 0.95 that acceptance region is ±4.1
binomial standard errors wide: one check fails by chance with probability 4·10⁻⁵
(`test_the_acceptance_region_has_the_stated_false_failure_rate`), all of them together
below 10⁻³."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from pet.backends.dp import LocalDP
from pet.queries import (
    Correlation,
    Count,
    Histogram,
    KaplanMeier,
    Mean,
    Query,
    StdDev,
    Variance,
)
from pet.workloads import Workload, cohort

DRAWS = 2000
LOW, HIGH = 0.93, 0.97


@pytest.fixture(scope="module")
def cohort3() -> Workload:
    return cohort(1500, 3, 21)


def coverage(workload: Workload, query: Query, backend: LocalDP, pick: int) -> float:
    """The share of DRAWS releases whose interval for number `pick` of the answer holds
    the exact answer's number."""
    schema = workload.schema
    layout = query.layout(schema)
    partials = [site.partial(query) for site in workload.sites()]
    exact = query.numbers(query.finalize(np.sum(partials, axis=0), schema))[pick]
    held = 0
    for _ in range(DRAWS):
        combined = backend.combine([backend.protect(p, layout) for p in partials], layout)
        low, high = backend.conclude(query, schema, None, combined, layout).interval
        held += low[pick] <= exact <= high[pick]
    return held / DRAWS


def test_the_acceptance_region_has_the_stated_false_failure_rate() -> None:
    """The false-failure rate stated above, from the binomial distribution itself."""
    binomial = stats.binom(DRAWS, 0.95)
    outside = binomial.cdf(LOW * DRAWS - 1) + binomial.sf(HIGH * DRAWS)
    assert outside < 1e-4


@pytest.mark.parametrize("delta", [1e-6, 0.0], ids=["gaussian", "laplace"])
@pytest.mark.parametrize(("query", "pick"), [
    (Count(where="age >= 60"), 0),
    (Mean("diabetes"), 0),
    (Mean("sbp"), 0),
], ids=["count", "proportion", "mean"])
def test_counts_proportions_and_means_cover(cohort3: Workload, query: Query, pick: int,
                                            delta: float) -> None:
    """At ε = 0.25: a count is rounded after its noise, so its interval is whole rows and
    its coverage steps (at ε = 1 under Laplace noise of scale 1 the least whole interval
    holding 95% holds 96.6%, too near 0.97 to test); noise four times wider makes the
    steps fine."""
    backend = LocalDP(epsilon=0.25, delta=delta)
    assert LOW <= coverage(cohort3, query, backend, pick) <= HIGH


@pytest.mark.parametrize(("query", "pick"), [
    (Histogram("age", (30, 45, 60, 75, 90)), 2),
    (Variance("bmi"), 0),
    (StdDev("sbp"), 0),
    (Correlation(("age", "sbp", "bmi")), 1),
    (KaplanMeier("cvd_time", "cvd_event", grid=8), 4),
], ids=["histogram", "variance", "stddev", "correlation", "survival"])
def test_variances_correlations_and_survival_cover(cohort3: Workload, query: Query,
                                                   pick: int) -> None:
    backend = LocalDP(epsilon=1.0, delta=1e-6)
    assert LOW <= coverage(cohort3, query, backend, pick) <= HIGH
