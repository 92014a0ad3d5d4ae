"""Subset control: a site refuses a subgroup that is small, whose complement is small, or
that differs from an answered subgroup by fewer rows than its minimum, remembering the
subgroups it answered under exact backends in a durable file, per dataset."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pet.backends import get_backend
from pet.errors import ArgumentError, DisclosureError
from pet.ledger import Ledger
from pet.queries import Count, LogisticRegression, Mean
from pet.schema import Continuous, Schema
from pet.site import Site
from pet.study import Study
from pet.subsets import SubsetControl, canonical
from pet.table import CHUNK_ROWS, Chunk, FrameTable, Table
from pet.workloads import Workload

MINIMUM = 3
"""The sites' default minimum cell count, which these tests rely on."""


@pytest.fixture(scope="module")
def lung_table(lung3: Workload) -> FrameTable:
    """Every lung patient at one site, as the issue counted them."""
    return FrameTable(lung3.pooled(), lung3.schema)


def lung_site(table: Table, path: Path) -> Site:
    return Site("lung", table, subsets=SubsetControl(path))


def single_age(frame: pd.DataFrame) -> int:
    """The youngest age held by exactly one patient with at least MINIMUM patients younger
    and at least MINIMUM older, so that `age >= a` and `age > a` pass every rule but the
    difference."""
    counts = frame["age"].value_counts().sort_index()
    younger = counts.cumsum() - counts
    older = len(frame) - counts.cumsum()
    return int(counts[(counts == 1) & (younger >= MINIMUM) & (older >= MINIMUM)].index[0])


@pytest.mark.parametrize("backend", ["plaintext", "he"])
def test_the_issues_attack_is_refused_under_exact_backends(backend: str, lung_table: FrameTable,
                                                           tmp_path: Path) -> None:
    age = lung_table.to_frame()["age"]
    a = single_age(lung_table.to_frame())
    wide, narrow = age >= a, age > a
    assert (wide ^ narrow).sum() == 1  # one patient aged a tells the two apart
    assert min(wide.sum(), (~wide).sum(), narrow.sum(), (~narrow).sum()) >= MINIMUM
    study = Study([lung_site(lung_table, tmp_path / "site.sqlite")], backend=backend)
    assert study.run(Count(where=f"age >= {a}")).value == wide.sum()
    with pytest.raises(DisclosureError) as caught:
        study.run(Count(where=f"age > {a}"))
    message = str(caught.value)
    assert f"differs from subgroup 'age >= {a}', answered before" in message
    assert f"minimum cell count is {MINIMUM}" in message
    assert caught.value.limit == MINIMUM and caught.value.site == "lung"
    assert str(narrow.sum()) not in message and str(wide.sum()) not in message


def test_a_subgroup_whose_complement_is_small_is_refused(lung_table: FrameTable,
                                                         tmp_path: Path) -> None:
    under_40 = (lung_table.to_frame()["age"] < 40).sum()
    assert 0 < under_40 < MINIMUM  # the issue's Count(age >= 40) leaves them outside
    with pytest.raises(DisclosureError, match="fewer rows than the minimum fall outside "
                                              "subgroup 'age >= 40'"):
        Study([lung_site(lung_table, tmp_path / "site.sqlite")]).run(Count(where="age >= 40"))


def frame_table(values: Sequence[float]) -> FrameTable:
    schema = Schema((Continuous("x", 0, 10, nullable=True),))
    return FrameTable(pd.DataFrame({"x": values}), schema)


def test_missing_values_cannot_hide_a_small_complement(tmp_path: Path) -> None:
    x = pd.Series([1.0] + [5.0] * 10 + [np.nan] * 10)
    inside = x > 2
    assert inside.sum() >= MINIMUM and (~inside).sum() >= MINIMUM  # rows outside, with NaN
    assert ((x <= 2) & x.notna()).sum() == 1  # ... but one known row fails the filter
    with pytest.raises(DisclosureError, match="fall outside subgroup 'x > 2'"):
        SubsetControl(tmp_path / "s.sqlite").admit("d", "x > 2", frame_table(x), minimum=MINIMUM)


