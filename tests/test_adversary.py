"""Attacks on a site's guarantees, against real servers on loopback: a hostile peer that
holds the coordinator's certificate and talks to the sites directly, and an analyst
with a valid token. Each attack is refused or harmless."""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from pet import codec
from pet.audit import AuditLog
from pet.backends.he import HE
from pet.backends.mpc import ATTEMPTS, MPC
from pet.client import RemoteError
from pet.ledger import Ledger
from pet.mpc.channel import TlsIdentity
from pet.mpc.parties import Party, PartyConfig
from pet.queries import (
    Contingency,
    Count,
    Cox,
    ExactQuantiles,
    LogisticRegression,
    Marginals,
    Mean,
)
from pet.queries.regression import LogisticState
from pet.workloads import Workload
from services.config import Tls
from services.convert import backend_message, query_message
from services.local import LocalFederation
from services.pb import common_pb2, coordinator_pb2, coordinator_pb2_grpc, site_pb2, site_pb2_grpc
from services.security import analyst_channel, peer_channel

BUDGET = {"epsilon": 20.0, "delta": 1e-4}
RUN_DEADLINE_S = 8


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    """Three lung sites with disclosure control (minimum 3), a budget, one run at a time
    per analyst and a short run deadline."""
    folder = tmp_path_factory.mktemp("adversary")
    with LocalFederation(folder, site_options={"budget": BUDGET},
                         coordinator_options={"runs_per_analyst": 1,
                                              "run_deadline_s": RUN_DEADLINE_S}) as running:
        yield running


@pytest.fixture(scope="module")
def hostile(federation: LocalFederation) -> Iterator[site_pb2_grpc.SiteStub]:
    """site-1 as a dishonest coordinator reaches it: with the coordinator's certificate."""
    tls = Tls(federation.certs.cert("coordinator"), federation.certs.key("coordinator"),
              federation.certs.ca)
    with peer_channel(f"127.0.0.1:{federation.ports['site-1']}", tls) as channel:
        yield site_pb2_grpc.SiteStub(channel)


def _ask(stub: site_pb2_grpc.SiteStub, request: site_pb2.ContributeRequest) -> bytes:
    """A site's message for one contribution, its pieces joined."""
    pieces = list(stub.Contribute(request, timeout=60))
    assert pieces[-1].WhichOneof("kind") == "done"
    return b"".join(p.data for p in pieces[:-1])


def _dp_count(request: str, where: str | None = None,
              **fields: object) -> site_pb2.ContributeRequest:
    return site_pb2.ContributeRequest(
        request=request, analyst="mallory", query=query_message(Count(where=where)),
        state_json="null", backend=backend_message("dp", {"epsilon": 1.0, "delta": 0.0}),
        n_sites=3, **{"round": 1, **fields})


def _ledger(federation: LocalFederation, site: str = "site-1") -> Ledger:
    return Ledger(federation.directory / site / "ledger.sqlite")


def _audit(federation: LocalFederation, site: str = "site-1") -> AuditLog:
    return AuditLog(federation.directory / site / "audit.sqlite")


def _refused(call: object, code: grpc.StatusCode) -> str:
    """The details of a call that must fail with `code`."""
    with pytest.raises(grpc.RpcError) as refused:
        call()  # type: ignore[operator]
    assert refused.value.code() == code, refused.value.details()
    return refused.value.details()


def test_a_replayed_request_id_gets_the_stored_release_and_pays_once(
        federation: LocalFederation, hostile: site_pb2_grpc.SiteStub) -> None:
    ledger, audit = _ledger(federation), _audit(federation)
    before, logged = ledger.budget("lung").spent_rho, len(audit.entries())
    answers = {_ask(hostile, _dp_count("replayed")) for _ in range(20)}
    assert len(answers) == 1  # one draw, byte for byte: averaging removes no noise
    assert ledger.budget("lung").spent_rho == pytest.approx(before + 0.5)  # ε = 1: ε²/2
    entries = audit.entries()[logged:]
    assert len(entries) == 20 and [e.epsilon for e in entries] == [1.0] + [0.0] * 19
    assert all(e.analyst == "mallory" and e.outcome == "answered" for e in entries)


