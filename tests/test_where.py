"""Subgroup filters: parsed safely, checked against the schema, equal to pandas' own."""

from __future__ import annotations

import numpy as np
import pytest

from pet.errors import QueryError
from pet.limits import RequestLimits, nesting
from pet.queries import Count
from pet.where import Where
from pet.workloads import Workload
from tests.conftest import NO_CELL_LIMIT


@pytest.mark.parametrize(
    ("text", "pandas"),
    [
        ("sex == 'female' and age >= 50", "sex == 'female' and age >= 50"),
        ("ph_ecog in [2, 3] or dead == 0", "`ph_ecog` in [2, 3] or dead == False"),
        ("not (age < 60 or sex != 'male')", "not (age < 60 or sex != 'male')"),
        ("wt_loss > 5 and meal_cal <= 1000", "wt_loss > 5 and meal_cal <= 1000"),
        ("ph_ecog not in [0]", "ph_ecog.notna() and ph_ecog not in [0]"),
    ],
)
def test_filters_select_the_rows_pandas_selects(lung3: Workload, text: str, pandas: str) -> None:
    pooled = lung3.pooled()
    expected = len(pooled.query(pandas, engine="python"))
    assert lung3.study(policy=NO_CELL_LIMIT).run(Count(where=text)).value == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("sex == 'x'", "'x' is not one of the categories"),
        ("age > 'old'", "'old' is not a number"),
        ("age + 1 > 3", "comparisons of a column with a constant"),
        ("sex < 'male'", "takes == != in"),
        ("age >", "cannot parse"),
        ("age in 3", "'in' takes a list"),
        ("__import__('os')", "comparisons of a column"),
        ("height > 3", "unknown column 'height'"),
    ],
)
def test_bad_filters_are_refused_with_a_reason(lung3: Workload, text: str, words: str) -> None:
    with pytest.raises(QueryError, match=words):
        lung3.study().run(Count(where=text))


def test_missing_values_never_satisfy_a_filter(lung3: Workload) -> None:
    where = Where("not ph_ecog == 1")
    mask = where.mask(lung3.schema, {"ph_ecog": np.array([1.0, 0.0, np.nan])})
    assert mask.tolist() == [False, True, False]
    result = lung3.study(policy=NO_CELL_LIMIT).run(Count(where="not ph_ecog == 1"))
    assert result.missing == {"ph_ecog": 1}
    assert result.value == (lung3.pooled().ph_ecog != 1).sum() - 1


@pytest.mark.parametrize(("text", "depth"), [
    ("age > 1", 0),
    ("not age > 1", 1),
    ("not not age > 1", 2),
    ("not (age > 1 and not sex == 'male')", 3),
    ("not age > 1 and not age < 0", 1),
    ("ph_ecog not in [1, 2]", 1),
    ("age in [-1, -2, -3]", 2),
    ("age > 1 - -2", 1),
    ("sex == 'not (((('", 0),
])
def test_nesting_is_counted_on_the_text(text: str, depth: int) -> None:
    assert nesting(text) == depth


@pytest.mark.parametrize(("text", "limit"), [
    ("not " * 5000 + "age > 0", "filter_chars=4096"),
    ("age > 1 or " * 500_000 + "age > 2", "filter_chars=4096"),
    ("not " * 33 + "age > 0", "filter_depth=32"),
    ("age > " + "-" * 4000 + "1", "filter_depth=32"),
    ("age in " + "[" * 90 + "1" + "]" * 90, "filter_depth=32"),
])
def test_long_or_deep_filters_are_refused_before_parsing(text: str, limit: str) -> None:
    with pytest.raises(QueryError, match=limit) as refused:
        Count(where=text)
    assert len(str(refused.value)) < 200  # the text is never echoed


def test_a_server_may_allow_longer_filters_within_the_ceilings() -> None:
    text = "not " * 90 + "age > 0"
    assert Where(text, limits=RequestLimits(filter_depth=100)).columns == ("age",)
    with pytest.raises(QueryError, match="filter_depth=32"):
        Where(text)
