"""The services over real gRPC on loopback: a coordinator and three site servers, each its
own process started with `pet serve`, asked through the analyst's client."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pet.audit import AuditLog
from pet.backends import BACKENDS
from pet.client import Client, RemoteError
from pet.errors import PetError
from pet.ledger import Ledger
from pet.mpc.parties import free_port
from pet.queries import (
    QUERIES,
    Count,
    Cox,
    Histogram,
    KaplanMeier,
    LogisticRegression,
    Mean,
    TableOne,
)
from pet.queries.cox import SITE
from pet.workloads import Workload
from services import codegen
from services.config import Tls
from services.convert import query_message
from services.local import LocalFederation
from services.pb import common_pb2, coordinator_pb2, coordinator_pb2_grpc, site_pb2, site_pb2_grpc
from services.security import analyst_channel, peer_channel
from tests.conftest import NO_CELL_LIMIT

DP = {"epsilon": 1.0, "delta": 1e-6}
BUDGET = {"epsilon": 1000.0, "delta": 1e-3}
DEADLINE_S = 60


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    """Three lung sites without cell suppression (answers compare with pooled data); the
    one analyst token stands for the hundred concurrent analysts of a test below."""
    folder = tmp_path_factory.mktemp("federation")
    with LocalFederation(folder, deadline_s=DEADLINE_S, site_options={
            "budget": BUDGET, "disclosure": {"min_cell": 1}},
            coordinator_options={"runs_per_analyst": 100}) as running:
        yield running


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    """Three lung sites with disclosure control, a small budget, and site-2 refusing the
    plaintext backend."""
    folder = tmp_path_factory.mktemp("guarded")
    with LocalFederation(folder, site_options={"budget": {"epsilon": 3.0, "delta": 1e-5}},
                         per_site={"site-2": {"allow_plaintext": False}}) as running:
        yield running


@pytest.fixture(scope="module")
def client(federation: LocalFederation) -> Iterator[Client]:
    with federation.client() as connected:
        yield connected


def test_generated_code_is_fresh() -> None:
    assert codegen.stale() == []


def test_the_federation_describes_its_sites_schema_and_backends(client: Client,
                                                                lung3: Workload) -> None:
    assert client.sites == ["site-1", "site-2", "site-3"]
    assert client.schema == lung3.schema
    assert client.backends == list(BACKENDS)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_every_backend_answers_through_the_services(client: Client, lung3: Workload,
                                                    backend: str) -> None:
    options = DP if BACKENDS[backend].differentially_private else {}
    pooled = lung3.pooled()
    with client.study(backend, **options) as study:
        mean = study.run(Mean("age"))
        counts = study.run(Histogram("age", (18, 50, 60, 70, 100)))
    exact_counts = np.histogram(pooled.age, (18, 50, 60, 70, 100))[0]
    if BACKENDS[backend].differentially_private:
        assert mean.privacy.epsilon == 1.0
        # Each number's bound is the 95% half-width of its interval: five of them are
        # exceeded with probability below 10⁻⁶ even under local DP's Laplace noise.
        assert abs(mean.value - pooled.age.mean()) <= 5 * mean.error_bound
        assert np.all(np.abs(counts.value - exact_counts) <= 5 * counts.error_bounds)
    else:
        assert mean.privacy.epsilon is None  # exact, or within CKKS / fixed-point rounding
        assert mean.value == pytest.approx(pooled.age.mean(), rel=1e-9 if mean.error_bound == 0
                                           else 1e-6)
        assert counts.value.tolist() == exact_counts.tolist()
    assert mean.backend == backend
    assert [s.name for s in mean.sites] == ["site-1", "site-2", "site-3"]


@pytest.mark.parametrize("backend", ["dp", "he+dp", "mpc+dp"])
def test_a_dp_study_that_names_no_delta_keeps_the_in_process_default(
        client: Client, backend: str) -> None:
    in_process = BACKENDS[backend](epsilon=1.0).cost()
    with client.study(backend, epsilon=1.0) as study:
        result = study.run(Count())
    assert in_process[1] > 0  # Gaussian noise, which he+dp and mpc+dp need
    assert (result.privacy.epsilon, result.privacy.delta) == in_process


def test_a_dp_study_asking_for_delta_zero_gets_laplace_noise(client: Client) -> None:
    with client.study("dp", epsilon=1.0, delta=0.0) as study:
        result = study.run(Count())
    assert result.privacy.delta == 0 and result.privacy.rho is None


def test_logistic_regression_under_he_reveals_every_round_at_the_analyst(
        client: Client, lung3: Workload) -> None:
    pooled = lung3.pooled().dropna(subset=["age", "sex", "ph_ecog"])
    design = sm.add_constant(pooled[["age"]].assign(sex=(pooled.sex == "female").astype(float),
                                                    ph_ecog=pooled.ph_ecog))
    reference = sm.Logit(pooled.dead.astype(float), design).fit(disp=0)
    with client.study("he") as study:
        fit = study.run(LogisticRegression("dead", ("age", "sex", "ph_ecog")))
    assert fit.rounds > 2
    assert fit.value.names == ("intercept", "age", "sex[female]", "ph_ecog")
    # CKKS rounding moves Newton's path a little (the in-process tests check its bound).
    assert fit.value.coef == pytest.approx(reference.params.to_numpy(), abs=1e-3)
    assert fit.value.se == pytest.approx(reference.bse.to_numpy(), rel=1e-3)


def test_a_payload_beyond_the_message_limit_streams(client: Client, lung3: Workload) -> None:
    edges = tuple(np.linspace(0, 100, 250_001))  # 250 000 counts: 62 BFV ciphertexts
    with client.study("he") as study:
        result = study.run(Histogram("age", edges))
    assert min(s.bytes_sent for s in result.sites) > 4 * 1024 * 1024
    assert result.value.tolist() == np.histogram(lung3.pooled().age, edges)[0].tolist()


def test_kaplan_meier_under_mpc_matches_the_pooled_counts(client: Client,
                                                          lung3: Workload) -> None:
    pooled = lung3.pooled()
    with client.study("mpc") as study:
        curve = study.run(KaplanMeier("time", "dead", grid=(365, 730, 1100))).value
    first_year = ((pooled.time <= 365) & pooled.dead).sum()
    assert curve.events[0] == first_year


@pytest.mark.parametrize("backend", ["plaintext", "mpc"])
def test_a_cox_model_stratified_by_site_equals_the_pooled_fit(client: Client,
                                                              lung3: Workload,
                                                              backend: str) -> None:
    """Each site server places its sums in its own stratum by the name in its own
    configuration; the fit is statsmodels' on the pooled rows with sites as strata."""
    frame = pd.concat([t.to_frame().assign(site=name) for name, t in lung3.tables.items()],
                      ignore_index=True).dropna(subset=["ph_ecog"])
    reference = sm.PHReg(frame.time, frame[["age", "ph_ecog"]].astype(float),
                         status=frame.dead.astype(int), ties="breslow",
                         strata=frame.site).fit()
    query = Cox("time", "dead", ("age", "ph_ecog"), grid=tuple(range(1, 1101)),
                strata=SITE, sites=tuple(client.sites))
    with client.study(backend) as study:
        fit = study.run(query).value
    tolerance = 1e-6 if backend == "plaintext" else 0.05
    np.testing.assert_allclose(fit.coef, reference.params, rtol=tolerance)
    assert fit.events == int(frame.dead.sum())