@pytest.mark.parametrize("change", [
    {"where": "age > 50"},                                    # another filter
    {"backend": backend_message("dp", {"epsilon": 2.0, "delta": 0.0})},  # another ε
    {"query": query_message(Mean("age"))},                    # another statistic
])
def test_any_other_request_under_a_used_id_is_refused(
        federation: LocalFederation, hostile: site_pb2_grpc.SiteStub,
        change: dict[str, object]) -> None:
    request = "bound-" + "-".join(sorted(change))
    _ask(hostile, _dp_count(request))
    spent = _ledger(federation).budget("lung").spent_epsilon
    other = _dp_count(request, where=change.pop("where", None))  # type: ignore[arg-type]
    for name, value in change.items():
        getattr(other, name).CopyFrom(value)
    details = _refused(lambda: _ask(hostile, other), grpc.StatusCode.ALREADY_EXISTS)
    assert "a retry must ask exactly" in details or "buys one release" in details
    assert _ledger(federation).budget("lung").spent_epsilon == spent
    assert _audit(federation).entries()[-1].outcome == "refused"


def test_a_stored_release_survives_a_restart_of_the_site(
        federation: LocalFederation, hostile: site_pb2_grpc.SiteStub) -> None:
    first = _ask(hostile, _dp_count("across-a-restart"))
    federation.stop_server("site-1", kill=True)
    federation.start_server("site-1")
    assert _ask(hostile, _dp_count("across-a-restart")) == first


def test_a_fit_s_releases_are_new_draws_only_when_new_and_paid_by_rho(
        federation: LocalFederation, hostile: site_pb2_grpc.SiteStub) -> None:
    """A request charged once for many releases (a synthesizer's fit): a repeated release
    is the stored one; a new one spends ρ, refused past what the charge affords."""
    spec = backend_message("dp", {"epsilon": 1.0, "delta": 1e-6, "rho": 0.01})
    query = query_message(Marginals((("sex",),)))

    def release(number: int) -> site_pb2.ContributeRequest:
        return site_pb2.ContributeRequest(request="fit", analyst="mallory", query=query,
                                          state_json="null", backend=spec, n_sites=3,
                                          round=number)

    assert _ask(hostile, release(1)) == _ask(hostile, release(1))
    assert _ask(hostile, release(2)) != _ask(hostile, release(1))
    assert _ledger(federation).spent_rho("fit", "lung") == pytest.approx(0.02)
    for number in range(3, 100):
        try:
            _ask(hostile, release(number))
        except grpc.RpcError as refused:
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            break
    else:
        pytest.fail("the fit's releases were never refused")
    assert _ledger(federation).budget("lung").spent_epsilon <= BUDGET["epsilon"]


def test_the_number_of_sites_comes_from_the_site_s_configuration(
        federation: LocalFederation, hostile: site_pb2_grpc.SiteStub) -> None:
    he = HE()
    spec = backend_message("he+dp", {"epsilon": 1.0, "delta": 1e-6,
                                      "public_context": he.public_context})
    ask = site_pb2.ContributeRequest(request="many-sites", analyst="mallory",
                                     query=query_message(Count()), state_json="null",
                                     backend=spec, n_sites=2147483647, round=1)
    details = _refused(lambda: _ask(hostile, ask), grpc.StatusCode.FAILED_PRECONDITION)
    assert "federates with 3" in details
    ask.n_sites, ask.request = 3, "three-sites"
    assert _ask(hostile, ask)  # the configured federation is answered


def test_the_audited_cost_is_the_ledger_s_never_the_round_field(
        federation: LocalFederation, hostile: site_pb2_grpc.SiteStub) -> None:
    spent = _ledger(federation).budget("lung").spent_epsilon
    details = _refused(lambda: _ask(hostile, _dp_count("far-round", round=2147483647)),
                       grpc.StatusCode.INVALID_ARGUMENT)
    assert "outside the rounds 1..1" in details
    assert _ledger(federation).budget("lung").spent_epsilon == spent
    _ask(hostile, _dp_count("ledger-cost"))
    charged = {c.request: c.epsilon for c in _ledger(federation).charges("lung")}
    audited = [e for e in _audit(federation).entries() if e.request == "ledger-cost"]
    assert [e.epsilon for e in audited] == [charged["ledger-cost"]] == [1.0]


