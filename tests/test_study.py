"""The study loop and its result: cost, guarantee and per-site reports."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from pet.backends import BACKENDS, Plaintext, get_backend
from pet.errors import PetError
from pet.ledger import Ledger
from pet.queries import LogisticRegression, Mean
from pet.schema import Continuous, Schema
from pet.site import Site
from pet.study import Study
from pet.table import FrameTable
from pet.workloads import Workload


def test_result_reports_backend_cost_and_guarantee(lung3: Workload) -> None:
    result = lung3.study().run(Mean("wt_loss"))
    layout_size = Mean("wt_loss").layout(lung3.schema).size
    assert result.backend == "plaintext"
    assert result.error_bound == 0.0
    assert result.comm_rounds == 0
    assert not result.privacy.differentially_private
    assert [s.name for s in result.sites] == ["site-1", "site-2", "site-3"]
    assert all(s.bytes_sent == 8 * layout_size for s in result.sites)
    assert result.bytes_total == 3 * 8 * layout_size
    assert result.query == "Mean(wt_loss)"
    assert result.n + result.missing["wt_loss"] == 228


def test_iterative_queries_pay_bytes_every_round(breast: Workload) -> None:
    query = LogisticRegression("malignant", ("mean_radius", "mean_texture"))
    result = breast.study().run(query)
    per_round = 8 * query.layout(breast.schema, query.initial_state(breast.schema)).size
    assert result.rounds > 2
    assert all(s.bytes_sent == per_round * result.rounds for s in result.sites)


def test_plaintext_backend_sums_in_clear(lung3: Workload) -> None:
    layout = Mean("age").layout(lung3.schema)
    backend = Plaintext()
    partials = [np.arange(layout.size, dtype=float) * (k + 1) for k in range(3)]
    combined = backend.combine([backend.protect(p, layout) for p in partials], layout)
    np.testing.assert_array_equal(backend.reveal(combined, layout).total, sum(partials))
    with pytest.raises(PetError, match="layout has"):
        backend.combine([b"\0" * 8], layout)


def test_unknown_backend_is_named() -> None:
    with pytest.raises(PetError, match=re.escape(f"unknown backend 'magic'; choose one of "
                                                 f"{sorted(BACKENDS)}")):
        get_backend("magic")


def test_sites_must_share_the_schema_and_have_distinct_names(lung3: Workload) -> None:
    sites = lung3.sites()
    with pytest.raises(PetError, match="repeat"):
        Study([sites[0], sites[0]])
    other = Schema((Continuous("age", 0, 120),))
    stranger = Site("stranger", FrameTable(lung3.pooled()[["age"]], other))
    with pytest.raises(PetError, match="'stranger' follows a different schema"):
        Study([sites[0], stranger])
    with pytest.raises(PetError, match="at least one site"):
        Study([])


def test_a_backend_is_chosen_by_name_with_its_options(lung3: Workload) -> None:
    sites = lung3.sites()
    with Study(sites, backend="dp", epsilon=0.5, delta=1e-7) as study:
        assert (study.backend.epsilon, study.backend.delta) == (0.5, 1e-7)
    with pytest.raises(PetError, match="go with a backend's name"):
        Study(sites, backend=Plaintext(), epsilon=1.0)


def test_a_ledger_kept_under_the_site_s_name_is_not_started_afresh(lung3: Workload,
                                                                   tmp_path: Path) -> None:
    """pet once charged a site's name by default; the schema's name, charged now, would
    start a fresh budget beside what was spent."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.set_budget("site-1", 1.0, 1e-6)
    table = lung3.tables["site-1"]
    with pytest.raises(PetError, match="dataset: site-1"):
        Site("site-1", table, ledger=ledger)
    assert Site("site-1", table, ledger=ledger, dataset="site-1").dataset == "site-1"
    assert Site("site-1", table).dataset == "lung"  # no ledger: nothing to keep


@pytest.mark.parametrize("parallel", [False, True, "executor"])
def test_sites_asked_at_once_answer_as_when_asked_in_turn(lung3: Workload, parallel) -> None:
    """`parallel` takes a bool (True: threads of a round's own) or an executor whose threads
    a server keeps; every way gives the in-turn answer."""
    from concurrent.futures import ThreadPoolExecutor

    expected = lung3.study().run(Mean("age")).value
    with ThreadPoolExecutor(max_workers=4) as pool:
        how = pool if parallel == "executor" else parallel
        assert Study(lung3.sites(), parallel=how).run(Mean("age")).value == expected


def test_a_round_whose_site_fails_ends_only_when_every_site_has_answered(
        lung3: Workload) -> None:
    """The first failure is raised once the other sites' calls are over: no call of a
    failed round outlives it on the executor's threads."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    sites = lung3.sites()
    finished = threading.Event()
    slow_contribute = sites[2].contribute

    def fail(*args, **kwargs):
        raise PetError("site-1 is down")

    def slow(*args, **kwargs):
        time.sleep(0.3)
        answer = slow_contribute(*args, **kwargs)
        finished.set()
        return answer

    sites[0].contribute, sites[2].contribute = fail, slow  # type: ignore[method-assign]
    with ThreadPoolExecutor(max_workers=4) as pool, pytest.raises(PetError, match="down"):
        Study(sites, parallel=pool).run(Mean("age"))
    assert finished.is_set()
    pool.shutdown()
    with pytest.raises(PetError, match="no site can be asked"):
        Study(lung3.sites(), parallel=pool).run(Mean("age"))
