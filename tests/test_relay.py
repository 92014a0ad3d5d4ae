"""The emulated link: what a relay carries arrives whole and in order, when the link's
round trip and bandwidth say, and a relay never outlives either end of a connection."""

from __future__ import annotations

import os
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pet.backends.mpc import MPC
from pet.errors import PetError
from pet.mpc.parties import PartyConfig
from pet.queries import Count, Mean
from pet.relay import Link, Relay
from pet.study import Study
from pet.workloads import Workload
from services.config import ConfigError, read_site
from services.local import LocalFederation
from tests.conftest import NO_CELL_LIMIT


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(1 << 16):
            self.request.sendall(data)


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address
    server.shutdown()
    server.server_close()


def _exchange(address: tuple[str, int], payload: bytes) -> bytes:
    """Send the payload and read back as many bytes, from a second thread so that neither
    side's buffers fill."""
    with socket.create_connection(address, timeout=30) as client:
        sender = threading.Thread(target=client.sendall, args=(payload,))
        sender.start()
        received = bytearray()
        while len(received) < len(payload):
            received += client.recv(1 << 16)
        sender.join()
        return bytes(received)


def test_what_goes_through_arrives_whole_and_in_order(echo: tuple[str, int]) -> None:
    payload = os.urandom(5 << 20)
    with Relay(echo, Link(0.002, 800)) as relay:
        assert _exchange(relay.address, payload) == payload
        assert _exchange(relay.address, b"again") == b"again"
    assert relay.carried == 2 * (len(payload) + 5)


def test_the_link_serialises_at_its_bandwidth_then_adds_half_the_round_trip() -> None:
    link = Link(0.02, 8)  # 8 Mbit/s: a byte takes a microsecond
    due, free = link.carried(1.0, 1000, 0.0)
    assert (due, free) == (pytest.approx(1.011), pytest.approx(1.001))
    due, free = link.carried(1.0, 1000, free)  # queued behind the first
    assert (due, free) == (pytest.approx(1.012), pytest.approx(1.002))
    assert Link(0.08).carried(2.0, 10**9, 0.0) == (pytest.approx(2.04), 2.0)


def test_a_request_and_its_answer_take_at_least_the_round_trip(echo: tuple[str, int]) -> None:
    """A lower bound only: the relay must never deliver early (how much later it delivers
    on a loaded machine is the benchmarks' business, not a test's)."""
    with Relay(echo, Link(0.2)) as relay, socket.create_connection(relay.address) as client:
        for _ in range(3):
            start = time.perf_counter()
            client.sendall(b"ping")
            assert client.recv(16) == b"ping"
            assert time.perf_counter() - start >= 0.2


def test_an_end_that_goes_away_ends_the_connection(echo: tuple[str, int]) -> None:
    with Relay(echo, Link(0.0)) as relay, \
            socket.create_connection(relay.address, timeout=10) as client:
        client.sendall(b"x")
        assert client.recv(1) == b"x"
        client.shutdown(socket.SHUT_WR)  # the echo ends its side in turn
        assert client.recv(1) == b""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nowhere = closed.getsockname()
    with Relay(nowhere, Link(0.0)) as relay, \
            socket.create_connection(relay.address, timeout=10) as client:
        assert client.recv(1) == b""  # nothing listens behind the relay


@pytest.mark.parametrize(("rtt", "mbit", "words"), [
    (-1, None, "rtt_s must be between 0 and 10"), (11, None, "rtt_s"),
    (0.02, 0, "mbit_s must be a positive number"), (0.02, float("inf"), "mbit_s"),
])
def test_a_bad_link_is_refused(rtt: float, mbit: float | None, words: str) -> None:
    with pytest.raises(PetError, match=words):
        Link(rtt, mbit)