def test_a_refused_caller_is_recorded_by_its_certificate(federation: LocalFederation) -> None:
    tls = Tls(federation.certs.cert("site-2"), federation.certs.key("site-2"),
              federation.certs.ca)
    with peer_channel(f"127.0.0.1:{federation.ports['site-1']}", tls) as channel:
        stub = site_pb2_grpc.SiteStub(channel)
        _refused(lambda: _ask(stub, _dp_count("impostor")), grpc.StatusCode.PERMISSION_DENIED)
    last = _audit(federation).entries()[-1]
    assert last.outcome == "refused" and last.analyst == "(certificate 'site-2')"


def test_bad_options_and_states_are_invalid_arguments(
        federation: LocalFederation, hostile: site_pb2_grpc.SiteStub) -> None:
    negative = _dp_count("negative-rows")
    negative.backend.CopyFrom(common_pb2.Backend(name="plaintext", max_rows_per_site=-1))
    _refused(lambda: _ask(hostile, negative), grpc.StatusCode.INVALID_ARGUMENT)
    quantiles = site_pb2.ContributeRequest(
        request="null-state", query=query_message(ExactQuantiles("age", (0.5,))),
        state_json="null", backend=common_pb2.Backend(name="plaintext"), n_sites=3, round=2)
    _refused(lambda: _ask(hostile, quantiles), grpc.StatusCode.INVALID_ARGUMENT)
    huge = _dp_count("huge-epsilon")
    huge.backend.epsilon = 1e308
    _refused(lambda: _ask(hostile, huge), grpc.StatusCode.INVALID_ARGUMENT)


def test_a_budget_of_an_unknown_dataset_is_not_found(
        federation: LocalFederation, hostile: site_pb2_grpc.SiteStub) -> None:
    _refused(lambda: hostile.Budget(common_pb2.BudgetRequest(dataset="nobody"), timeout=10),
             grpc.StatusCode.NOT_FOUND)
    with federation.client() as client:
        assert [b.site for b in client.budgets("lung")] == federation.names
        with pytest.raises(RemoteError) as refused:
            client.budgets("nobody")
        assert refused.value.code == grpc.StatusCode.NOT_FOUND


def test_a_status_message_never_echoes_a_huge_field(federation: LocalFederation) -> None:
    start = coordinator_pb2.Start(query=common_pb2.Query(kind="x" * 1_000_000),
                                  backend=common_pb2.Backend(name="plaintext"))
    with analyst_channel(federation.address, federation.certs.ca.read_bytes(),
                         federation.token) as channel:
        details = _refused(lambda: list(coordinator_pb2_grpc.CoordinatorStub(channel).Run(
            iter([coordinator_pb2.RunRequest(start=start)]), timeout=30)),
            grpc.StatusCode.INVALID_ARGUMENT)
    assert len(details) <= 400


def test_a_charged_dp_count_always_reaches_the_analyst(federation: LocalFederation) -> None:
    """True count 0: the noisy sum is at or below zero in about half of the releases,
    which used to be charged and then refused as 'no complete rows'."""
    with federation.client() as client, client.study("dp", epsilon=0.5, delta=0.0) as study:
        answers = [study.run(Count(where="age > 99")).value for _ in range(10)]
    assert all(isinstance(a, int | float) and a >= 0 for a in answers)