def test_a_few_rows_missing_the_filter_column_are_a_small_complement(tmp_path: Path) -> None:
    x = pd.Series([5.0] * 10 + [np.nan])
    assert (x >= 0).sum() == 10 and x.isna().sum() == 1  # only the NaN row is outside
    with pytest.raises(DisclosureError, match="fall outside subgroup 'x >= 0'"):
        SubsetControl(tmp_path / "s.sqlite").admit("d", "x >= 0", frame_table(x), minimum=MINIMUM)


def test_a_small_subgroup_is_refused_even_when_the_query_uses_none_of_its_rows(
        tmp_path: Path) -> None:
    schema = Schema((Continuous("x", 0, 10), Continuous("y", 0, 10, nullable=True)))
    frame = pd.DataFrame({"x": [1.0, 2.0] + [5.0] * 10, "y": [np.nan] * 2 + [4.0] * 10})
    assert (frame["x"] < 3).sum() == 2 and frame["y"][frame["x"] < 3].isna().all()
    site = Site("s", FrameTable(frame, schema), subsets=SubsetControl(tmp_path / "s.sqlite"))
    # The cell rule sees no complete row (n = 0), but the missing counts would show two.
    with pytest.raises(DisclosureError, match="subgroup 'x < 3' has fewer rows here"):
        Study([site]).run(Mean("y", where="x < 3"))


def test_subgroups_that_differ_by_at_least_the_minimum_are_answered(
        lung_table: FrameTable, tmp_path: Path) -> None:
    age = lung_table.to_frame()["age"]
    assert ((age >= 50) ^ (age >= 60)).sum() >= MINIMUM
    site = lung_site(lung_table, tmp_path / "site.sqlite")
    study = Study([site])
    assert study.run(Count(where="age >= 50")).value == (age >= 50).sum()
    assert study.run(Count(where="age >= 60")).value == (age >= 60).sum()
    assert study.run(Count()).value == len(age)  # the whole table is never recorded
    assert [s.text for s in site.subsets.answered("lung")] == ["age >= 50", "age >= 60"]


def test_spellings_of_one_filter_are_one_subgroup(lung_table: FrameTable,
                                                  tmp_path: Path) -> None:
    subsets = SubsetControl(tmp_path / "s.sqlite")
    for text in ("age>=50", "age >=  50", "(age >= 50)"):
        subsets.admit("lung", text, lung_table, minimum=MINIMUM, request=text)
    assert [(s.text, s.request) for s in subsets.answered("lung")] == [("age >= 50", "age>=50")]
    assert canonical("sex=='a  b'") == "sex == 'a  b'"  # spaces inside a category are kept


def test_the_record_survives_reopening_the_file(lung_table: FrameTable, tmp_path: Path) -> None:
    a = single_age(lung_table.to_frame())
    path = tmp_path / "site.sqlite"
    Study([lung_site(lung_table, path)]).run(Count(where=f"age >= {a}"))
    with pytest.raises(DisclosureError, match="differs from subgroup"):
        Study([lung_site(lung_table, path)]).run(Count(where=f"age > {a}"))


def test_the_record_is_per_dataset(lung_table: FrameTable, tmp_path: Path) -> None:
    a = single_age(lung_table.to_frame())
    subsets = SubsetControl(tmp_path / "s.sqlite")
    subsets.admit("one", f"age >= {a}", lung_table, minimum=MINIMUM)
    subsets.admit("other", f"age > {a}", lung_table, minimum=MINIMUM)
    with pytest.raises(DisclosureError):
        subsets.admit("one", f"age > {a}", lung_table, minimum=MINIMUM)


def test_the_record_shares_the_ledgers_file(lung_table: FrameTable, tmp_path: Path) -> None:
    path = tmp_path / "site.sqlite"
    ledger, subsets = Ledger(path), SubsetControl(path)
    ledger.set_budget("lung", 1.0)
    subsets.admit("lung", "age >= 50", lung_table, minimum=MINIMUM)
    with sqlite3.connect(path) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"budgets", "charges", "subgroups"} <= tables
    assert Ledger(path).budget("lung").epsilon == 1.0
    assert len(SubsetControl(path).answered("lung")) == 1