def test_an_mpc_session_over_links_meets_through_relays_and_answers_as_on_loopback(
        lung3: Workload) -> None:
    backend = MPC(max_rows_per_site=10**6, max_sites=4,
                  parties=PartyConfig(timeout_s=60, link=Link(0.01, 100)))
    with Study(lung3.sites(NO_CELL_LIMIT), backend=backend) as study:
        assert study.run(Mean("age")).value == pytest.approx(lung3.pooled().age.mean())
        parties = backend._parties._parties
        relays = [p._relay for p in parties[:-1]]
        assert all(p.address == r.address for p, r in zip(parties, relays, strict=False))
        assert parties[-1]._relay is None  # the dealer listens nowhere
        assert all(r.carried > 0 for r in relays)
    assert not any(r._thread.is_alive() for r in relays)


@pytest.mark.parametrize(("link", "expected"), [
    (None, None), ({"rtt_ms": 20, "mbit_s": 100}, Link(0.02, 100)), ({"rtt_ms": 1}, Link(0.001)),
    ({"mbit_s": 100}, "mpc.link must be"), ({"rtt_ms": 20, "loss": 0.1}, "mpc.link must be"),
    ({"rtt_ms": "20"}, "must be numbers"), ({"rtt_ms": 20, "mbit_s": True}, "must be numbers"),
    ({"rtt_ms": 20_000}, "rtt_s must be between 0 and 10"),
])
def test_a_site_reads_its_link_from_its_own_configuration(
        tmp_path: Path, link: dict | None, expected: Link | str | None) -> None:
    spec = {"name": "s", "listen": "127.0.0.1:1", "coordinator": "c", "data": {},
            "tls": {"cert": "c", "key": "k", "ca": "a"}, "ledger": "l", "audit": "a",
            "mpc": {} if link is None else {"link": link}}
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(spec))
    if isinstance(expected, str):
        with pytest.raises(ConfigError, match=expected):
            read_site(tmp_path / "site.yaml")
    else:
        assert read_site(tmp_path / "site.yaml").mpc_link == expected


def test_a_federation_over_links_answers_as_on_loopback(tmp_path: Path, lung3: Workload) -> None:
    """The coordinator reaches each site through a relay, and the sites' MPC parties
    reach each other through theirs: a plaintext count and an MPC mean come back as
    in-process, and every relay carried the traffic."""
    with LocalFederation(tmp_path, link=Link(0.005, 100)) as federation, \
            federation.client() as client:
        assert client.study("plaintext").run(Count()).value == len(lung3.pooled())
        mean = client.study("mpc").run(Mean("age")).value
        assert mean == pytest.approx(lung3.pooled().age.mean())
        relays = list(federation.relays.values())
        assert len(relays) == 3 and all(r.carried > 0 for r in relays)
        sites = {name: read_site(path) for name, path in federation.configs.items()
                 if name != "coordinator"}
        assert all(config.mpc_link == Link(0.005, 100) for config in sites.values())
    assert not any(r._thread.is_alive() for r in relays)
    with pytest.raises(PetError, match="make a new LocalFederation"):
        federation.start()


def test_a_reset_on_one_side_resets_the_other(echo: tuple[str, int]) -> None:
    """A process killed with unread data resets its connections: the peer behind the
    relay must learn of it at once, not wait for the relay to close."""
    accepted: list[socket.socket] = []
    with socket.create_server(("127.0.0.1", 0)) as server, \
            Relay(server.getsockname()[:2], Link(0.0)) as relay:
        client = socket.create_connection(relay.address, timeout=10)
        peer, _ = server.accept()
        accepted.append(peer)
        peer.settimeout(10)
        client.sendall(b"x")
        assert peer.recv(1) == b"x"
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # a reset
        # The peer sees its connection end (closed or reset) within recv's timeout; what
        # must not happen is a connection left open, which the timeout would report.
        try:
            ended = peer.recv(1 << 16)
        except ConnectionResetError:
            ended = b""
        assert ended == b""
        peer.close()