def test_differencing_around_the_minimum_is_refused(federation: LocalFederation,
                                                     lung3: Workload) -> None:
    ages = lung3.pooled().age.value_counts()
    site1 = lung3.tables["site-1"].to_frame().age.value_counts()
    rare = next(int(a) for a in sorted(site1.index) if site1[a] < 3 and ages[a] < 3 and a < 80)
    with federation.client() as client, client.study("plaintext") as study:
        wide = study.run(Count(where=f"age >= {rare}")).value
        assert wide == int((lung3.pooled().age >= rare).sum())
        with pytest.raises(RemoteError) as refused:
            study.run(Count(where=f"age > {rare}"))
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_one_analyst_runs_one_study_at_a_time_and_a_held_run_ends_at_its_deadline(
        federation: LocalFederation) -> None:
    """An analyst who never answers a Reveal holds its run open; its next run is refused
    until the coordinator's run deadline ends the held one."""
    he = HE()
    spec = backend_message("he", {"public_context": he.public_context})
    start = coordinator_pb2.RunRequest(start=coordinator_pb2.Start(
        query=query_message(Count()), backend=spec))
    silence: queue.Queue = queue.Queue()

    def requests() -> Iterator[coordinator_pb2.RunRequest]:
        yield start
        silence.get()  # never answers the Reveal

    with analyst_channel(federation.address, federation.certs.ca.read_bytes(),
                         federation.token) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        held = stub.Run(requests(), timeout=600)
        assert next(held).WhichOneof("kind") == "reveal"
        with federation.client() as client, pytest.raises(RemoteError) as refused:
            client.study("plaintext").run(Count())
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError) as ended:
            list(held)
        silence.put(None)
        assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "run_deadline_s" in ended.value.details()  # the coordinator's, not the call's
        with federation.client() as client:
            assert client.study("plaintext").run(Count()).value == 228


def _edges(lower: float, upper: float, count: int) -> tuple[float, ...]:
    return tuple(lower + (upper - lower) * k / count for k in range(count + 1))


HUGE_TABLE = Contingency(("age", "meal_cal", "wt_loss", "time", "ph_karno"), bins={
    "age": _edges(18, 100, 400), "meal_cal": _edges(0, 4000, 400),
    "wt_loss": _edges(-50, 100, 400), "time": _edges(0, 1100, 400),
    "ph_karno": _edges(0, 100, 400)})
"""400^5 ≈ 10^13 cells: a vector no server should try to allocate."""


def _count_where(text: str) -> common_pb2.Query:
    return common_pb2.Query(kind="Count", where=text)


@pytest.mark.parametrize(("query", "code", "words"), [
    (query_message(HUGE_TABLE), grpc.StatusCode.RESOURCE_EXHAUSTED, "cells"),
    (_count_where("not " * 5000 + "age > 0"), grpc.StatusCode.INVALID_ARGUMENT,
     "filter_chars"),
    (_count_where("not " * 40 + "age > 0"), grpc.StatusCode.INVALID_ARGUMENT, "filter_depth"),
    (_count_where("(" * 60 + "age > 0" + ")" * 60), grpc.StatusCode.INVALID_ARGUMENT,
     "filter_depth"),
    (_count_where(" or ".join(["age > 1"] * 100_000)), grpc.StatusCode.INVALID_ARGUMENT,
     "filter_chars"),
])
def test_one_request_cannot_exhaust_a_server(
        federation: LocalFederation, hostile: site_pb2_grpc.SiteStub, query: common_pb2.Query,
        code: grpc.StatusCode, words: str) -> None:
    """Refused before any work, at the coordinator and at a site asked directly."""
    start = coordinator_pb2.Start(query=query, backend=common_pb2.Backend(name="plaintext"))
    with analyst_channel(federation.address, federation.certs.ca.read_bytes(),
                         federation.token) as channel:
        assert words in _refused(lambda: list(coordinator_pb2_grpc.CoordinatorStub(
            channel).Run(iter([coordinator_pb2.RunRequest(start=start)]), timeout=30)), code)
    ask = site_pb2.ContributeRequest(request="huge", query=query, state_json="null",
                                     n_sites=3, round=1,
                                     backend=common_pb2.Backend(name="plaintext"))
    assert words in _refused(lambda: _ask(hostile, ask), code)


def test_a_message_over_the_request_limit_is_refused_unread(
        federation: LocalFederation) -> None:
    start = coordinator_pb2.Start(query=query_message(Count()),
                                  backend=common_pb2.Backend(name="plaintext"))
    start.query.where = "age > 0 " + " " * 5_000_000
    with analyst_channel(federation.address, federation.certs.ca.read_bytes(),
                         federation.token) as channel:
        _refused(lambda: list(coordinator_pb2_grpc.CoordinatorStub(channel).Run(
            iter([coordinator_pb2.RunRequest(start=start)]), timeout=30)),
            grpc.StatusCode.RESOURCE_EXHAUSTED)


