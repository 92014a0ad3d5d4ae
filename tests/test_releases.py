"""The release store: one draw per request id, and charge, release and audit entry in one
transaction across the ledger's and the audit log's files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pet import releases
from pet.audit import AuditLog
from pet.ledger import Ledger
from pet.queries import Count, Mean
from pet.releases import Ask, Release, ReleaseError, Releases, ReleasesExhausted

SESSION = "dp ε=1 δ=0"


def _store(tmp_path: Path) -> Releases:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.set_budget("site", 10.0)
    return Releases(ledger, AuditLog(tmp_path / "audit.sqlite"))


def _commit(store: Releases, ask: Ask, query: object, message: bytes,
            rho: float | None = None) -> bytes:
    release = Release.of(ask, "site", query, None, rho)

    def pay(db: object) -> tuple[float, float, str]:
        fresh = store.ledger.charge_in(db, "site", 1.0, query="q", request=ask.request)
        return (1.0, 0.0, "") if fresh else (0.0, 0.0, "")

    return store.commit(release, message, pay, ask=ask, query="q", backend="dp")


def test_a_retry_is_the_stored_release_and_pays_once(tmp_path: Path) -> None:
    store = _store(tmp_path)
    ask = Ask("r1", SESSION, analyst="ann")
    assert _commit(store, ask, Count(), b"first") == b"first"
    assert store.stored(Release.of(ask, "site", Count(), None, None)) == b"first"
    assert _commit(store, ask, Count(), b"second") == b"first"  # a race: the stored one
    assert store.ledger.budget("site").spent_epsilon == 1.0
    entries = store.audit.entries()  # type: ignore[union-attr]
    assert [(e.request, e.epsilon, e.analyst) for e in entries] == [("r1", 1.0, "ann")]


@pytest.mark.parametrize("other", [
    (Count(where="age > 1"), SESSION, 1),   # another filter
    (Mean("age"), SESSION, 1),              # another statistic
    (Count(), "dp ε=2 δ=0", 1),             # another session
])
def test_anything_else_under_a_used_id_is_refused(tmp_path: Path,
                                                  other: tuple[object, str, int]) -> None:
    store = _store(tmp_path)
    _commit(store, Ask("r1", SESSION), Count(), b"first")
    query, session, round_ = other
    with pytest.raises(ReleaseError):
        _commit(store, Ask("r1", session, round=round_), query, b"second")
    assert store.ledger.budget("site").releases == 1


def test_one_of_many_releases_is_new_only_with_a_new_number(tmp_path: Path) -> None:
    store = _store(tmp_path)
    one, two = Ask("fit", SESSION, round=1), Ask("fit", SESSION, round=2)
    assert _commit(store, one, Count(), b"a", rho=0.1) == b"a"
    assert _commit(store, one, Count(), b"b", rho=0.1) == b"a"
    assert _commit(store, two, Count(), b"c", rho=0.1) == b"c"
    assert _commit(store, one, Count(), b"d", rho=0.2) == b"d"  # another ρ: another release


def test_a_request_makes_a_bounded_number_of_releases(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(releases, "MAX_RELEASES", 2)
    store = _store(tmp_path)
    for number in (1, 2):
        _commit(store, Ask("fit", SESSION, round=number), Count(), b"x", rho=0.1)
    with pytest.raises(ReleasesExhausted):
        _commit(store, Ask("fit", SESSION, round=3), Count(), b"x", rho=0.1)


def test_a_failure_inside_the_transaction_records_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(Exception, match="analyst must be a non-empty string"):
        _commit(store, Ask("r1", SESSION, analyst=" "), Count(), b"x")
    assert store.ledger.budget("site").releases == 0
    assert store.audit.entries() == []  # type: ignore[union-attr]
    assert store.stored(Release.of(Ask("r1", SESSION), "site", Count(), None, None)) is None


WRITER = textwrap.dedent("""
    import sys, uuid
    from pathlib import Path
    from pet.audit import AuditLog
    from pet.ledger import Ledger
    from pet.queries import Count
    from pet.releases import Ask, Release, Releases
    folder = Path(sys.argv[1])
    store = Releases(Ledger(folder / "ledger.sqlite"), AuditLog(folder / "audit.sqlite"))
    while True:
        ask = Ask(uuid.uuid4().hex, "dp ε=0.001 δ=0")
        def pay(db, ask=ask):
            store.ledger.charge_in(db, "site", 0.001, query="q", request=ask.request)
            return 0.001, 0.0, ""
        store.commit(Release.of(ask, "site", Count(), None, None), b"m" * 4096, pay,
                     ask=ask, query="q", backend="dp")
        print("committed", flush=True)
""")


def test_sigkill_mid_commit_leaves_ledger_and_audit_log_in_agreement(tmp_path: Path) -> None:
    """A process committing releases as fast as it can is killed with SIGKILL five times;
    the two files always hold the same releases, entry for entry."""
    _store(tmp_path)
    root = Path(__file__).resolve().parents[1]
    for kill in range(5):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=root,
                                  stdout=subprocess.PIPE, text=True)
        assert writer.stdout is not None
        for _ in range(20 + 7 * kill):  # let it commit a while, then kill it mid-way
            writer.stdout.readline()
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    ledger, audit = Ledger(tmp_path / "ledger.sqlite"), AuditLog(tmp_path / "audit.sqlite")
    audit.verify()
    charged = {c.request: c.epsilon for c in ledger.charges("site")}
    audited = {e.request: e.epsilon for e in audit.entries()}
    assert len(charged) >= 100 and charged == audited
