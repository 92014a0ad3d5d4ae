"""The synthesis service over real gRPC on loopback: a fit across three site servers under
mpc+dp with its progress, every site's ledger charged once, rows streamed in chunks with
their data card, fits kept across a coordinator restart, and bad requests refused with
status codes that say why."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pandas as pd
import pytest

from pet.audit import AuditLog
from pet.client import Client, RemoteError
from pet.ledger import Ledger
from pet.mechanisms import rho_of
from pet.schema import Integer
from pet.workloads import Workload
from services.local import LocalFederation

EPSILON, DELTA = 1.0, 1e-6


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    folder = tmp_path_factory.mktemp("synthesis")
    with LocalFederation(folder, deadline_s=120, site_options={
            "budget": {"epsilon": 1.5, "delta": 1e-5}}) as running:
        yield running


@pytest.fixture(scope="module")
def client(federation: LocalFederation) -> Iterator[Client]:
    with federation.client() as connected:
        yield connected


def _ledger(federation: LocalFederation, site: str) -> Ledger:
    return Ledger(Path(federation.directory) / site / "ledger.sqlite")


def test_a_fit_across_the_sites_reports_every_step_and_charges_each_site_once(
        client: Client, federation: LocalFederation, lung3: Workload) -> None:
    steps = []
    fit = client.synthesize("mst", epsilon=EPSILON, delta=DELTA, bins=8,
                            progress=steps.append)
    d = len(lung3.schema.columns)
    # The columns twice (lung's 228 rows leave the pairs' signal faint:
    # pet.synth.allocation); a federation selects the tree on one release of every pair
    # (no exponential mechanism without a curator), then measures its d - 1 edges.
    assert [s.step for s in steps] == ["measure", "measure", "select", "measure"]
    assert [len(s.cliques.items) for s in steps] == [d, d, d * (d - 1) // 2, d - 1]
    assert [s.index for s in steps] == [1, 2, 3, 4]
    assert steps[-1].rho_spent == pytest.approx(fit.rho) and fit.rho <= rho_of(EPSILON, DELTA)
    assert steps[-1].rho_total == pytest.approx(rho_of(EPSILON, DELTA))
    for site in federation.names:
        budget = _ledger(federation, site).budget("lung")
        assert budget.spent_rho == pytest.approx(rho_of(EPSILON, DELTA), rel=1e-12)
        assert budget.releases == 1  # one charge for the whole fit
        log = AuditLog(Path(federation.directory) / site / "audit.sqlite")
        entries = [e for e in log.entries() if e.backend == "mpc+dp"]
        assert len(entries) == len(steps) and all("ρ=" in e.detail for e in entries)
        assert [e.epsilon for e in entries] == [EPSILON] + [0.0] * (len(steps) - 1)
    rows = fit.sample(2500, seed=3, chunk_rows=1000)
    assert len(rows) == 2500 and list(rows.columns) == list(lung3.schema.names)
    lung3.schema.validate(rows)  # every value inside the schema's bounds and categories
    whole = [c.name for c in lung3.schema.columns if isinstance(c, Integer)]
    assert {str(rows[name].dtype) for name in whole} == {"Int64"}  # 81, not 81.0
    assert fit.card["backend"] == "mpc+dp" and fit.card["sites"] == federation.names
    assert fit.card["rows"] == 2500 and fit.card["seed"] == 3
    assert sum(s["rho"] for s in fit.card["privacy"]["itemised"]) == pytest.approx(fit.rho)
    assert rows.equals(fit.sample(2500, seed=3))  # the same seed, the same rows


def test_a_fit_the_budget_cannot_pay_is_resource_exhausted(client: Client) -> None:
    with pytest.raises(RemoteError) as refused:
        # ρ(2, 10⁻⁶) = 0.088 exceeds what (1.5, 10⁻⁵), ρ = 0.046, leaves after the first fit
        client.synthesize("mst", epsilon=2.0, delta=DELTA)
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(("options", "words"), [
    ({"method": "gan", "epsilon": 1.0}, "unknown synthesizer 'gan'"),
    ({"method": "aim", "epsilon": -1.0}, "epsilon must be a number in [0.001, 10000]"),
    ({"method": "aim", "epsilon": 1.0, "delta": 0.0}, "needs delta > 0"),
    ({"method": "mst", "epsilon": 1.0, "backend": "he"},
     "a fit measures under mpc+dp or he+dp, not 'he'"),
])
def test_bad_fit_requests_are_invalid_arguments(client: Client, options: dict,
                                                words: str) -> None:
    with pytest.raises(RemoteError) as refused:
        client.synthesize(**options)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert words in str(refused.value)


def test_sampling_an_unknown_fit_is_not_found(client: Client) -> None:
    from pet.client import RemoteFit
    from services.pb import synthesis_pb2

    ghost = RemoteFit(client, synthesis_pb2.Fitted(fit="no-such-fit"))
    with pytest.raises(RemoteError) as refused:
        ghost.sample(10)
    assert refused.value.code == grpc.StatusCode.NOT_FOUND


def test_the_command_line_fits_through_the_coordinator_and_samples_from_it(
        federation: LocalFederation, lung3: Workload, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from pet.cli import main

    token = tmp_path / "token"
    token.write_text(federation.token)
    connection = ["--ca", str(federation.certs.ca), "--token-file", str(token)]
    fitted = tmp_path / "fit"
    assert main(["synth", "fit", "--coordinator", federation.address, "--method", "mst",
                 "--epsilon", "0.4", "--bins", "6", "--out", str(fitted), *connection]) == 0
    printed = capsys.readouterr().out
    assert printed.count("measure: ρ") == 3 and "select: ρ" in printed  # progress, per step
    out = tmp_path / "release" / "synthetic.parquet"
    assert main(["synth", "sample", str(fitted), "--rows", "300", "--seed", "4",
                 "--out", str(out), *connection]) == 0
    rows = pd.read_parquet(out)
    assert len(rows) == 300 and list(rows.columns) == list(lung3.schema.names)
    lung3.schema.validate(rows)
    data = json.loads((out.parent / "card.json").read_text())
    assert data["backend"] == "mpc+dp" and data["sites"] == federation.names
    assert data["privacy"]["charged"]["epsilon"] == 0.4 and data["rows"] == 300
    for site in federation.names:  # the first fit's ρ, and this one's (zCDP adds)
        spent = _ledger(federation, site).budget("lung").spent_rho
        assert spent == pytest.approx(rho_of(EPSILON, DELTA) + rho_of(0.4, 1e-6), rel=1e-12)
        # The card names the request; the site's own log holds its data's fingerprint.
        audit = AuditLog(Path(federation.directory) / site / "audit.sqlite")
        entries = [e for e in audit.entries() if e.request == data["audit"]["request"]]
        assert entries and "data fingerprint " in entries[0].detail
        assert entries[0].detail.split("data fingerprint ")[1][:64] not in json.dumps(data)
    # The coordinator keeps its fits on disk: after a restart the same fit samples the
    # same rows.
    federation.stop_server("coordinator")
    federation.start_server("coordinator")
    again = tmp_path / "after-restart" / "synthetic.parquet"
    assert main(["synth", "sample", str(fitted), "--rows", "300", "--seed", "4",
                 "--out", str(again), *connection]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(again), rows)
    assert main(["synth", "sample", str(fitted), "--rows", "5", "--out",
                 str(tmp_path / "again.csv")]) == 1  # no token: a clear refusal
    assert "--ca and a token" in capsys.readouterr().err


def test_a_fit_under_he_dp_is_revealed_by_the_analyst_alone(
        client: Client, federation: LocalFederation, lung3: Workload) -> None:
    """The coordinator holds no secret key: each release comes to the client, which
    reveals it with a key made for this fit; each site charges the fit once."""
    before = {site: _ledger(federation, site).budget("lung").spent_rho
              for site in federation.names}
    steps = []
    fit = client.synthesize("mst", epsilon=0.3, delta=DELTA, bins=6, backend="he+dp",
                            progress=steps.append)
    assert [s.step for s in steps].count("measure") == 3 and fit.measurements > 0
    rows = fit.sample(200, seed=1)
    lung3.schema.validate(rows)
    assert fit.card["backend"] == "he+dp" and fit.card["sites"] == federation.names
    for site in federation.names:
        spent = _ledger(federation, site).budget("lung").spent_rho - before[site]
        assert spent == pytest.approx(rho_of(0.3, DELTA), rel=1e-9)


def test_a_fit_under_he_dp_without_the_analysts_key_is_refused(client: Client) -> None:
    from services.pb import synthesis_pb2

    start = synthesis_pb2.FitStart(method="mst", epsilon=1.0, delta=DELTA, backend="he+dp")
    with pytest.raises(grpc.RpcError) as refused:
        list(client.synthesis.Fit(iter([synthesis_pb2.FitRequest(start=start)]), timeout=60))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "needs the analyst's public context" in refused.value.details()


def test_the_analyst_reveals_nothing_but_a_fits_marginals(lung3: Workload) -> None:
    """A coordinator that sends another query's ciphertext to be revealed is refused: the
    fit's key decrypts its marginals and nothing else."""
    from pet.backends import get_backend
    from pet.client import _Revealing
    from pet.errors import PetError
    from pet.queries import Mean
    from services import convert
    from services.pb import coordinator_pb2, synthesis_pb2

    keys = get_backend("he+dp", epsilon=1.0, delta=DELTA)
    revealing = _Revealing(lung3.schema, keys)
    asked = synthesis_pb2.Measurement(query=convert.query_message(Mean("age")), rho=0.01,
                                      reveal=coordinator_pb2.Reveal(data=b"x", last=True))
    with pytest.raises(PetError, match="not a fit's marginals"):
        revealing.piece(asked)
    with pytest.raises(PetError, match="holds no key"):
        _Revealing(lung3.schema, None).piece(asked)