def _rare_age(lung3: Workload, site: str = "site-1") -> int:
    """An age that one or two of the site's patients have."""
    ages = lung3.tables[site].to_frame().age.value_counts()
    return next(int(a) for a in sorted(ages.index) if ages[a] < 3)


def test_a_dp_site_answers_no_question_for_free(federation: LocalFederation,
                                                 lung3: Workload) -> None:
    """Under DP neither disclosure control nor a session limit refuses on the rows' say:
    a refusal would answer without noise or charge (here: the outcome of one patient, or
    whether a count exceeds a chosen number)."""
    rare = _rare_age(lung3)
    spent = _ledger(federation).budget("lung").spent_rho
    with federation.client() as client:
        for outcome in ("True", "False"):
            study = client.study("dp", epsilon=0.1, delta=0.0)
            assert study.run(Count(where=f"age == {rare} and dead == {outcome}")).value >= 0
        for limit in (1, 10**6):
            study = client.study("dp", epsilon=0.1, delta=0.0, max_rows_per_site=limit)
            assert study.run(Count(where="age >= 60")).value >= 0
    # four pure charges of ε = 0.1, each ρ = ε²/2 = 0.005
    assert _ledger(federation).budget("lung").spent_rho == pytest.approx(spent + 0.02)


def test_a_chosen_round_state_cannot_single_out_a_patient(
        federation: LocalFederation, hostile: site_pb2_grpc.SiteStub) -> None:
    """A logistic round whose coefficients weigh one age against all others (e^-60 apart)
    would hand over that patient's row; the site refuses such a state."""
    query = LogisticRegression("dead", ("age", "sex", "ph_ecog"))
    sharp = LogisticState(1, (-2460.0 * 0.35, 2460.0, 0.0, 0.0))
    ask = site_pb2.ContributeRequest(request="steered", query=query_message(query),
                                     state_json=codec.dumps(sharp), n_sites=3, round=2,
                                     backend=common_pb2.Backend(name="plaintext"))
    assert "single out rows" in _refused(lambda: _ask(hostile, ask),
                                         grpc.StatusCode.FAILED_PRECONDITION)


def test_exact_quantiles_are_answered_only_inside_mpc(
        federation: LocalFederation, hostile: site_pb2_grpc.SiteStub) -> None:
    """Counts at thresholds a peer chooses are a histogram down to single patients."""
    ask = site_pb2.ContributeRequest(
        request="histogram", query=query_message(ExactQuantiles("age", (0.5,), 4096)),
        state_json="null", n_sites=3, round=1, backend=common_pb2.Backend(name="plaintext"))
    ask.state_json = codec.dumps(ExactQuantiles("age", (0.5,), 4096).initial_state(
        _schema(federation)))
    assert "only under mpc" in _refused(lambda: _ask(hostile, ask),
                                        grpc.StatusCode.FAILED_PRECONDITION)


def _schema(federation: LocalFederation) -> object:
    with federation.client() as client:
        return client.schema


@pytest.mark.parametrize(("field", "value"), [("request", "r" * 10_000),
                                               ("mpc_session", "../../etc")])
def test_ids_are_short_and_plain(hostile: site_pb2_grpc.SiteStub, field: str,
                                 value: str) -> None:
    ask = _dp_count("plain")
    setattr(ask, field, value)
    _refused(lambda: _ask(hostile, ask), grpc.StatusCode.INVALID_ARGUMENT)


def test_an_input_for_no_mpc_session_is_refused_before_any_charge(
        federation: LocalFederation, hostile: site_pb2_grpc.SiteStub) -> None:
    spent = _ledger(federation).budget("lung").spent_epsilon
    ask = site_pb2.ContributeRequest(
        request="no-session", query=query_message(Count()), state_json="null", n_sites=3,
        round=1, mpc_session="nowhere",
        backend=backend_message("mpc+dp", {"epsilon": 1.0, "delta": 1e-6}))
    _refused(lambda: _ask(hostile, ask), grpc.StatusCode.FAILED_PRECONDITION)
    assert _ledger(federation).budget("lung").spent_epsilon == spent


