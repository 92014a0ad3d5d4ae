"""Hypothesis tests from pooled summary statistics: what a group comparison answers once
the sites' sums are added (post-processing only; no test ever sees a row).

Each function takes the aggregated statistics a query's layout holds (per-group counts,
means and variances, or a contingency table) and returns a `Test`. Under DP the noise on
those statistics widens the test's reference distribution: callers pass its variance,
so that a p-value is not smaller than the noisy data support.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import special


@dataclass(frozen=True)
class Test:
    """A test's statistic, its degrees of freedom (one or two, e.g. F's numerator and
    denominator) and two-sided p-value, with the test's name."""

    method: str
    statistic: float
    df: tuple[float, ...]
    p: float

    def __str__(self) -> str:
        df = ", ".join(f"{d:.4g}" for d in self.df)
        return f"{self.method}: statistic {self.statistic:.4g} (df {df}), p = {self.p:.3g}"


WELCH = "Welch's t-test"
ANOVA = "one-way ANOVA"
CHI_SQUARE = "χ² test"
LOG_RANK = "log-rank test"


def untestable(method: str, dfs: int = 1) -> Test:
    """The answer of a test the data cannot decide (too few rows or groups, e.g. after DP
    noise): statistic, `dfs` degrees of freedom and p all NaN."""
    return Test(method, np.nan, (np.nan,) * dfs, np.nan)


def welch(n: ArrayLike, mean: ArrayLike, var: ArrayLike, *,
          noise_var: float = 0.0) -> Test:
    """Welch's unequal-variance t-test of two groups from their sizes, means and unbiased
    variances (scipy's `ttest_ind_from_stats(equal_var=False)`). `noise_var` is the
    variance that DP noise adds to the difference of means; it joins the sampling
    variance, and the Welch–Satterthwaite degrees of freedom are kept."""
    n, mean, var = _groups(n, mean, var, 2)
    se2 = float(np.sum(var / n))
    total = se2 + noise_var
    if not total > 0:
        return untestable(WELCH)
    df = se2**2 / float(np.sum((var / n) ** 2 / (n - 1))) if se2 > 0 else np.inf
    t = float(mean[0] - mean[1]) / math.sqrt(total)
    return Test(WELCH, t, (df,), float(2 * special.stdtr(df, -abs(t))))


def mean_difference_noise(half: float, n: ArrayLike, scaled_mean: ArrayLike,
                          sum_sd: ArrayLike, count_sd: ArrayLike) -> float:
    """The variance DP noise adds to the difference of two groups' means, to first order:
    each mean c + h·S/n (S the sum of values scaled by 1/h) moves by
    h·(dS − (S/n)·dn)/n, independently per group, for noise SDs `sum_sd` on S and
    `count_sd` on n; `welch` takes it as `noise_var`."""
    n, scaled_mean, sum_sd, count_sd = (np.asarray(a, dtype=np.float64)
                                        for a in (n, scaled_mean, sum_sd, count_sd))
    with np.errstate(divide="ignore", invalid="ignore"):
        per_group = (sum_sd**2 + scaled_mean**2 * count_sd**2) / n**2
    return float(half**2 * np.sum(per_group))


def anova(n: ArrayLike, mean: ArrayLike, var: ArrayLike) -> Test:
    """One-way ANOVA's F test of k ≥ 2 groups from their sizes, means and unbiased
    variances (as scipy's `f_oneway` on the rows)."""
    n, mean, var = _groups(n, mean, var, None)
    total = float(np.sum(n))
    grand = float(np.sum(n * mean)) / total
    between = float(np.sum(n * (mean - grand) ** 2))
    within = float(np.sum((n - 1) * var))
    df = (len(n) - 1.0, total - len(n))
    if not (within > 0 and df[1] > 0):
        return Test(ANOVA, np.nan, df, np.nan)
    f = (between / df[0]) / (within / df[1])
    return Test(ANOVA, f, df, float(special.fdtrc(*df, np.maximum(f, 0.0))))


def chi_square(table: ArrayLike, *, yates: bool = True) -> Test:
    """Pearson's χ² test of independence of a contingency table's rows and columns
    (scipy's `chi2_contingency`; with `yates`, the continuity correction of a 2 × 2
    table). Rows and columns with no counts are dropped first: they carry no
    information, and scipy refuses a table with a zero expected count."""
    counts = np.asarray(table, dtype=np.float64)
    counts = counts[counts.sum(axis=1) > 0][:, counts.sum(axis=0) > 0]
    name = CHI_SQUARE + (" (Yates)" if yates and counts.shape == (2, 2) else "")
    if counts.ndim != 2 or min(counts.shape) < 2:
        return Test(name, np.nan, (np.nan,), np.nan)
    from scipy import stats  # scipy.stats takes a quarter second to import: only here

    statistic, p, dof, _ = stats.chi2_contingency(counts, correction=yates)
    return Test(name, float(statistic), (float(dof),), float(p))


def log_rank(events: ArrayLike, at_risk: ArrayLike) -> Test:
    """The (stratified) log-rank test of k groups from their events and numbers at risk at
    each time, as arrays of shape (strata, groups, times): per stratum and time the
    expected events and the hypergeometric covariance of the groups' events given the
    total, summed over times and strata; χ² = (O − E)ᵀV⁻(O − E) over the first k − 1
    groups, k − 1 df (lifelines' `multivariate_logrank_test` for one stratum). Groups
    with nobody at risk are dropped first."""
    events, at_risk = (np.asarray(a, dtype=np.float64) for a in (events, at_risk))
    present = at_risk.sum(axis=(0, 2)) > 0
    events, at_risk = events[:, present], at_risk[:, present]
    k = int(present.sum())
    if k < 2:
        return untestable(LOG_RANK)
    total = at_risk.sum(axis=1, keepdims=True)
    deaths = events.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(total > 0, at_risk / total, 0.0)
        spread = np.where(total > 1, deaths * (total - deaths) / (total - 1), 0.0)
    observed_minus_expected = np.sum(events - deaths * share, axis=(0, 2))
    covariance = (np.diag(np.sum(spread * share, axis=(0, 2)))
                  - np.einsum("st,sgt,sht->gh", spread[:, 0], share, share))
    if not np.trace(covariance) > 0:
        return untestable(LOG_RANK)
    d = observed_minus_expected[:-1]
    statistic = float(d @ np.linalg.pinv(covariance[:-1, :-1]) @ d)
    p = float(special.chdtrc(k - 1, np.maximum(statistic, 0.0)))  # rounding can dip below 0
    return Test(LOG_RANK, statistic, (k - 1.0,), p)


def _groups(n: ArrayLike, mean: ArrayLike, var: ArrayLike,
            k: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The groups' statistics as float arrays, checked to be k (or ≥ 2) of each."""
    arrays = tuple(np.asarray(a, dtype=np.float64).ravel() for a in (n, mean, var))
    sizes = {a.size for a in arrays}
    if len(sizes) != 1 or (k is not None and sizes != {k}) or sizes.pop() < 2:
        raise ValueError(f"expected {k or 'two or more'} groups' sizes, means and variances, "
                         f"got {[a.size for a in arrays]}")
    return arrays
