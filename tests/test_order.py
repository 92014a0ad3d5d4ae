"""Exact quantiles by search: numpy's "inverted_cdf" quantile to the last bit, on real
workloads, negative and tied values, and at the extremes of the probabilities."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pet.errors import QueryError
from pet.queries import ExactQuantiles
from pet.queries.order import Interval, from_key, keys
from pet.schema import Continuous, Integer, Schema
from pet.site import Site
from pet.study import Study
from pet.table import FrameTable
from pet.workloads import Workload
from tests.conftest import NO_CELL_LIMIT

PROBS = (0.001, 0.1, 0.25, 0.5, 0.77, 0.999)


def test_keys_order_like_the_values_and_map_back() -> None:
    values = np.array([-np.inf, -1e300, -2.5, -0.0, 0.0, 5e-324, 1.0, 1.0000000000000002, 7e10])
    k = keys(values)
    assert np.all(np.diff(k[[0, 1, 2, 4, 5, 6, 7, 8]]) > 0)
    assert k[3] == k[4]  # −0.0 is 0.0
    assert [from_key(int(x)) for x in k] == [float(v) + 0.0 for v in values]


@pytest.mark.parametrize("branching", [2, 16, 256])
def test_lung_quantiles_are_numpys_inverted_cdf(lung3: Workload, branching: int) -> None:
    study = lung3.study(policy=NO_CELL_LIMIT)
    pooled = lung3.pooled()
    for column in ("age", "meal_cal", "wt_loss"):
        result = study.run(ExactQuantiles(column, PROBS, branching=branching))
        want = np.quantile(pooled[column].dropna(), PROBS, method="inverted_cdf")
        np.testing.assert_array_equal(result.value, want)
        assert result.rounds <= ExactQuantiles(column, PROBS, branching=branching).max_rounds


def test_negative_tied_and_tiny_values_split_over_sites() -> None:
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.normal(-3, 1e-9, 50), np.full(40, 2.5), rng.uniform(-10, 10, 31),
                        [5e-324, -5e-324, 0.0]])
    k = rng.integers(-5, 6, len(x)).astype(float)
    frame = pd.DataFrame({"x": rng.permutation(x), "k": k})
    schema = Schema((Continuous("x", -10.0, 10.0), Integer("k", -5, 5)))
    sites = [Site(f"s{i}", FrameTable(part, schema), policy=NO_CELL_LIMIT)
             for i, part in enumerate((frame.iloc[:40], frame.iloc[40:90], frame.iloc[90:]))]
    for column in ("x", "k"):
        result = Study(sites).run(ExactQuantiles(column, PROBS, branching=8))
        want = np.quantile(frame[column], PROBS, method="inverted_cdf")
        np.testing.assert_array_equal(result.value, want)


def test_a_round_state_from_a_peer_is_checked_before_it_is_used(lung3: Workload) -> None:
    query = ExactQuantiles("age", (0.25, 0.5), branching=16)
    schema = lung3.schema
    first = query.initial_state(schema)
    sites = lung3.sites(NO_CELL_LIMIT)
    narrowed = Interval(1, (first.lo[0] + 5, first.lo[1]), (first.lo[0] + 9, first.hi[1]))
    assert sites[0].partial(query, narrowed).shape == (query.layout(schema, narrowed).size,)
    bad = [None, "null", {"lo": 1}, Interval(0, first.lo[:1], first.hi[:1]),
           Interval(0, (first.lo[0] - 1, first.lo[1]), first.hi),
           Interval(0, (first.hi[0], first.lo[1]), (first.lo[0], first.hi[1])),
           Interval(0, (1.5, first.lo[1]), first.hi), Interval(-1, first.lo, first.hi),
           Interval(query.max_rounds, first.lo, first.hi)]
    for state in bad:
        with pytest.raises(QueryError, match="ExactQuantiles"):
            sites[0].partial(query, state)
        with pytest.raises(QueryError, match="ExactQuantiles"):
            query.finalize(np.zeros(query.layout(schema, first).size), schema, state)
