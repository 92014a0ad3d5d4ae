"""The privacy-budget ledger: exact arithmetic, refusals that charge nothing, no
overspending under threads and processes, and no lost charge after kill -9."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pet.cli import main
from pet.ledger import BudgetError, Ledger


@pytest.fixture()
def ledger(tmp_path: Path) -> Ledger:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.set_budget("lung", 1.0, 1e-6)
    return ledger


def test_charges_add_up_exactly_and_the_next_one_is_refused(ledger: Ledger) -> None:
    for _ in range(10):
        ledger.charge("lung", 0.1, 1e-7, query="Mean(age)")
    budget = ledger.budget("lung")
    assert (budget.spent_epsilon, budget.spent_delta, budget.releases) == (1.0, 1e-6, 10)
    with pytest.raises(BudgetError, match=r"'lung' cannot pay ε=0.1.*0 of ε=1 .*nothing"):
        ledger.charge("lung", 0.1, query="Mean(age)")
    assert ledger.budget("lung").releases == 10


def test_refusals_name_what_is_wrong_and_record_nothing(ledger: Ledger) -> None:
    ledger.set_budget("cohort", 2.0)
    with pytest.raises(BudgetError, match="no privacy budget is configured for dataset 'x'"):
        ledger.charge(["lung", "x"], 0.5, query="Count()")
    with pytest.raises(BudgetError, match=r"'lung' cannot pay ε=1\.5"):
        ledger.charge(["cohort", "lung"], 1.5, query="Count()")  # cohort could pay
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(BudgetError, match="epsilon must be a finite number >= 0"):
            ledger.charge("lung", bad, query="Count()")
    with pytest.raises(BudgetError, match="delta must be at most 1"):
        ledger.set_budget("lung", 1.0, 2.0)
    assert ledger.charges(["lung", "cohort"]) == []  # all or nothing across datasets
    ledger.charge("lung", 0.75, query="Count()")
    with pytest.raises(BudgetError, match=r"already spent ε=0\.75"):
        ledger.set_budget("lung", 0.5)
    assert [b.epsilon for b in ledger.budgets()] == [2.0, 1.0]


def test_a_retried_request_is_charged_once(ledger: Ledger) -> None:
    first = ledger.charge("lung", 0.3, query="Mean(age)", request="r-1")
    again = ledger.charge("lung", 0.3, query="Mean(age)", request="r-1")
    assert first == again and ledger.budget("lung").spent_epsilon == 0.3
    with pytest.raises(BudgetError, match="already charged a different amount"):
        ledger.charge("lung", 0.4, query="Mean(age)", request="r-1")


def test_a_charged_request_spends_rho_exactly_up_to_what_it_affords(ledger: Ledger) -> None:
    ledger.set_budget("cohort", 1.0, 1e-6)
    with pytest.raises(BudgetError, match="has not been charged to dataset 'lung'"):
        ledger.spend("lung", "fit-1", 0.01, allowed=0.03, query="Marginals")
    ledger.charge(["lung", "cohort"], 0.5, 1e-7, query="fit", request="fit-1")
    for _ in range(3):
        ledger.spend(["lung", "cohort"], "fit-1", 0.01, allowed=0.03, query="Marginals")
    assert ledger.spent_rho("fit-1", "lung") == 0.03  # exact: 0.01 is 10^13 units
    with pytest.raises(BudgetError, match=r"cannot spend ρ=1e-15 more .* 0\.03 of the "
                                          r"ρ=0\.03 .*nothing was spent"):
        ledger.spend(["cohort", "lung"], "fit-1", 1e-15, allowed=0.03, query="Marginals")
    assert ledger.spent_rho("fit-1", "cohort") == 0.03
    assert ledger.budget("lung").spent_epsilon == 0.5  # the (ε, δ) charge stands, once


def test_threads_never_overspend(ledger: Ledger) -> None:
    def attempt(_: int) -> bool:
        try:
            ledger.charge("lung", 0.05, query="Histogram(age)")
        except BudgetError:
            return False
        return True

    with ThreadPoolExecutor(16) as pool:
        granted = sum(pool.map(attempt, range(64)))
    assert granted == 20
    assert ledger.budget("lung").spent_epsilon == 1.0


def _charge_many(path: str, attempts: int, results: multiprocessing.Queue) -> None:
    ledger = Ledger(path)
    granted = 0
    for _ in range(attempts):
        try:
            ledger.charge("lung", 0.05, query="Histogram(age)")
            granted += 1
        except BudgetError:
            pass
    results.put(granted)


def test_processes_never_overspend(ledger: Ledger) -> None:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_charge_many, args=(str(ledger.path), 12, results))
               for _ in range(4)]
    for worker in workers:
        worker.start()
    granted = sum(results.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(30)
    assert granted == 20
    assert ledger.budget("lung").spent_epsilon == 1.0


def _charge_forever(path: str, done: str, tag: int) -> None:
    """Charge tiny amounts in a loop; after each charge returns, note its request id."""
    ledger = Ledger(path)
    with open(done, "a") as log:
        for i in range(10**6):
            ledger.charge("lung", 1e-6, query="Count()", request=f"{tag}-{i}")
            log.write(f"{tag}-{i}\n")
            log.flush()
            os.fsync(log.fileno())


def test_kill_9_never_loses_a_recorded_charge(ledger: Ledger, tmp_path: Path) -> None:
    done = tmp_path / "done.txt"
    context = multiprocessing.get_context("spawn")
    for tag in range(3):  # kill at different moments, mid-transaction among them
        worker = context.Process(target=_charge_forever,
                                 args=(str(ledger.path), str(done), tag))
        worker.start()
        deadline = time.monotonic() + 60
        start = len(done.read_text().split()) if done.exists() else 0
        while (len(done.read_text().split()) if done.exists() else 0) < start + 25:
            assert time.monotonic() < deadline, "the charging process made no progress"
            time.sleep(0.01)
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(10)
    recorded = {c.request for c in ledger.charges("lung")}
    assert set(done.read_text().split()) <= recorded
    budget = ledger.budget("lung")
    assert budget.releases == len(recorded)
    assert budget.spent_epsilon == pytest.approx(len(recorded) * 1e-6, abs=1e-12)
    with sqlite3.connect(ledger.path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    ledger.charge("lung", 0.1, query="Count()")  # the ledger still works


def test_budgets_are_configured_and_inspected_from_the_command_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "site.sqlite")
    assert main(["budget", path, "lung", "--set", "2", "1e-6"]) == 0
    Ledger(path).charge("lung", 0.5, query="Mean(age)")
    assert main(["budget", path]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split() == [
        "lung", "2", "0.5", "1.5", "1e-06", "0", "1"]
    assert main(["budget", path, "breast"]) == 1
    assert "no privacy budget is configured for dataset 'breast'" in capsys.readouterr().err