@pytest.mark.parametrize("backend", ["plaintext", "he"])
def test_a_table_one_through_the_services_is_the_pooled_table(client: Client, lung3: Workload,
                                                             backend: str) -> None:
    """One round through coordinator and sites; counts exact, means within CKKS error."""
    query = TableOne(("age", "ph_ecog", "wt_loss", "dead"), by="sex")
    with client.study(backend) as study:
        result = study.run(query)
    table, pooled = result.value, lung3.pooled()
    assert result.rounds == 1
    assert table.sizes.tolist() == [len(pooled), *pooled.sex.value_counts()[["male", "female"]]]
    assert table.counts[3][1].tolist() == [pooled.dead.sum(),
                                           *pooled.groupby("sex").dead.sum()[["male", "female"]]]
    means = [pooled.wt_loss.mean(), *pooled.groupby("sex").wt_loss.mean()[["male", "female"]]]
    np.testing.assert_allclose(table.mean[2], means, rtol=1e-4)  # CKKS: about 1e-6
    assert "wt_loss, mean (SD)" in table.to_text()


def _pet(*args: str, token: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pet", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PET_TOKEN": token})


def test_the_command_line_asks_the_federation_and_reads_a_site_s_files(
        federation: LocalFederation, lung3: Workload) -> None:
    connect = ["--coordinator", federation.address, "--ca", str(federation.certs.ca)]
    asked = _pet("query", "Mean('age', where=\"sex == 'female'\")", *connect, "--backend", "he",
                 "--json", token=federation.token)
    assert asked.returncode == 0, asked.stderr
    answer = json.loads(asked.stdout)  # plain JSON: no pet code needed to read it
    pooled = lung3.pooled()
    # CKKS noise is random: the answer lies within the bound it reports, a small one.
    truth = pooled.age[pooled.sex == "female"].mean()
    assert abs(answer["value"] - truth) <= answer["error_bound"] < 0.01
    assert answer["error_bounds"] == [answer["error_bound"]]  # one per number, in years
    assert answer["backend"] == "he" and answer["n"] == (pooled.sex == "female").sum()
    several = _pet("query", "Count()", 'LinearRegression("wt_loss", ("age", "sex"))', *connect,
                   "--json", token=federation.token)
    count, fit = json.loads(several.stdout)
    assert count["value"] == 228 and count["table"] == [{"value": 228}]
    rows = pooled.dropna(subset=["wt_loss"])
    design = np.column_stack([np.ones(len(rows)), rows.age, rows.sex == "female"])
    coef = np.linalg.lstsq(design, rows.wt_loss.to_numpy(), rcond=None)[0]
    assert [row["term"] for row in fit["table"]] == ["intercept", "age", "sex[female]"]
    np.testing.assert_allclose([row["coef"] for row in fit["table"]], coef, rtol=1e-9)
    entries = len(AuditLog(federation.directory / "site-1" / "audit.sqlite").entries())
    checked = _pet("query", "Count()", 'Mean("height")', *connect, token=federation.token)
    assert checked.returncode == 1 and "unknown column 'height'" in checked.stderr
    assert checked.stdout == ""  # checked before any ran: nothing asked, nothing shown
    assert len(AuditLog(federation.directory / "site-1" / "audit.sqlite").entries()) == entries
    table = _pet("query", "Count()", *connect, token=federation.token)
    assert re.search(r"^Count\(\)\s+228\s+228\s", table.stdout, re.M), table.stdout
    budgets = json.loads(_pet("budget", *connect, "--json", token=federation.token).stdout)
    assert [b["site"] for b in budgets] == federation.names
    refused = _pet("query", "Count()", *connect, token="wrong")
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
    log = federation.directory / "site-1" / "audit.sqlite"
    audit = _pet("audit", str(log), "--json", "--verify")
    assert audit.returncode == 0 and "audit chain intact" in audit.stderr
    assert json.loads(audit.stdout)[-1]["query"] == "Count()"
    health = _pet("health", f"127.0.0.1:{federation.ports['site-1']}", "--tls",
                  str(federation.certs.directory), "--role", "coordinator")
    assert health.returncode == 0 and "SERVING" in health.stdout
    health = _pet("health", federation.address, "--ca", str(federation.certs.ca))
    assert health.returncode == 0 and "SERVING" in health.stdout
    closed = _pet("health", f"127.0.0.1:{free_port('127.0.0.1')}", "--ca",
                  str(federation.certs.ca), "--wait", "1")
    assert closed.returncode == 1 and "UNAVAILABLE" in closed.stderr


