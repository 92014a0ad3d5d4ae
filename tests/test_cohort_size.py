"""The smallest-cohort table's criterion and search, on hand-made errors (nothing runs)."""

import math

import numpy as np
import pytest

from benchmarks.cohort_size import SIZES, error, smallest, summary, within


def test_error_is_relative_to_the_largest_exact_number() -> None:
    reference = np.array([100.0, -200.0, 50.0])
    assert error("count", reference + np.array([0, 10, 0]), reference) == pytest.approx(0.05)
    assert error("count", np.zeros(2), np.zeros(2)) == 0.0
    assert error("count", np.ones(2), np.zeros(2)) == math.inf


def test_correlations_and_survival_curves_are_judged_in_absolute_terms() -> None:
    reference = np.array([1.0, 0.02])
    assert error("correlation", np.array([1.0, 0.06]), reference) == pytest.approx(0.04)
    assert error("kaplan_meier", np.array([0.9, 0.02]), reference) == pytest.approx(0.1)


def test_nan_and_a_wrong_shape_are_infinitely_wrong() -> None:
    assert error("mean", np.array([math.nan]), np.array([1.0])) == math.inf
    assert error("mean", np.array([1.0, 1.0]), np.array([1.0])) == math.inf


def test_within_takes_the_median_and_counts_a_refusal_as_infinite() -> None:
    assert within("mean", [0.01, 0.10, 0.5])
    assert not within("mean", [0.01, math.inf, math.inf])
    assert not within("mean", [0.01, None, math.nan])
    assert not within("mean", [])
    assert within("correlation", [0.05, 0.04, 1.0])
    assert not within("correlation", [0.06, 0.07, 0.0])


def test_smallest_is_where_every_larger_size_stays_within() -> None:
    table = {100: [0.05] * 5,         # a lucky small size below a failing one
             300: [0.3] * 5,
             1000: [0.09, 0.2, 0.08, math.inf, 0.01],
             3000: [0.02] * 5}
    assert smallest("mean", table) == 1000
    assert smallest("mean", {**table, 3000: [math.inf] * 5}) is None
    assert smallest("mean", {100: [0.0] * 5, 300: [0.0] * 5}) == 100


def test_summary_puts_labels_side_by_side_and_counts_failed_draws() -> None:
    refused = [f"ReleaseError: request '{i:032x}' already released its round 1" for i in (1, 2)]

    def run(size: int | None, failures: list[str]) -> dict:
        return {"commit": "abc", "draws": 5, "seconds": 1.0,
                "smallest": {"count": {"dp": size, "he+dp": 300}},
                "measurements": [{"query": "count", "backend": "dp", "rows_per_site": 100,
                                  "failures": failures}]}

    text = summary({"after": run(1000, []), "before": run(None, refused)})
    assert "| query | within | dp before | dp after | he+dp before | he+dp after |" in text
    assert f"| count | rel ≤ 0.1 | > {SIZES[-1]:,} | 1,000 | 300 | 300 |" in text
    assert ("- count / dp: ReleaseError: request … already released its round 1 (draws at "
            "each size: 100: 2)") in text
    assert text.rstrip().endswith("- none")