@pytest.mark.parametrize(("messages", "words"), [
    ([], "a fit starts with a FitStart message"),
    (["conclusion"], "a fit starts with a FitStart message"),
    (["mpc+dp with a context"], "a public context is for fits under he+dp, not mpc+dp"),
    (["he+dp with a bad context"], "the analyst's public context"),
])
def test_a_fit_stream_that_starts_wrong_is_an_invalid_argument(client: Client, messages: list,
                                                               words: str) -> None:
    from services.pb import coordinator_pb2, synthesis_pb2

    made = {
        "conclusion": synthesis_pb2.FitRequest(conclusion=coordinator_pb2.Conclusion()),
        "mpc+dp with a context": synthesis_pb2.FitRequest(start=synthesis_pb2.FitStart(
            method="mst", epsilon=1.0, delta=DELTA, public_context=b"key")),
        "he+dp with a bad context": synthesis_pb2.FitRequest(start=synthesis_pb2.FitStart(
            method="mst", epsilon=1.0, delta=DELTA, backend="he+dp",
            public_context=b"not a context")),
    }
    with pytest.raises(grpc.RpcError) as refused:
        list(client.synthesis.Fit(iter([made[m] for m in messages]), timeout=60))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in refused.value.details()


@pytest.mark.parametrize("rho", [0.0, 1.0])
def test_the_analysts_keys_reveal_no_release_past_the_fits_budget(rho: float) -> None:
    from pet.backends import get_backend
    from pet.errors import ArgumentError

    with pytest.raises(ArgumentError):
        get_backend("he+dp", epsilon=1.0, delta=DELTA).at_rho(rho)