def test_a_bad_query_is_invalid_argument(federation: LocalFederation) -> None:
    start = coordinator_pb2.Start(query=query_message(Mean("height")),
                                  backend=common_pb2.Backend(name="plaintext"))
    channel = analyst_channel(federation.address, federation.certs.ca.read_bytes(),
                              federation.token)
    with channel, pytest.raises(grpc.RpcError) as refused:
        list(coordinator_pb2_grpc.CoordinatorStub(channel).Run(
            iter([coordinator_pb2.RunRequest(start=start)]), timeout=30))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown column 'height'" in refused.value.details()


def test_disclosure_control_is_failed_precondition(guarded: LocalFederation) -> None:
    with guarded.client() as client, client.study("he") as study, \
            pytest.raises(RemoteError) as refused:
        study.run(Histogram("age", tuple(range(10, 111, 10))))
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "fewer than 3 rows" in str(refused.value)


def test_the_readme_clinical_example_passes_disclosure_control(guarded: LocalFederation,
                                                               lung3: Workload) -> None:
    """As the README shows it, under each site's cell rule (3 rows): a Table 1 without
    the medians' fine histograms under he, and a Cox model on a 50-step grid under mpc,
    which reveals nothing per grid time (the rule refuses that grid under he)."""
    table_one = TableOne(("age", "ph_ecog", "wt_loss", "dead"), by="sex", medians=False)
    cox = Cox("time", "dead", ("age", "sex", "ph_ecog"), grid=50)
    with guarded.client() as client:
        with client.study("he") as study:
            table = study.run(table_one).value
            with pytest.raises(RemoteError, match="'events' cell"):
                study.run(cox)
        with client.study("mpc") as study:
            fit = study.run(cox).value
    assert table.sizes[0] == lung3.n_rows and "dead, n (%)" in table.to_text()
    np.testing.assert_allclose(table.mean, lung3.study().run(table_one).value.mean, rtol=1e-4)
    exact = lung3.study(policy=NO_CELL_LIMIT).run(cox).value
    assert np.all(np.abs(fit.coef - exact.coef) <= 0.05 * exact.se)


