"""Operators' view of real servers on loopback: Prometheus metrics, JSON logs, and a
site's read-only console driven in a real headless Chromium."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import socket
import sqlite3
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from playwright.sync_api import Page, sync_playwright
from prometheus_client.parser import text_string_to_metric_families

from pet.audit import AuditLog
from pet.client import Client, RemoteError
from pet.ledger import Ledger
from pet.mpc.parties import free_port
from pet.queries import Count, Mean
from pet.workloads import lung
from services import console as console_module
from services.config import Tls
from services.console import Console, Endpoints
from services.local import LocalFederation

HOST = "127.0.0.1"
OFFICER = secrets.token_urlsafe(24)
HOSTILE = "<img src=x onerror=document.title=1>"
"""Text an analyst can put in a query (as a comment of its filter): the audit log keeps it,
and the console must show it as text, never run it."""
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    """Three lung sites with budgets; site-1 and the coordinator serve their consoles.
    An analyst has asked exact and DP questions and been refused once by disclosure
    control and once for a category no site knows."""
    folder = tmp_path_factory.mktemp("console")
    ports = {"site-1": free_port(HOST), "coordinator": free_port(HOST)}
    console = {name: {"console": {"listen": f"{HOST}:{port}", "officers": "officers.yaml"}}
               for name, port in ports.items()}
    running = LocalFederation(folder, site_options={"budget": {"epsilon": 5.0, "delta": 1e-5}},
                              per_site={"site-1": console["site-1"]},
                              coordinator_options=console["coordinator"])
    digest = hashlib.sha256(OFFICER.encode()).hexdigest()
    (folder / "officers.yaml").write_text(f"dpo: {{token_sha256: {digest}}}\n")
    running.console_ports = ports  # type: ignore[attr-defined]
    with running, running.client() as client:
        _ask(client)
        yield running


def _ask(client: Client) -> None:
    ages = lung(n_sites=3).tables["site-1"].to_frame().age.value_counts()
    rare = int(ages[ages < 3].index[0])  # fewer than 3 patients of this age at site-1
    with client.study("plaintext") as study:
        study.run(Count())
        study.run(Count(where=f"age > 1 # {HOSTILE}"))
        with pytest.raises(RemoteError, match="fewer than 3 rows"):
            study.run(Count(where=f"age == {rare}"))
    with client.study("dp", epsilon=1.0, delta=1e-6) as study:
        study.run(Mean("age"))
    with client.study("dp", epsilon=10.0, delta=1e-6) as study, \
            pytest.raises(RemoteError, match="RESOURCE_EXHAUSTED"):
        study.run(Mean("age"))


def _get(federation: LocalFederation, server: str, path: str,
         token: str | None = OFFICER) -> tuple[int, bytes]:
    context = ssl.create_default_context(cafile=str(federation.certs.ca))
    request = urllib.request.Request(
        f"https://{HOST}:{federation.console_ports[server]}{path}",  # type: ignore[attr-defined]
        headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition, by name and labels."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode())
            for s in family.samples}


def test_a_site_exports_calls_refusals_and_budgets(federation: LocalFederation) -> None:
    status, body = _get(federation, "site-1", "/metrics")
    assert status == 200
    samples = _samples(body)
    contribute = "/pet.v1.Site/Contribute"
    assert samples[("pet_requests_total", (("code", "OK"), ("method", contribute)))] >= 3
    assert samples[("pet_requests_total",
                    (("code", "FAILED_PRECONDITION"), ("method", contribute)))] == 1
    assert samples[("pet_refusals_total", (("reason", "disclosure"),))] == 1
    assert samples[("pet_refusals_total", (("reason", "budget"),))] == 1
    assert samples[("pet_request_seconds_count", (("method", contribute),))] >= 4
    budget = Ledger(federation.directory / "site-1" / "ledger.sqlite").budget("lung")
    assert samples[("pet_budget_remaining_epsilon", (("dataset", "lung"),))] == \
        pytest.approx(budget.epsilon - budget.spent_epsilon)
    assert samples[("pet_mpc_sessions", ())] == 0


def test_a_client_that_never_speaks_holds_up_nobody(federation: LocalFederation) -> None:
    port = federation.console_ports["site-1"]  # type: ignore[attr-defined]
    with socket.create_connection((HOST, port)), socket.create_connection((HOST, port)):
        assert _get(federation, "site-1", "/metrics")[0] == 200  # no TLS hello came first


def test_a_client_that_drips_its_request_is_cut_off(federation: LocalFederation,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A byte every 0.2 s resets every per-read timeout; the connection's own deadline
    (1 s here, CONNECTION_S) ends it all the same."""
    monkeypatch.setattr(console_module, "CONNECTION_S", 1.0)
    tls = Tls(federation.certs.cert("site-1"), federation.certs.key("site-1"), federation.certs.ca)
    console = Console(f"{HOST}:0", tls, {}, Endpoints(lambda: b"", dict)).start()
    context = ssl.create_default_context(cafile=str(federation.certs.ca))
    cut_after = None
    try:
        with socket.create_connection((HOST, console.port)) as raw, \
                context.wrap_socket(raw, server_hostname=HOST) as drip:
            drip.settimeout(0.2)
            start = time.monotonic()
            while cut_after is None and time.monotonic() - start < 8:
                try:
                    drip.sendall(b"G")
                    if drip.recv(1) == b"":
                        cut_after = time.monotonic() - start
                except TimeoutError:
                    continue
                except OSError:
                    cut_after = time.monotonic() - start
    finally:
        console.close()
    assert cut_after is not None and cut_after < 4


