"""MPC parties meet over mutually authenticated TLS: a session of real processes computes
correctly, strangers cannot join it, the bytes on its connections are not the shares, and a
party listens only on its configured host and port range."""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import re
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from torch.distributed import ReduceOp

from pet.backends.mpc import MPC
from pet.certs import Certificates, make_certificates
from pet.errors import PetError
from pet.layout import Block, Layout
from pet.mpc.channel import ChannelError, TlsIdentity, listen, open_channel
from pet.mpc.collectives import Collectives, decode, encode
from pet.mpc.fixed_point import scale_bits
from pet.mpc.parties import Party, PartyConfig, PartyError, free_port
from pet.queries import Mean, Variance
from pet.study import Study
from pet.workloads import Workload
from tests.conftest import NO_CELL_LIMIT

SITES = ("site-a", "site-b", "site-c")
HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """The federation's certificates; site-d is a member that is not in the session."""
    return make_certificates(tmp_path_factory.mktemp("federation"), sites=[*SITES, "site-d"])


def identity(certificates: Certificates, role: str) -> TlsIdentity:
    return TlsIdentity(certificates.cert(role), certificates.key(role), certificates.ca)


def config(certificates: Certificates, role: str, **options: Any) -> PartyConfig:
    return PartyConfig(tls=identity(certificates, role), names=SITES, timeout_s=60,
                       startup_timeout_s=120, **options)


class Relay:
    """A TCP relay on 127.0.0.1 to `target` that records every byte of the one connection
    it carries, each way."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._listener = socket.create_server((HOST, 0))
        self.address = self._listener.getsockname()[:2]
        self.up, self.down = bytearray(), bytearray()
        threading.Thread(target=self._serve, args=(target,), daemon=True).start()

    def captured(self) -> bytes:
        return bytes(self.up + self.down)

    def _serve(self, target: tuple[str, int]) -> None:
        client, _ = self._listener.accept()
        server = socket.create_connection(target)
        threading.Thread(target=_pump, args=(client, server, self.up), daemon=True).start()
        _pump(server, client, self.down)


def _pump(source: socket.socket, sink: socket.socket, record: bytearray) -> None:
    try:
        while data := source.recv(1 << 16):
            record.extend(data)
            sink.sendall(data)
    except OSError:
        pass
    sink.close()


class Session:
    """Parties and a dealer started one by one, driven as a `PartySession` (as the
    coordinator drives parties at the sites)."""

    def __init__(self, parties: Sequence[Party]) -> None:
        self.parties = list(parties)
        self.n = len(parties) - 1

    @property
    def alive(self) -> bool:
        return all(p.alive for p in self.parties)

    def run(self, program: str, inputs: Sequence[Any], public: Any = None) -> list[Any]:
        for party, value in zip(self.parties, inputs, strict=False):
            party.send(("run", program, value, public))
        return [p.receive(program, 60) for p in self.parties[:self.n]]

    def close(self) -> None:
        for party in self.parties:
            party.stop()


@dataclass
class Knock:
    """How one stranger fared at party 0: what it read back after saying hello."""

    stranger: str
    answer: bytes | None
    error: str | None


@dataclass
class Joined:
    """A formed session, the relay on one of its connections, and the strangers' tries."""

    session: Session
    relay: Relay
    knocks: list[Knock]


@pytest.fixture(scope="module")
def joined(federation: Certificates, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Joined]:
    """A session of three parties and the dealer, each with its own federation
    certificate, that strangers tried to join first; party 1 reaches party 0 through a
    recording relay."""
    first = Party(0, 3, config(federation, "site-a"))
    assert first.address is not None
    knocks = [knock(first.address, *stranger)
              for stranger in strangers(federation, tmp_path_factory.mktemp("strangers"))]
    relay = Relay(first.address)
    others = [Party(1, 3, config(federation, "site-b"), relay.address),
              Party(2, 3, config(federation, "site-c"), first.address),
              Party(3, 3, config(federation, "coordinator"), first.address)]
    session = Session([first, *others])
    for party in session.parties:
        party.wait_started(120)
    yield Joined(session, relay, knocks)
    session.close()