def test_an_exhausted_budget_is_resource_exhausted_and_charges_nothing(
        guarded: LocalFederation) -> None:
    ledgers = [Ledger(guarded.directory / name / "ledger.sqlite") for name in guarded.names]
    before = [ledger.budget("lung").spent_epsilon for ledger in ledgers]
    with guarded.client() as client, client.study("dp", epsilon=5.0, delta=0.0) as study, \
            pytest.raises(RemoteError) as refused:
        study.run(Count())
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert [ledger.budget("lung").spent_epsilon for ledger in ledgers] == before
    entries = AuditLog(guarded.directory / "site-1" / "audit.sqlite").entries()
    assert entries[-1].outcome == "refused"
    assert entries[-1].epsilon == 0.0
    assert "cannot pay" in entries[-1].detail


def test_a_site_can_switch_the_plaintext_backend_off(guarded: LocalFederation) -> None:
    with guarded.client() as client:
        assert "plaintext" not in client.backends
        with pytest.raises(RemoteError) as refused, client.study("plaintext") as study:
            study.run(Count())
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert client.study("he").run(Count()).value == 228


def test_a_wrong_or_missing_token_is_unauthenticated(guarded: LocalFederation) -> None:
    start = coordinator_pb2.Start(query=query_message(Count()),
                                  backend=common_pb2.Backend(name="dp", epsilon=1.0))
    for token in ("not-the-token", ""):
        with Client(guarded.address, token=token or " ", ca=guarded.certs.ca) as stranger:
            with pytest.raises(RemoteError) as refused:
                stranger.study("he").run(Count())
            assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as asked:  # the unary call is guarded too
                stranger.stub.Ask(start, timeout=30)
            assert asked.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_site_refuses_a_client_without_a_certificate(guarded: LocalFederation) -> None:
    address = f"127.0.0.1:{guarded.ports['site-1']}"
    credentials = grpc.ssl_channel_credentials(root_certificates=guarded.certs.ca.read_bytes())
    with grpc.secure_channel(address, credentials) as channel, \
            pytest.raises(grpc.RpcError) as refused:
        site_pb2_grpc.SiteStub(channel).Describe(site_pb2.DescribeSiteRequest(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails


def test_a_site_never_answers_another_site_asking_for_its_data(
        guarded: LocalFederation) -> None:
    tls = Tls(guarded.certs.cert("site-2"), guarded.certs.key("site-2"), guarded.certs.ca)
    request = site_pb2.ContributeRequest(
        request="r", query=query_message(Count()), state_json="null",
        backend=common_pb2.Backend(name="he"), n_sites=3)
    with peer_channel(f"127.0.0.1:{guarded.ports['site-1']}", tls) as channel, \
            pytest.raises(grpc.RpcError) as refused:
        list(site_pb2_grpc.SiteStub(channel).Contribute(request, timeout=10))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "only 'coordinator' may call this site" in refused.value.details()
    last = AuditLog(guarded.directory / "site-1" / "audit.sqlite").entries()[-1]
    assert last.outcome == "refused" and "names 'site-2'" in last.detail


def test_an_analyst_token_does_not_open_a_site(guarded: LocalFederation) -> None:
    address = f"127.0.0.1:{guarded.ports['site-1']}"
    with analyst_channel(address, guarded.certs.ca.read_bytes(), guarded.token) as channel, \
            pytest.raises(grpc.RpcError) as refused:
        site_pb2_grpc.SiteStub(channel).Describe(site_pb2.DescribeSiteRequest(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # no client certificate


FIELDS = sorted({name for cls in QUERIES.values()
                 for name in cls.__dataclass_fields__} | {"bogus"})
VALUES = st.one_of(
    st.builds(lambda t: common_pb2.Value(text=t), st.text(max_size=12)),
    st.builds(lambda x: common_pb2.Value(number=x), st.floats(allow_nan=True)),
    st.builds(lambda i: common_pb2.Value(integer=i), st.integers(-2**63, 2**63 - 1)),
    st.builds(lambda b: common_pb2.Value(flag=b), st.booleans()),
    st.builds(lambda xs: common_pb2.Value(texts=common_pb2.Texts(items=xs)),
              st.lists(st.text(max_size=8), max_size=4)),
    st.builds(lambda xs: common_pb2.Value(numbers=common_pb2.Numbers(items=xs)),
              st.lists(st.floats(allow_nan=True), max_size=6)),
    st.just(common_pb2.Value()),
)
KINDS = st.one_of(st.sampled_from(sorted(QUERIES)), st.text(max_size=10))
COLUMNS = st.sampled_from(["nope", "", "age ", "AGE", "time; drop"])


@st.composite
def malformed(draw: st.DrawFn) -> coordinator_pb2.RunRequest:
    """A run request that is wrong in at least one way: an unknown column (always, in a
    text argument or the filter) plus any other random arguments, backend and options."""
    query = common_pb2.Query(kind=draw(KINDS))
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True)):
        query.arguments[name].CopyFrom(draw(VALUES))
    bad = draw(COLUMNS)
    if draw(st.booleans()):
        query.where = f"{bad} == 1"
    else:
        query.arguments["column"].CopyFrom(common_pb2.Value(text=bad))
        query.where = draw(st.sampled_from(["", "age >", "((", "sex == 'x' or", "nope > 1"]))
    backend = common_pb2.Backend(
        name=draw(st.sampled_from([*BACKENDS, "", "rot13"])),
        epsilon=draw(st.floats(allow_nan=True)), delta=draw(st.floats(allow_nan=True)),
        max_rows_per_site=draw(st.integers(-5, 10**9)), max_sites=draw(st.integers(-5, 200)),
        public_context=draw(st.binary(max_size=64)))
    return coordinator_pb2.RunRequest(start=coordinator_pb2.Start(query=query, backend=backend))


def test_fuzzed_requests_are_invalid_arguments_and_the_servers_keep_serving(
        federation: LocalFederation, client: Client, lung3: Workload) -> None:
    channel = analyst_channel(federation.address, federation.certs.ca.read_bytes(),
                              federation.token)
    stub = coordinator_pb2_grpc.CoordinatorStub(channel)
    codes: dict[grpc.StatusCode, int] = {}

    @settings(max_examples=1500, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(malformed())
    def send(request: coordinator_pb2.RunRequest) -> None:
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.Run(iter([request]), timeout=30))
        codes[refused.value.code()] = codes.get(refused.value.code(), 0) + 1
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()

    send()
    channel.close()
    assert sum(codes.values()) >= 1000
    assert client.study().run(Mean("age")).value == pytest.approx(lung3.pooled().age.mean())


def test_a_hundred_concurrent_clients_get_exact_answers_and_consistent_ledgers(
        federation: LocalFederation, lung3: Workload) -> None:
    ledgers = {n: Ledger(federation.directory / n / "ledger.sqlite") for n in federation.names}
    spent = {n: ledger.budget("lung").spent_rho for n, ledger in ledgers.items()}
    audits = {n: len(AuditLog(federation.directory / n / "audit.sqlite").entries())
              for n in federation.names}
    exact = lung3.pooled().age.mean()

    def analyst(k: int) -> tuple[float, int]:
        with federation.client() as own:
            mean = own.study().run(Mean("age", where="age >= 0")).value
            count = own.study("dp", epsilon=0.25, delta=0.0).run(Count()).value
        return mean, count

    with ThreadPoolExecutor(max_workers=100) as pool:
        answers = list(pool.map(analyst, range(100)))
    assert all(mean == pytest.approx(exact, rel=1e-12) for mean, _ in answers)
    assert all(count >= 0 for _, count in answers)
    for name, ledger in ledgers.items():
        budget = ledger.budget("lung")
        # 100 pure counts of ε = 0.25, each ρ = ε²/2 (zCDP adds)
        assert budget.spent_rho == pytest.approx(spent[name] + 100 * 0.25**2 / 2, abs=1e-9)
        log = AuditLog(federation.directory / name / "audit.sqlite")
        assert log.verify() == audits[name] + 200
        new = log.entries()[audits[name]:]
        assert sum(e.epsilon for e in new) == pytest.approx(25.0, abs=1e-9)
        assert [e.outcome for e in new] == ["answered"] * 200


def test_a_site_killed_mid_query_is_unavailable_and_the_next_query_works(
        federation: LocalFederation, client: Client, lung3: Workload) -> None:
    """Runs last in this module: it kills and restarts site-2 of the shared federation."""
    victim = federation.processes["site-2"]
    outcome: list[object] = []

    def ask() -> None:
        try:
            outcome.append(client.study("mpc").run(
                LogisticRegression("dead", ("age", "sex", "ph_ecog"))))  # ~10 s of rounds
        except RemoteError as error:
            outcome.append(error)

    asking = threading.Thread(target=ask)
    asking.start()
    parties = _wait_for_children(victim.pid)
    federation.stop_server("site-2", kill=True)
    asking.join(DEADLINE_S + 10)
    assert not asking.is_alive()
    assert isinstance(outcome[0], RemoteError)
    assert outcome[0].code == grpc.StatusCode.UNAVAILABLE
    assert "site 'site-2' is unavailable" in str(outcome[0])
    _wait_gone(parties)
    federation.start_server("site-2")
    result = client.study("mpc").run(Mean("age"))
    assert result.value == pytest.approx(lung3.pooled().age.mean(), rel=1e-6)


def _wait_for_children(pid: int, timeout_s: float = 60) -> list[int]:
    """The child processes of `pid` (its MPC party), a moment after there are some: the
    query is then under way."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
        children = [int(p) for p in found.stdout.split()]
        if children:
            time.sleep(0.5)
            return children
        time.sleep(0.05)
    raise AssertionError(f"process {pid} started no MPC party within {timeout_s} s")


def _wait_gone(pids: list[int], timeout_s: float = 30) -> None:
    """Every process in `pids` has ended (none is left hanging)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{pid}").exists() and "(Z)" not in _state(pid) for pid in pids):
            return
        time.sleep(0.1)
    raise AssertionError(f"processes {pids} still run {timeout_s} s after their site died")


def _state(pid: int) -> str:
    try:
        return "(" + Path(f"/proc/{pid}/stat").read_text().split()[2] + ")"
    except OSError:
        return "(Z)"


def test_sites_find_files_a_workload_keeps_under_a_relative_folder(tmp_path: Path,
                                                                   monkeypatch) -> None:
    """A workload written under a relative folder (the benchmarks' data folder) is served
    by sites whose configurations live elsewhere: `table_data` names each file by its
    absolute path, since a relative one is read from the configuration's own folder."""
    from pet.workloads import cohort
    from services.local import table_data

    monkeypatch.chdir(tmp_path)
    workload = cohort(200, 3, 0, directory=Path("data"))
    federation = LocalFederation(tmp_path / "federation", table_data(workload))
    with federation, federation.client() as client, client.study("plaintext") as study:
        assert study.run(Count()).value == workload.study().run(Count()).value == 600


def test_ask_answers_in_one_call_and_leaves_he_to_run(client: Client,
                                                      lung3: Workload) -> None:
    """`Ask` gives `Run`'s answer in one message each way; a he or he+dp study, whose
    rounds only the analyst can reveal, is refused there and told to use Run."""
    start = coordinator_pb2.Start(query=query_message(Mean("age")),
                                  backend=common_pb2.Backend(name="plaintext"))
    reply = client.stub.Ask(start, timeout=30)
    assert json.loads(reply.value_json) == pytest.approx(
        lung3.study().run(Mean("age")).value, rel=1e-12)
    he = coordinator_pb2.Start(query=query_message(Mean("age")),
                               backend=common_pb2.Backend(name="he"))
    with pytest.raises(grpc.RpcError) as refused:
        client.stub.Ask(he, timeout=30)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "through Run" in refused.value.details()


def test_a_client_asks_a_coordinator_without_ask_through_run(client: Client,
                                                             lung3: Workload,
                                                             monkeypatch) -> None:
    """A coordinator of an earlier version answers UNIMPLEMENTED to `Ask`: the client
    asks again through `Run`, and the answer is the same."""
    class Unimplemented(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.UNIMPLEMENTED

        def details(self) -> str:
            return "Method not found"

    def ask(*args, **kwargs):
        raise Unimplemented()

    monkeypatch.setattr(client.stub, "Ask", ask)
    with client.study("plaintext") as study:
        assert study.run(Mean("age")).value == pytest.approx(
            lung3.study().run(Mean("age")).value, rel=1e-12)


def test_a_federation_that_cannot_start_leaves_no_server_running(tmp_path: Path) -> None:
    """A site whose data file is missing exits while starting: the federation's start
    fails naming it, and stops the servers it had started (the coordinator among them),
    which a `with` block's exit would not."""
    missing = {name: {"path": str(tmp_path / "absent.csv"), "schema": "lung"}
               for name in ("site-1", "site-2", "site-3")}
    federation = LocalFederation(tmp_path / "federation", missing, startup_timeout_s=60)
    with pytest.raises(PetError, match="exited with code 1 while starting"):
        federation.start()
    assert federation.processes == {}
    assert set(federation.exit_codes) == {"coordinator", "site-1", "site-2", "site-3"}