def test_an_overview_the_site_cannot_read_is_a_500_and_the_console_goes_on(
        federation: LocalFederation) -> None:
    def unreadable() -> dict:
        raise sqlite3.DatabaseError("file is not a database")

    tls = Tls(federation.certs.cert("site-1"), federation.certs.key("site-1"), federation.certs.ca)
    digests = {"dpo": hashlib.sha256(OFFICER.encode()).hexdigest()}
    console = Console(f"{HOST}:0", tls, digests, Endpoints(lambda: b"", unreadable)).start()
    context = ssl.create_default_context(cafile=str(federation.certs.ca))
    try:
        for _ in range(2):
            request = urllib.request.Request(f"https://{HOST}:{console.port}/api/overview",
                                             headers={"Authorization": f"Bearer {OFFICER}"})
            with pytest.raises(urllib.error.HTTPError) as failed:
                urllib.request.urlopen(request, context=context, timeout=30)
            assert failed.value.code == 500
    finally:
        console.close()


def test_metrics_need_an_officer_s_token(federation: LocalFederation) -> None:
    assert _get(federation, "site-1", "/metrics", token=None)[0] == 401
    assert _get(federation, "site-1", "/api/overview", token="guess")[0] == 401
    assert _get(federation, "site-1", "/nothing")[0] == 404


def test_the_coordinator_counts_runs_and_unauthenticated_calls(
        federation: LocalFederation) -> None:
    with Client(federation.address, token="wrong", ca=federation.certs.ca) as intruder, \
            pytest.raises(RemoteError):
        intruder.study("plaintext").run(Count())
    samples = _samples(_get(federation, "coordinator", "/metrics")[1])
    assert samples[("pet_refusals_total", (("reason", "unauthenticated"),))] >= 1
    asked = sum(samples.get(("pet_requests_total", (("code", "OK"), ("method", method))), 0)
                for method in ("/pet.v1.Coordinator/Run", "/pet.v1.Coordinator/Ask"))
    assert asked >= 2
    assert _get(federation, "coordinator", "/")[0] == 404  # metrics only: no console page


def test_servers_log_one_json_object_a_line(federation: LocalFederation) -> None:
    lines = (federation.directory / "site-1.log").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(records) == len(lines)  # nothing but JSON
    calls = [r for r in records if r["message"] == "call"]
    assert {r["server"] for r in records} == {"site-1"}
    assert {"time", "level", "method", "code", "seconds"} <= set(calls[0])
    assert any(r["code"] == "FAILED_PRECONDITION" and r["reason"] == "disclosure"
               for r in calls)


def _spki(certificate: Path) -> str:
    """The base64 SHA-256 of a certificate's public key, which Chromium is told to trust
    (it knows no private CA)."""
    key = x509.load_pem_x509_certificate(certificate.read_bytes()).public_key()
    der = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@pytest.fixture
def page(federation: LocalFederation) -> Iterator[Page]:
    flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--ignore-certificate-errors-spki-list={_spki(federation.certs.cert('site-1'))}"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=flags)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 900})
        finally:
            browser.close()


def test_the_officer_reads_budgets_audit_and_refusals_in_a_browser(
        federation: LocalFederation, page: Page) -> None:
    url = f"https://{HOST}:{federation.console_ports['site-1']}/"  # type: ignore[attr-defined]
    page.goto(url)
    page.fill("#token", "not the token")
    page.click("#open")
    page.wait_for_selector("#login-error:not(:empty)")  # no script: the page's CSP forbids eval
    assert page.text_content("#login-error") == "Unknown token."
    page.fill("#token", OFFICER)
    page.click("#open")
    page.wait_for_selector("#console", state="visible")

    audit = AuditLog(federation.directory / "site-1" / "audit.sqlite")
    entries = audit.entries()
    assert page.text_content("#site") == "site site-1"
    assert page.text_content("#chain") == f"Hash chain intact: {audit.verify()} entries verified."
    budget = page.locator("#budgets tbody tr").all_inner_texts()
    ledger = Ledger(federation.directory / "site-1" / "ledger.sqlite").budget("lung")
    assert len(budget) == 1 and budget[0].split("\t")[:3] == [
        "lung", "5", f"{ledger.spent_epsilon:.4g}"]
    assert page.locator("#entries tbody tr").count() == len(entries)
    refusals = page.locator("#refusals tbody tr").all_inner_texts()
    assert len(refusals) == sum(e.outcome != "answered" for e in entries) == 2
    assert any("fewer than 3 rows" in row for row in refusals)
    assert any("cannot pay" in row for row in refusals)
    shown = page.locator("#entries tbody tr").all_inner_texts()
    assert any(HOSTILE in row for row in shown)  # the analyst's text shown as text ...
    assert page.locator("#entries img").count() == 0 and page.title() != "1"  # ... never run
    page.screenshot(path=str(federation.directory / "console.png"), full_page=True)
    if os.environ.get("PET_CONSOLE_SCREENSHOT"):  # how the README's picture is made
        page.screenshot(path=os.environ["PET_CONSOLE_SCREENSHOT"], full_page=True)


def test_the_console_shows_a_broken_chain(federation: LocalFederation, page: Page) -> None:
    path = federation.directory / "site-1" / "audit.sqlite"
    with sqlite3.connect(path) as db:  # an insider edits an entry behind the log's back
        triggers = db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall()
        for (trigger,) in triggers:
            db.execute(f"DROP TRIGGER {trigger}")
        db.execute("UPDATE entries SET analyst = 'nobody' WHERE idx = 1")
    page.goto(f"https://{HOST}:{federation.console_ports['site-1']}/")  # type: ignore[attr-defined]
    page.fill("#token", OFFICER)
    page.click("#open")
    page.wait_for_selector("#console", state="visible")
    assert page.text_content("#chain").startswith("Hash chain BROKEN: ")