def test_a_site_runs_only_the_programs_it_serves(hostile: site_pb2_grpc.SiteStub) -> None:
    _refused(lambda: hostile.RunProgram(site_pb2.ProgramRequest(session="s", program="check"),
                                        timeout=10), grpc.StatusCode.INVALID_ARGUMENT)


def _stubs(federation: LocalFederation) -> list[site_pb2_grpc.SiteStub]:
    tls = Tls(federation.certs.cert("coordinator"), federation.certs.key("coordinator"),
              federation.certs.ca)
    return [site_pb2_grpc.SiteStub(peer_channel(f"127.0.0.1:{federation.ports[n]}", tls))
            for n in federation.names]


def test_a_site_joins_only_a_session_of_its_own_federation(
        federation: LocalFederation, hostile: site_pb2_grpc.SiteStub) -> None:
    for parties, world in ((("site-1", "site-2"), 2), (("site-1", "site-2", "mallory"), 3),
                           (("site-2", "site-1", "site-3"), 3)):
        join = site_pb2.JoinMpcRequest(session="rogue", rank=0, world=world, parties=parties)
        _refused(lambda j=join: hostile.JoinMpc(j, timeout=30),
                 grpc.StatusCode.FAILED_PRECONDITION)


@contextlib.contextmanager
def _session(federation: LocalFederation, name: str) -> Iterator[list[site_pb2_grpc.SiteStub]]:
    """An MPC session at the three sites driven by a hostile coordinator, which runs the
    dealer itself; every site leaves it at the end."""
    stubs, names = _stubs(federation), tuple(federation.names)
    first = stubs[0].JoinMpc(site_pb2.JoinMpcRequest(session=name, rank=0, world=3,
                                                     parties=names), timeout=60)
    for rank in (1, 2):
        stubs[rank].JoinMpc(site_pb2.JoinMpcRequest(
            session=name, rank=rank, world=3, parties=names, address=first.address,
            port=first.port), timeout=60)
    tls = TlsIdentity(federation.certs.cert("coordinator"), federation.certs.key("coordinator"),
                      federation.certs.ca)
    dealer = Party(3, 3, PartyConfig(tls=tls, names=names, timeout_s=60),
                   (first.address, first.port))
    try:
        yield stubs
    finally:
        dealer.stop()
        for stub in stubs:
            stub.LeaveMpc(site_pb2.LeaveMpcRequest(session=name), timeout=30)


def _run_everywhere(stubs: list[site_pb2_grpc.SiteStub], session: str, program: str,
                    inputs: list[bytes], publics: list[dict[str, object]]) -> list[object]:
    """One program at every site's party at once: each reply, or the error it ended with."""
    with ThreadPoolExecutor(max_workers=len(stubs)) as pool:
        calls = [pool.submit(stub.RunProgram, site_pb2.ProgramRequest(
            session=session, program=program, input=value, public_json=codec.dumps(public)),
            timeout=120) for stub, value, public in zip(stubs, inputs, publics, strict=True)]
        return [call.exception() or call.result() for call in calls]


def _inputs(stubs: list[site_pb2_grpc.SiteStub], session: str, queries: list[object],
            backend: common_pb2.Backend, state: object = None) -> list[bytes]:
    return [_ask(stub, site_pb2.ContributeRequest(
        request=f"{session}-{rank}", query=query_message(query), state_json=codec.dumps(state),
        n_sites=3, round=1, mpc_session=session, backend=backend))
        for rank, (stub, query) in enumerate(zip(stubs, queries, strict=True))]


def test_a_coordinator_cannot_reveal_one_site_s_partial_under_mpc(
        federation: LocalFederation) -> None:
    """The attack: site-1 contributes the real query, the others an empty subgroup of
    another query, and the coordinator reveals the 'sum' — site-1's partial. The parties
    compare what each input answers and share nothing."""
    with _session(federation, "mixed") as stubs:
        asked = [Mean("age", where="sex == 'female'"), Mean("age", where="age < 19"),
                 Mean("age", where="age < 19")]
        tokens = _inputs(stubs, "mixed", asked, common_pb2.Backend(name="mpc"))
        failures = _run_everywhere(stubs, "mixed", "share_sum", tokens, [{}] * 3)
    assert all(isinstance(f, grpc.RpcError) and f.code() == grpc.StatusCode.UNAVAILABLE
               for f in failures)  # no party revealed anything
    assert any("answer another query" in f.details() for f in failures)  # type: ignore[union-attr]


