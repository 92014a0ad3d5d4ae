"""Chaos at one site: sixteen analysts' DP queries while a site server is killed with
SIGKILL and restarted, again and again. Afterwards every site's ledger and audit log
agree charge for charge, no budget is overspent, and every answer was paid for."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from pet.audit import AuditLog
from pet.client import RemoteError
from pet.ledger import Ledger
from pet.queries import Count, Mean
from services.local import LocalFederation

BUDGET = 50.0
EPSILON = 0.1
CLIENTS = 16
KILLS = 20


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    folder = tmp_path_factory.mktemp("chaos")
    with LocalFederation(folder, deadline_s=20,
                         site_options={"budget": {"epsilon": BUDGET, "delta": 1e-3},
                                       "disclosure": {"min_cell": 1}},
                         coordinator_options={"runs_per_analyst": CLIENTS}) as running:
        yield running


def _analyst(federation: LocalFederation, stop: threading.Event, seed: int) -> int:
    """DP queries until told to stop; how many were answered."""
    rng = random.Random(seed)
    answered = 0
    with federation.client(timeout_s=60) as client:
        while not stop.is_set():
            backend = rng.choice(["dp", "he+dp"])
            query = rng.choice([Count(), Mean("age"), Count(where="sex == 'female'")])
            try:
                client.study(backend, epsilon=EPSILON, delta=1e-6).run(query)
            except RemoteError:
                continue  # a site down, or the budget spent: refused, never half-paid
            answered += 1
    return answered


def _killer(federation: LocalFederation, rng: random.Random) -> None:
    """Kill a site with SIGKILL at a random moment, restart it, KILLS times."""
    for _ in range(KILLS):
        victim = rng.choice(federation.names)
        threading.Event().wait(rng.uniform(0.2, 1.0))
        federation.stop_server(victim, kill=True)
        federation.start_server(victim)


def test_sigkill_under_load_leaves_ledgers_and_audit_logs_in_agreement(
        federation: LocalFederation) -> None:
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        clients = [pool.submit(_analyst, federation, stop, seed) for seed in range(CLIENTS)]
        try:
            _killer(federation, random.Random(15))
        finally:
            stop.set()
        answered = sum(c.result() for c in clients)
    assert answered > 0
    for name in federation.names:
        ledger = Ledger(federation.directory / name / "ledger.sqlite")
        audit = AuditLog(federation.directory / name / "audit.sqlite")
        audit.verify()
        budget = ledger.budget("lung")
        assert budget.spent_epsilon <= BUDGET
        charges = {c.request: c.epsilon for c in ledger.charges("lung")}
        paid = {}
        for entry in audit.entries():
            if entry.epsilon > 0:
                assert entry.request not in paid, "one charge, one audited cost"
                paid[entry.request] = entry.epsilon
        assert paid == charges  # every charge audited, at the ledger's cost, and no more
        assert len(charges) >= answered  # every answer paid for at every site


def test_a_coordinator_killed_again_and_again_leaves_no_mpc_session_behind(
        federation: LocalFederation) -> None:
    """Each killed coordinator leaves its sites' MPC parties without their dealer; they
    end, and their seats are freed, so MPC keeps working past a site's four seats."""
    for _ in range(6):
        with federation.client(timeout_s=300) as client:
            result = client.study("mpc").run(Mean("age"))
        assert result.n == 228
        federation.stop_server("coordinator", kill=True)
        federation.start_server("coordinator")