def strangers(federation: Certificates,
              folder: Path) -> list[tuple[str, ssl.SSLContext | None, int]]:
    """Who knocks at party 0, each with the TLS it speaks and the rank it claims."""
    other = make_certificates(folder / "other", sites=["site-b"])
    alone = self_signed(folder, "site-b")
    return [("no TLS at all", None, 1),
            ("no certificate", client_context(None), 1),
            ("site-b's name from another CA", client_context(identity(other, "site-b")), 1),
            ("a self-signed site-b", client_context(alone), 1),
            ("a federation member not in the session",
             client_context(identity(federation, "site-d")), 1),
            ("the dealer's certificate claiming party 1",
             client_context(identity(federation, "coordinator")), 1),
            ("party 2's certificate claiming party 1",
             client_context(identity(federation, "site-c")), 1)]


def client_context(who: TlsIdentity | None) -> ssl.SSLContext:
    """A client that trusts anything and presents `who`'s certificate, if any."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if who is not None:
        context.load_cert_chain(who.cert, who.key)
    return context


def self_signed(folder: Path, name: str) -> TlsIdentity:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .sign(key, hashes.SHA256()))
    cert, private = folder / f"{name}-self.pem", folder / f"{name}-self.key"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return TlsIdentity(cert, private, cert)


def knock(address: tuple[str, int], stranger: str, context: ssl.SSLContext | None,
          rank: int) -> Knock:
    """Connect, claim `rank` with the session's hello frame, and read what comes back."""
    hello = json.dumps({"rank": rank, "world": 4, "listen": [HOST, 1]}).encode()
    raw = socket.create_connection(address, timeout=60)
    try:
        link = raw if context is None else context.wrap_socket(raw)
        link.sendall(struct.pack("<Q", len(hello)) + hello)
        return Knock(stranger, link.recv(1 << 16), None)
    except OSError as error:
        return Knock(stranger, None, f"{type(error).__name__}: {error}")
    finally:
        raw.close()


def test_a_session_over_tls_computes_what_numpy_does(joined: Joined, lung3: Workload) -> None:
    mpc = MPC(max_rows_per_site=10**6, max_sites=4, parties=joined.session)
    layout = Layout((Block.counts("n", 1), Block.sums("s", 3, bound=50.0)))
    partials = [np.array([10.0, 1.5, -20.25, 49.0]), np.array([3.0, -7.0, 0.125, 12.5]),
                np.array([25.0, 33.0, 4.0, -49.5])]
    total = mpc.reveal(mpc.combine([mpc.protect(p, layout) for p in partials], layout), layout)
    assert np.all(np.abs(total.total - np.sum(partials, axis=0)) <= total.error_bounds)
    assert total.total[0] == 38.0
    study = Study(lung3.sites(NO_CELL_LIMIT), backend=mpc)
    age = lung3.pooled().age.to_numpy(dtype=float)
    for query, expected in ((Mean("age"), np.mean(age)), (Variance("age"), np.var(age, ddof=1))):
        result = study.run(query)
        assert "computed inside MPC" in result.privacy.confidentiality
        assert abs(result.value - expected) <= result.error_bound, query.describe()


def test_strangers_cannot_join_and_the_session_goes_on_without_them(
        joined: Joined, federation: Certificates) -> None:
    assert len(joined.knocks) == 7
    for attempt in joined.knocks:  # refused: the connection closed, no list of addresses
        assert attempt.answer in (None, b""), attempt
    refused_at_handshake = {k.stranger for k in joined.knocks if k.error is not None}
    assert {"no certificate", "site-b's name from another CA",
            "a self-signed site-b"} <= refused_at_handshake
    assert joined.session.alive
    outputs = joined.session.run("provider", [b""] * 3)
    assert outputs == ["TrustedThirdParty"] * 3
    # a formed session listens no more: no party process holds a listening socket (asked
    # of the processes, not of their old ports, which other processes may take since)
    assert joined.session.parties[0].address is not None
    for party in joined.session.parties:
        assert listening(party.process.pid) == []


