"""Output disclosure control: each site refuses small cells, small subgroups and
over-parameterised regressions, without revealing the count that broke its rule."""

from __future__ import annotations

import pandas as pd
import pytest

from pet.disclosure import DisclosurePolicy
from pet.errors import DisclosureError
from pet.queries import Contingency, Count, LinearRegression, Mean
from pet.schema import Categorical, Continuous, Schema
from pet.site import Site
from pet.study import Study
from pet.table import FrameTable

SCHEMA = Schema((Continuous("x", 0, 10), Categorical("g", ("a", "b", "c"))))


def study(*parts: pd.DataFrame, policy: DisclosurePolicy | None = None) -> Study:
    return Study([Site(f"site-{i + 1}", FrameTable(p, SCHEMA), policy=policy)
                  for i, p in enumerate(parts)])


def rows(xs: list[float], gs: str) -> pd.DataFrame:
    return pd.DataFrame({"x": xs, "g": list(gs)})


BIG = rows([float(i % 10) for i in range(30)], "abc" * 10)


def test_a_small_non_empty_cell_is_refused_by_the_site_that_holds_it() -> None:
    small = rows([1.0, 2.0, 3.0, 4.0], "aaab")  # one row in cell 'b'
    with pytest.raises(DisclosureError) as caught:
        study(BIG, small).run(Contingency(("g",)))
    assert caught.value.site == "site-2"
    assert caught.value.limit == 3
    assert "'counts' cell has fewer than 3 rows" in str(caught.value)
    assert "1" not in str(caught.value).replace("site-1", "")  # the small count stays hidden


def test_empty_cells_are_allowed() -> None:
    only_a = rows([1.0, 2.0, 3.0], "aaa")
    assert study(BIG, only_a).run(Contingency(("g",))).value.tolist() == [13, 10, 10]


def test_a_small_subgroup_is_refused_even_for_a_mean() -> None:
    with pytest.raises(DisclosureError, match="non-empty subgroup has fewer than 3"):
        study(BIG, rows([1.0, 9.0, 9.0, 9.0], "abbb")).run(Mean("x", where="g == 'a'"))


def test_the_threshold_is_per_site() -> None:
    two = rows([1.0, 2.0], "aa")
    with pytest.raises(DisclosureError):
        study(BIG, two).run(Count())
    lenient = [Site("strict", FrameTable(BIG, SCHEMA)),
               Site("lenient", FrameTable(two, SCHEMA), policy=DisclosurePolicy(min_cell=2))]
    assert Study(lenient).run(Count()).value == 32
    with pytest.raises(DisclosureError, match="'strict' refused"):
        Study(lenient).run(Count(where="x > 8.5 and g == 'a'"))


def test_regressions_with_too_many_parameters_per_row_are_refused() -> None:
    few = rows([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], "abcabcab")
    with pytest.raises(DisclosureError, match=r"fits 3 parameters, more than 0.33 per row"):
        study(BIG, few).run(LinearRegression("x", ("g",)))
    policy = DisclosurePolicy(max_parameter_ratio=0.5)
    assert study(BIG, few, policy=policy).run(LinearRegression("x", ("g",))).n == 38


@pytest.mark.parametrize("options", [{"min_cell": 0}, {"max_parameter_ratio": 0},
                                     {"max_parameter_ratio": 1.5}])
def test_nonsense_policies_fail_when_made(options: dict) -> None:
    with pytest.raises(ValueError):
        DisclosurePolicy(**options)


def test_a_site_without_rows_in_the_subgroup_contributes_zeros() -> None:
    empty = rows([], "")
    result = study(BIG, empty).run(LinearRegression("x", ("g",)))
    assert result.n == 30
    assert study(BIG, empty).run(Mean("x")).value == pytest.approx(4.5)