def test_the_coordinator_s_program_parameters_are_never_used(
        federation: LocalFederation, lung3: Workload) -> None:
    """With a scale of 0 at two parties, a revealed sum would be the third site's partial;
    the sites use the parameters of the query they answer instead, and refuse to reveal
    the sums of a query finalized inside MPC."""
    with _session(federation, "scaled") as stubs:
        tokens = _inputs(stubs, "scaled", [Count()] * 3, common_pb2.Backend(name="mpc"))
        bogus = [{"scale": 2.0**20, "size": 1}, {"scale": 0.0, "size": 1},
                 {"scale": 0.0, "size": 1}]
        _run_everywhere(stubs, "scaled", "share_sum", tokens, bogus)
        revealed = _run_everywhere(stubs, "scaled", "reveal_sum", [b""] * 3, [{}] * 3)
        values = codec.loads(revealed[0].output_json)["values"]  # type: ignore[union-attr]
        scale = MPC().share_public(Count().layout(lung3.schema))["scale"]
        assert values[0] / scale == len(lung3.pooled())  # every site's count, not site-1's
        tokens = _inputs(stubs, "scaled", [Mean("age")] * 3, common_pb2.Backend(name="mpc"))
        _run_everywhere(stubs, "scaled", "share_sum", tokens, [{}] * 3)
        refused = _run_everywhere(stubs, "scaled", "reveal_sum", [b""] * 3, [{}] * 3)
    assert all(isinstance(r, grpc.RpcError) and r.code() == grpc.StatusCode.FAILED_PRECONDITION
               for r in refused)


def test_a_coordinator_cannot_run_a_secure_program_at_will(
        federation: LocalFederation) -> None:
    """Each run of a secure program reveals fresh rounding noise (its copies' spread
    among it): run without end on one shared sum, it could be averaged into more than the
    answer. A site runs a program at most ATTEMPTS times on one sum, as many as the
    backend's reruns need, and again only on inputs shared anew."""
    with _session(federation, "rerun") as stubs:
        tokens = _inputs(stubs, "rerun", [Mean("age")] * 3, common_pb2.Backend(name="mpc"))
        _run_everywhere(stubs, "rerun", "share_sum", tokens, [{}] * 3)
        for _ in range(ATTEMPTS):
            runs = _run_everywhere(stubs, "rerun", "secure", [b""] * 3, [{}] * 3)
            assert not any(isinstance(r, Exception) for r in runs)
        refused = _run_everywhere(stubs, "rerun", "secure", [b""] * 3, [{}] * 3)
    assert all(isinstance(r, grpc.RpcError) and r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
               for r in refused)
    assert f"already ran {ATTEMPTS} times" in refused[0].details()  # type: ignore[union-attr]


def test_fine_cells_a_site_lets_into_mpc_can_never_be_revealed(
        federation: LocalFederation, hostile: site_pb2_grpc.SiteStub, lung3: Workload) -> None:
    """A site's cell rule (3 rows) refuses a daily-grid Cox round under plaintext, whose
    sums are revealed, but lets it into MPC, where the round is finalized inside: there the
    coordinator's reveal_sum, which would show every site's risk sets per day, is refused
    by the sites themselves."""
    query = Cox("time", "dead", ("age",), grid=tuple(range(1, 1101)))
    state = query.initial_state(lung3.schema)
    with pytest.raises(grpc.RpcError) as cells:
        _ask(hostile, site_pb2.ContributeRequest(
            request="daily-plain", query=query_message(query), state_json=codec.dumps(state),
            n_sites=3,
            round=1, backend=backend_message("plaintext", {})))
    assert cells.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "'events' cell has fewer than 3 rows" in cells.value.details()
    with _session(federation, "daily") as stubs:
        tokens = _inputs(stubs, "daily", [query] * 3, common_pb2.Backend(name="mpc"), state)
        _run_everywhere(stubs, "daily", "share_sum", tokens, [{}] * 3)
        refused = _run_everywhere(stubs, "daily", "reveal_sum", [b""] * 3, [{}] * 3)
    assert all(isinstance(r, grpc.RpcError) and r.code() == grpc.StatusCode.FAILED_PRECONDITION
               for r in refused)