def test_a_party_refuses_a_peer_whose_certificate_names_someone_else(
        federation: Certificates) -> None:
    impostor = socket.create_server((HOST, 0))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(federation.cert("site-d"), federation.key("site-d"))
    received: list[bytes] = []

    def serve() -> None:
        raw, _ = impostor.accept()
        with server.wrap_socket(raw, server_side=True) as link:
            try:
                received.append(link.recv(1 << 16))
            except OSError:
                received.append(b"")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    party = Party(1, 3, config(federation, "site-b"), impostor.getsockname()[:2])
    try:
        with pytest.raises(PartyError, match=r"presents a certificate for 'site-d', not for "
                                             r"party 0 \('site-a'\); nothing was sent"):
            party.wait_started(60)
    finally:
        party.kill()
        impostor.close()
    thread.join(10)
    assert received == [b""]


def test_the_bytes_on_a_party_connection_are_not_the_shares(joined: Joined) -> None:
    mpc = MPC(max_rows_per_site=10**6, max_sites=4, parties=joined.session)
    layout = Layout((Block.counts("n", 1), Block.sums("s", 5, bound=1000.0)))
    rng = np.random.default_rng(7)
    partials = [np.concatenate([[float(n)], rng.uniform(-900, 900, 5).round(3)])
                for n in (11, 23, 37)]
    before = len(joined.relay.captured())
    total = mpc.reveal(mpc.combine([mpc.protect(p, layout) for p in partials], layout), layout)
    captured = joined.relay.captured()
    assert len(captured) > before  # the programs' traffic went through the relay
    assert joined.relay.up[:2] == b"\x16\x03" and joined.relay.down[:2] == b"\x16\x03"
    scale = 2.0 ** scale_bits(layout, mpc.limits)
    secrets = [*partials, total.total]
    encodings = {np.rint(v * scale).astype("<i8").tobytes() for v in secrets}
    encodings |= {np.asarray(v, dtype="<f8").tobytes() for v in secrets}
    words = {chunk[i:i + 8] for chunk in encodings for i in range(0, len(chunk), 8)}
    assert len(words) == 2 * 4 * 6
    assert not [w.hex() for w in words if w in captured]
    for plain in (b'"rank"', b'"book"', b"site-a", b"site-b"):  # nor who is talking
        assert plain not in captured, plain


def listening(pid: int) -> list[tuple[str, int]]:
    """The TCP addresses a process listens on, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed while it was read
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                address, port = fields[1].split(":")
                found.append((_ip(address), int(port, 16)))
    return found


def _ip(hexadecimal: str) -> str:
    if len(hexadecimal) == 8:
        return socket.inet_ntop(socket.AF_INET, bytes.fromhex(hexadecimal)[::-1])
    words = [bytes.fromhex(hexadecimal[i:i + 8])[::-1] for i in range(0, 32, 8)]
    return socket.inet_ntop(socket.AF_INET6, b"".join(words))


def test_a_party_listens_only_on_its_host_at_the_first_free_port_of_its_range(
        federation: Certificates, joined: Joined) -> None:
    low = free_port(HOST)
    with socket.create_server((HOST, low)):  # the range's first port is in use
        party = Party(0, 3, config(federation, "site-a", ports=(low, low + 9)))
        try:
            assert party.address is not None
            host, port = party.address
            assert host == HOST and low < port <= low + 9
            assert listening(party.process.pid) == [(HOST, port)]
            assert (HOST, port) not in listening(os.getpid())  # handed over, not kept
        finally:
            party.kill()
        with pytest.raises(PartyError, match=rf"party 0 \('site-a'\) cannot listen: no free "
                                             rf"port in {low}-{low} on 127.0.0.1"):
            Party(0, 3, config(federation, "site-a", ports=(low, low)))
    with pytest.raises(PetError, match="would listen on every interface"):
        PartyConfig(host="0.0.0.0")
    for party in joined.session.parties:  # a formed session listens nowhere
        assert party.alive and listening(party.process.pid) == []


def test_a_port_taken_between_bind_and_listen_is_skipped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes may both bind a port with SO_REUSEADDR; the one that listens first
    takes it and the other's listen, not bind, fails with EADDRINUSE: that port is
    skipped like a bound one (a site's party once died of it, racing another)."""
    low = free_port(HOST)

    class Raced(socket.socket):
        def listen(self, *args: int) -> None:
            if self.getsockname()[1] == low:
                raise OSError(errno.EADDRINUSE, "Address already in use")
            super().listen(*args)

    monkeypatch.setattr(socket, "socket", Raced)
    with listen(HOST, (low, low + 9)) as listener:
        assert low < listener.getsockname()[1] <= low + 9