class Overlapping(Table):
    """A table whose first two passes wait for each other, so that two checks run side
    by side before either records its subgroup."""

    def __init__(self, inner: Table) -> None:
        super().__init__(inner.schema)
        self.inner = inner
        self.barrier = threading.Barrier(2, timeout=60)
        self.passes = 0
        self.lock = threading.Lock()

    @property
    def n_rows(self) -> int:
        return self.inner.n_rows

    def to_frame(self) -> pd.DataFrame:
        return self.inner.to_frame()

    def chunks(self, columns: Sequence[str], *, chunk_rows: int = CHUNK_ROWS) -> Iterator[Chunk]:
        with self.lock:
            self.passes += 1
            overlap = self.passes <= 2
        if overlap:
            self.barrier.wait()
        yield from self.inner.chunks(columns, chunk_rows=chunk_rows)


def test_concurrent_subgroups_that_difference_cannot_both_pass(lung_table: FrameTable,
                                                               tmp_path: Path) -> None:
    a = single_age(lung_table.to_frame())
    table = Overlapping(lung_table)
    subsets = SubsetControl(tmp_path / "s.sqlite")
    refused: list[DisclosureError] = []

    def admit(text: str) -> None:
        try:
            subsets.admit("lung", text, table, minimum=MINIMUM)
        except DisclosureError as error:
            refused.append(error)

    threads = [threading.Thread(target=admit, args=(t,)) for t in (f"age >= {a}", f"age > {a}")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(refused) == 1 and "differs from subgroup" in str(refused[0])
    assert len(subsets.answered("lung")) == 1
    assert table.passes == 3  # the later one checked again, under the lock


def test_dp_backends_are_not_affected(lung_table: FrameTable, tmp_path: Path) -> None:
    a = single_age(lung_table.to_frame())
    path = tmp_path / "site.sqlite"
    ledger = Ledger(path)
    ledger.set_budget("lung", 10.0, 1e-3)
    site = Site("lung", lung_table, ledger=ledger, subsets=SubsetControl(path))
    study = Study([site], backend=get_backend("dp", epsilon=1.0, delta=1e-6))
    study.run(Count(where=f"age >= {a}"))
    study.run(Count(where=f"age > {a}"))
    assert site.subsets.answered("lung") == []


def test_an_iterative_query_is_one_subgroup(lung_table: FrameTable, tmp_path: Path) -> None:
    site = lung_site(lung_table, tmp_path / "site.sqlite")
    result = Study([site]).run(LogisticRegression("dead", ("age",), where="age >= 50"))
    assert result.rounds > 1
    assert [s.text for s in site.subsets.answered("lung")] == ["age >= 50"]


def test_the_cap_refuses_new_subgroups_clearly(lung_table: FrameTable, tmp_path: Path) -> None:
    age = lung_table.to_frame()["age"]
    assert ((age >= 50) ^ (age >= 70)).sum() >= MINIMUM and (age >= 70).sum() >= MINIMUM
    subsets = SubsetControl(tmp_path / "s.sqlite", max_subgroups=2)
    subsets.admit("lung", "age >= 50", lung_table, minimum=MINIMUM)
    subsets.admit("lung", "age >= 70", lung_table, minimum=MINIMUM)
    with pytest.raises(DisclosureError, match="answered 2 different subgroups of dataset "
                                              "'lung', the most it remembers") as caught:
        subsets.admit("lung", "sex == 'female'", lung_table, minimum=MINIMUM, site="lung")
    assert caught.value.limit == 2
    subsets.admit("lung", "age >= 50", lung_table, minimum=MINIMUM)  # a repeat is answered
    assert len(subsets.answered("lung")) == 2
    with pytest.raises(ArgumentError, match="max_subgroups"):
        SubsetControl(tmp_path / "t.sqlite", max_subgroups=0)