def test_the_services_keep_serving_after_the_attacks(federation: LocalFederation) -> None:
    with federation.client() as client:
        assert client.study("plaintext").run(Count()).value == 228
    for name in federation.names:
        assert _audit(federation, name).verify() > 0


def test_a_key_made_for_he_dp_never_encrypts_an_exact_partial(
        federation: LocalFederation, hostile: site_pb2_grpc.SiteStub) -> None:
    """A coordinator that had the sites answer a plain `he` query under the key an analyst
    made for an he+dp fit could have the analyst's client reveal the exact sum, labelled
    as the fit's marginals: a site binds each public key to the backend it first served,
    also when the coordinator repacks that key beside another."""
    from pet.backends import get_backend
    from pet.backends.he import _join, _split

    context = get_backend("he+dp", epsilon=1.0, delta=1e-6).backend.public_context

    def asked(request: str, name: str, key: bytes) -> site_pb2.ContributeRequest:
        options = {"epsilon": 1.0, "delta": 1e-6} if name == "he+dp" else {}
        return site_pb2.ContributeRequest(
            request=request, analyst="mallory", query=query_message(Mean("age")),
            state_json="null", backend=backend_message(name, {**options, "public_context": key}),
            n_sites=3, round=1)

    _ask(hostile, asked("keyed-noisy", "he+dp", context))
    repacked = _join([_split(HE().public_context)[0], _split(context)[1]])  # same CKKS key
    for key in (context, repacked):
        details = _refused(lambda key=key: _ask(hostile, asked("keyed-exact", "he", key)),
                           grpc.StatusCode.PERMISSION_DENIED)
        assert "it serves he+dp alone, not he" in details
    _ask(hostile, asked("keyed-fresh", "he", HE().public_context))  # a study's own key


def test_ask_ends_at_the_coordinators_deadline_while_its_work_is_held(monkeypatch) -> None:
    """A study the sites hold (here: an MPC session another run keeps) cannot keep `Ask`
    past the coordinator's run_deadline_s: the call answers DEADLINE_EXCEEDED naming the
    setting, as `Run` does, and gives its thread back."""
    import threading
    import types

    import services.coordinator as coordinator
    from services.jobs import Runs
    from services.status import CallError

    held = threading.Event()
    study = types.SimpleNamespace(run=lambda query: held.wait(30))
    sites = types.SimpleNamespace(
        agreement=lambda deadline: types.SimpleNamespace(schema=None, backends=("dp",)),
        study=lambda *args: study)
    monkeypatch.setattr(coordinator, "_checked", lambda message, schema, limits: None)
    monkeypatch.setattr(coordinator, "get_backend", lambda name, **options: None)
    config = types.SimpleNamespace(analyst=lambda token: "analyst", run_deadline_s=0.5,
                                   limits=None)
    context = types.SimpleNamespace(invocation_metadata=lambda: (), time_remaining=lambda: None,
                                    add_callback=lambda callback: True)
    service = coordinator.CoordinatorService(config, sites, Runs(4))
    started = time.monotonic()
    with pytest.raises(CallError) as ended:
        coordinator.CoordinatorService.Ask.__wrapped__(  # type: ignore[attr-defined]
            service, coordinator_pb2.Start(backend=common_pb2.Backend(name="dp")), context)
    held.set()
    assert ended.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "run_deadline_s" in str(ended.value) and time.monotonic() - started < 5


def test_a_site_lacking_a_method_is_a_version_mismatch_not_the_callers_unimplemented() -> None:
    """A site of another pet version answers UNIMPLEMENTED to a method the coordinator
    calls; passed on as is, the analyst's client would take it for the coordinator's own
    and run the study again through Run, charging the sites twice."""
    from services.status import from_rpc

    class Unimplemented(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.UNIMPLEMENTED

        def details(self) -> str:
            return "Method not found!"

    error = from_rpc(Unimplemented(), "site 'site-1'")
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "site 'site-1'" in str(error) and "version" in str(error)