def test_a_process_with_someone_elses_certificate_is_refused_before_it_starts(
        federation: Certificates) -> None:
    with pytest.raises(PartyError, match=r"names 'site-c'; the session expects 'site-b'"):
        Party(1, 3, PartyConfig(tls=identity(federation, "site-c"), names=SITES), (HOST, 1))


def in_threads(federation: Certificates,
               work: Callable[[Collectives], dict[str, Any]]) -> dict[int, Any]:
    """Run `work` at every rank of a session of three parties and the dealer, each a
    thread of this process with its own TLS connections; what each returned, or raised.
    Connections close once every rank is done (a session treats a closed connection as a
    lost process)."""
    roster = (*SITES, "coordinator")
    listeners = [listen(HOST, (1024, 65535)) for _ in SITES]
    rendezvous = listeners[0].getsockname()[:2]
    results: dict[int, Any] = {}
    done = threading.Barrier(4, timeout=60)

    def member(rank: int) -> None:
        listener = listeners[rank] if rank < 3 else None
        channel = open_channel(rank, roster, identity(federation, roster[rank]),
                               listener=listener,
                               address=listener.getsockname()[:2] if listener else None,
                               rendezvous=rendezvous if rank else None, timeout_s=30,
                               startup_timeout_s=30)
        try:
            results[rank] = work(Collectives(channel))
        except ChannelError as error:
            results[rank] = error
        done.wait()
        channel.close()

    threads = [threading.Thread(target=member, args=(rank,), daemon=True) for rank in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_collectives_give_every_party_torchs_answer(federation: Certificates) -> None:
    """Every collective CrypTen calls, over a real TLS mesh."""
    results = in_threads(federation, exchange)
    values = [torch.tensor([rank + 1, 10 * rank, -rank]) for rank in range(3)]
    total, xor = sum(values), values[0] ^ values[1] ^ values[2]
    for rank in range(3):
        got = results[rank]
        assert torch.equal(got["all_reduce"], total) and torch.equal(got["xor"], xor)
        assert all(torch.equal(a, b) for a, b in zip(got["batched"], [total, 2 * total],
                                                     strict=True))
        assert all(torch.equal(a, b) for a, b in zip(got["all_gather"], values, strict=True))
        assert torch.equal(got["scatter"], torch.tensor([rank, rank]))
        assert torch.equal(got["broadcast"], values[2])
        assert got["objects"] == ({"function": "additive", "args": (torch.Size([2, 3]), "mul")},
                                  torch.Size([4]))
    assert torch.equal(results[0]["reduce"], total) and results[1]["reduce"] is None
    assert all(torch.equal(a, b) for a, b in zip(results[0]["gather"], values, strict=True))
    assert torch.equal(results[0]["from_dealer"], torch.tensor([7, 8]))


def test_a_lost_process_ends_every_wait_of_the_session(federation: Certificates) -> None:
    """Party 2 leaves while the others wait on each other (the dealer without a deadline):
    every wait ends at once, on party 2's closed connection or on one closed after it."""

    def work(collectives: Collectives) -> dict[str, Any]:
        if collectives.rank == 2:
            collectives.close()
            return {}
        if collectives.rank == 0:  # answers nobody: only a lost connection ends the waits
            collectives.recv(torch.empty(1), 1)
        if collectives.rank == 3:
            collectives.channel.timeout_s = None
        collectives.recv(torch.empty(1), 0)
        return {}

    results = in_threads(federation, work)
    for rank in (0, 1, 3):
        assert isinstance(results[rank], ChannelError)
        assert re.search(r"the connection to .* closed .*; the session cannot go on",
                         str(results[rank]))


def exchange(collectives: Collectives) -> dict[str, Any]:
    """One of each collective, as CrypTen's parties and dealer call them."""
    rank, dealer = collectives.rank, collectives.parties
    if rank == dealer:
        collectives.barrier(collectives.ttp_group)
        assert collectives.recv_obj(0) == {"function": "additive",
                                           "args": (torch.Size([2, 3]), "mul")}
        collectives.send_obj(torch.Size([4]), 0)
        collectives.broadcast(torch.tensor([7, 8]), dealer, collectives.ttp_comm_group)
        return {}
    mine = torch.tensor([rank + 1, 10 * rank, -rank])
    got = {"all_reduce": collectives.all_reduce(mine),
           "xor": collectives.all_reduce(mine, ReduceOp.BXOR),
           "batched": collectives.all_reduce([mine, 2 * mine], batched=True),
           "reduce": collectives.reduce(mine, 0),
           "gather": collectives.gather(mine, 0),
           "all_gather": collectives.all_gather(mine),
           "scatter": collectives.scatter([torch.tensor([r, r]) for r in range(3)], 1,
                                          size=(2,)),
           "broadcast": collectives.broadcast(mine.clone(), 2)}
    collectives.barrier()
    collectives.barrier(collectives.ttp_group)
    message = collectives.broadcast_obj({"function": "additive",
                                         "args": (torch.Size([2, 3]), "mul")}, 0)
    if rank == 0:
        collectives.send_obj(message, dealer)
        size = collectives.recv_obj(dealer)
        got["from_dealer"] = collectives.broadcast(torch.empty(size[0] // 2, dtype=torch.long),
                                                   dealer, collectives.ttp_comm_group)
        message = (message, size)
    else:
        message = (message, torch.Size([4]))
    got["objects"] = message
    return got


def test_objects_travel_in_pets_own_encoding_and_nothing_else_is_read() -> None:
    request = {"function": "wraps", "device": None, "args": (torch.Size([3, 2]),),
               "kwargs": {"stride": [1, 2], "bias": False, "scale": 0.5}}
    assert decode(encode(request), "party 0") == request
    assert decode(encode("terminate"), "party 0") == "terminate"
    with pytest.raises(ChannelError, match="not a ndarray"):
        encode(np.zeros(2))
    for foreign in (b"\x80\x04\x95...", b'{"object": "os.system"}', b"[1, 2]",
                    b'{"size": ["x"]}', b'{"tuple": [1], "list": [2]}'):
        with pytest.raises(ChannelError, match="party 0 sent an object pet does not accept"):
            decode(foreign, "party 0")


def test_stalled_strangers_and_a_malformed_hello_do_not_stop_a_session(
        federation: Certificates) -> None:
    """Forty connections that never speak TLS, and party 2's own certificate sending a
    hello nested 60 000 deep: party 0 greets connections side by side, refuses both kinds,
    and the session forms with the real parties."""
    first = Party(0, 3, config(federation, "site-a"))
    assert first.address is not None
    idle = [socket.create_connection(first.address, timeout=30) for _ in range(40)]
    deep = b"[" * 60_000
    raw = socket.create_connection(first.address, timeout=30)
    link = client_context(identity(federation, "site-c")).wrap_socket(raw)
    link.sendall(struct.pack("<Q", len(deep)) + deep)
    session = Session([first, Party(1, 3, config(federation, "site-b"), first.address),
                       Party(2, 3, config(federation, "site-c"), first.address),
                       Party(3, 3, config(federation, "coordinator"), first.address)])
    try:
        for party in session.parties:
            party.wait_started(120)
        assert session.run("provider", [b""] * 3) == ["TrustedThirdParty"] * 3
        assert link.recv(1 << 16) == b""  # the malformed hello was refused, unread
    finally:
        session.close()
        link.close()
        for connection in idle:
            connection.close()
