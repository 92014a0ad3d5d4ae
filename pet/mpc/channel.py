"""Mutually authenticated, encrypted connections between the processes of one MPC session.

Every process of a session — the parties (ranks 0 to n-1) and the dealer (rank n) — holds
one TLS 1.3 connection to every other. Both ends present a certificate of the federation
(its CA is the only trust root) and each checks that the other's certificate names the
process expected at that rank, before anything else is sent; a stranger's connection is
closed and the session goes on without it.

Joining: party 0 listens at an address its caller hands to the others. Every other process
connects to it and says its rank and where it listens itself; once all have joined, party
0 sends each the others' addresses, and each process connects to every listening process
of lower rank. The dealer, the highest rank, only connects. Listeners are closed as soon
as the session is complete, so a running session takes no new connections.

On the wire a message is a frame: its length (8 bytes, little-endian), then its bytes,
inside TLS records. One thread drives every connection of a process (non-blocking
sockets and a selector; a TLS connection must not be read and written by two threads at
once): while waiting for one peer it keeps sending and receiving on all, so two processes
that send each other large messages at once never wait on each other.
"""

from __future__ import annotations

import errno
import json
import logging
import queue
import selectors
import socket
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pet.certs import role_of
from pet.errors import PetError

HEADER = struct.Struct("<Q")
"""A frame's length."""
MAX_FRAME = 1 << 32
"""The largest frame a process accepts (4 GiB): far above any share pet exchanges."""
CHUNK = 1 << 18
"""Bytes handed to TLS per write, and read per call."""
MAX_HELLO = 1 << 16
"""The largest message a process accepts while the session forms (a hello, the list of
addresses)."""
HELLO_S = 3.0
"""How long a process that connects may take to finish its TLS handshake and say who it
is, before its connection is closed (a stalled stranger cannot hold up the session)."""
BACKLOG = 64
MAX_GREETING = 128
"""Connections greeted at once while a session forms; more wait in the listener's queue
until a greeting ends."""
ACCEPT_POLL_S = 0.2
"""How often the accepting process looks at the greetings that have finished."""

log = logging.getLogger("pet.mpc.channel")


class ChannelError(PetError):
    """A session's connection could not be made, was refused, or broke."""


@dataclass(frozen=True)
class TlsIdentity:
    """A process's certificate and key and the federation's CA (PEM files): the same files
    a site or the coordinator serves gRPC with."""

    cert: Path
    key: Path
    ca: Path

    def name(self) -> str:
        """The common name of this process's certificate."""
        return role_of(Path(self.cert).read_bytes())

    def context(self, *, server: bool) -> ssl.SSLContext:
        """TLS 1.3 only, the federation's CA as the only trust root, a certificate required
        from the peer on both sides. Host names are not checked: each side checks the
        peer's certificate name against the rank it expects instead."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(self.ca))
        context.load_cert_chain(str(self.cert), str(self.key))
        return context


def listen(host: str, ports: tuple[int, int]) -> socket.socket:
    """A listening socket on `host` at the first free port of the inclusive range `ports`."""
    low, high = ports
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for port in range(low, high + 1):
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((host, port))
            # Another process that bound the port (also with SO_REUSEADDR) but listened
            # first makes listen, not bind, fail: that port is taken too.
            listener.listen(BACKLOG)
        except OSError as error:
            listener.close()
            if error.errno == errno.EADDRINUSE:
                continue
            raise ChannelError(f"cannot listen on {host}:{port}: {error.strerror}; configure "
                               "an address of this host as the MPC host") from None
        return listener
    raise ChannelError(f"no free port in {low}-{high} on {host}; widen the MPC port range "
                       "or free a port in it")


def describe(rank: int, names: Sequence[str]) -> str:
    """How errors name a process: "party 1 ('site-b')" or "the dealer ('coordinator')"."""
    role = "the dealer" if rank == len(names) - 1 else f"party {rank}"
    return f"{role} ({names[rank]!r})"


def open_channel(rank: int, names: Sequence[str], identity: TlsIdentity, *,
                 listener: socket.socket | None, address: tuple[str, int] | None,
                 rendezvous: tuple[str, int] | None, timeout_s: float | None,
                 startup_timeout_s: float) -> Channel:
    """Join a session as `rank` of the processes whose certificate names are `names` (the
    parties by rank, then the dealer): party 0 accepts everyone at its listener; the
    others connect to it at `rendezvous`, then to each other (see the module docstring).
    `address` is where the others are told to reach the listener (its interface and
    port, or a relay's in front of it); `timeout_s` bounds every later wait on a peer
    (None: no bound)."""
    deadline = time.monotonic() + startup_timeout_s
    meeting = _Meeting(rank, tuple(names), identity, address, deadline)
    try:
        links = meeting.join(listener, rendezvous)
    except BaseException:
        meeting.close()
        raise
    finally:
        if listener is not None:
            listener.close()
    return Channel(rank, names, links, timeout_s)


class _Meeting:
    """The connections of one process while its session forms."""

    def __init__(self, rank: int, names: tuple[str, ...], identity: TlsIdentity,
                 address: tuple[str, int] | None, deadline: float) -> None:
        self.rank, self.names, self.address, self.deadline = rank, names, address, deadline
        self.client = identity.context(server=False)
        self.server = identity.context(server=True)
        self.links: dict[int, ssl.SSLSocket] = {}

    @property
    def world(self) -> int:
        return len(self.names)

    def join(self, listener: socket.socket | None,
             rendezvous: tuple[str, int] | None) -> dict[int, ssl.SSLSocket]:
        """Every connection of this process, once the whole session has joined."""
        where = self.address if listener is not None else None
        if self.rank == 0:
            assert listener is not None
            addresses = self.accept(listener, range(1, self.world))
            book = json.dumps({"book": {str(r): a for r, a in addresses.items() if a}})
            for link in self.links.values():
                _write(link, book.encode())
            return self.links
        if rendezvous is None:
            raise ChannelError(f"{self.me} needs the address of party 0 to join")
        self.connect(0, rendezvous, where)
        book = self.book()
        for peer in range(1, self.rank):
            self.connect(peer, book[peer], where)
        if self.rank < self.world - 1:
            assert listener is not None
            self.accept(listener, range(self.rank + 1, self.world))
        return self.links

    @property
    def me(self) -> str:
        return describe(self.rank, self.names)

    def book(self) -> dict[int, tuple[str, int]]:
        """Where each listening process of the session is, as party 0 tells once all
        have joined."""
        try:
            book = json.loads(_read(self.links[0], "party 0's list of addresses"))["book"]
            return {rank: tuple(book[str(rank)]) for rank in range(1, self.world - 1)}
        except TimeoutError:
            raise ChannelError(f"{self.me}: not every process joined {describe(0, self.names)} "
                               "within the start-up deadline") from None
        except (OSError, ChannelError) as error:
            raise ChannelError(f"{self.me}: {describe(0, self.names)} refused this process "
                               f"or closed the connection ({error}); check that both hold "
                               "certificates of the same federation") from None

    def connect(self, peer: int, address: tuple[str, int],
                where: tuple[str, int] | None) -> None:
        """Connect to `peer` at `address`, check that its certificate names it, then say
        who this process is and where it listens."""
        expected = describe(peer, self.names)
        try:
            raw = socket.create_connection(tuple(address), timeout=self._left())
        except OSError as error:
            raise ChannelError(f"{self.me} cannot reach {expected} at {address[0]}:"
                               f"{address[1]}: {error}; check that it runs and that the "
                               "address is reachable from this host") from None
        try:
            link = self.client.wrap_socket(raw)
        except OSError as error:  # ssl.SSLError included
            raw.close()
            raise ChannelError(f"{self.me}: the TLS handshake with {expected} at "
                               f"{address[0]}:{address[1]} failed ({error}); both need "
                               "certificates of the same federation") from None
        name = _peer_name(link)
        if name != self.names[peer]:
            link.close()
            raise ChannelError(f"{self.me}: the process at {address[0]}:{address[1]} "
                               f"presents a certificate for {name!r}, not for {expected}; "
                               "nothing was sent to it. Check the address and the names "
                               "the session was given")
        hello = {"rank": self.rank, "world": self.world, "listen": where}
        _write(link, json.dumps(hello).encode())
        self.links[peer] = link

    def accept(self, listener: socket.socket,
               ranks: range) -> dict[int, tuple[str, int] | None]:
        """Accept the processes of `ranks`, each checked by its certificate; every other
        connection is closed. Where each accepted process listens. Connections are greeted
        side by side (at most MAX_GREETING at once, each for at most HELLO_S), so strangers
        that connect and stall cannot hold up the processes that belong to the session."""
        addresses: dict[int, tuple[str, int] | None] = {}
        refused: list[str] = []
        greeted: queue.Queue = queue.Queue()
        slots = threading.BoundedSemaphore(MAX_GREETING)
        listener.settimeout(ACCEPT_POLL_S)
        while len(addresses) < len(ranks):
            self._left(refused, [r for r in ranks if r not in addresses], listener)
            if slots.acquire(timeout=ACCEPT_POLL_S):
                try:
                    raw, origin = listener.accept()
                except TimeoutError:
                    slots.release()
                else:
                    threading.Thread(target=self._greeting, daemon=True,
                                     args=(raw, origin, ranks, greeted, slots),
                                     name="pet-mpc-greeting").start()
            while not greeted.empty():
                origin, outcome = greeted.get()
                if isinstance(outcome, tuple) and outcome[0] not in addresses:
                    rank, where, link = outcome
                    self.links[rank], addresses[rank] = link, where
                    continue
                if isinstance(outcome, tuple):
                    outcome[2].close()
                    outcome = ChannelError(f"rank {outcome[0]} has already joined")
                refused.append(f"{origin[0]}:{origin[1]} ({outcome})")
                log.warning("%s refused a connection from %s:%s: %s", self.me, origin[0],
                            origin[1], outcome)
        return addresses

    def _greeting(self, raw: socket.socket, origin: tuple[str, int], ranks: range,
                  greeted: queue.Queue, slots: threading.BoundedSemaphore) -> None:
        """Greet one connection in its own thread; its outcome goes to `greeted`."""
        try:
            greeted.put((origin, self._greet(raw, ranks)))
        except Exception as error:  # whatever a stranger sends is refused
            raw.close()
            greeted.put((origin, error))
        finally:
            slots.release()

    def _greet(self, raw: socket.socket,
               ranks: range) -> tuple[int, tuple[str, int] | None, ssl.SSLSocket]:
        """The TLS handshake with a connecting process and its hello: its rank, if its
        certificate names the process expected there. The name is checked before a byte of
        the hello is read, so a stranger's words are never parsed."""
        raw.settimeout(min(HELLO_S, max(self.deadline - time.monotonic(), 0.1)))
        link = self.server.wrap_socket(raw, server_side=True)
        try:
            name = _peer_name(link)
            expected = {self.names[r]: r for r in ranks}
            if name not in expected:
                raise ChannelError(f"its certificate names {name!r}, none of "
                                   f"{sorted(expected)} expected here")
            hello = json.loads(_read(link, "its hello"))
            rank = hello["rank"]
            if rank != expected[name] or hello["world"] != self.world:
                raise ChannelError(f"it claims rank {rank!r} of {hello['world']!r} processes "
                                   f"with a certificate of {describe(expected[name], self.names)}")
            where = hello["listen"]
            address = (str(where[0]), int(where[1])) if where else None
            return rank, address, link
        except BaseException:
            link.close()
            raise

    def _left(self, refused: Sequence[str] = (), missing: Sequence[int] = (),
              listener: socket.socket | None = None) -> float:
        """Seconds left until the session must have formed; past it, an error that names
        who is missing and which connections were refused."""
        left = self.deadline - time.monotonic()
        if left > 0:
            return left
        at = ""
        if listener is not None:
            address = listener.getsockname()
            at = f" at {address[0]}:{address[1]}"
        waiting = ", ".join(describe(r, self.names) for r in missing) or "the session"
        refusals = f"; refused: {'; '.join(refused)}" if refused else ""
        raise ChannelError(f"{self.me} waited in vain for {waiting} to join{at}; check that "
                           f"they run with certificates of this federation and can reach this "
                           f"address{refusals}")

    def close(self) -> None:
        for link in self.links.values():
            link.close()


class Channel:
    """A process's connections to every other process of its session, each carrying
    frames in order; `send` and `recv` wait at most `timeout_s` (None: as long as every
    connection stays open)."""

    def __init__(self, rank: int, names: Sequence[str], links: dict[int, ssl.SSLSocket],
                 timeout_s: float | None) -> None:
        self.rank, self.names, self.timeout_s = rank, tuple(names), timeout_s
        self._links = links
        self._selector = selectors.DefaultSelector()
        self._inbox = {peer: bytearray() for peer in links}
        self._frames: dict[int, deque[bytes]] = {peer: deque() for peer in links}
        self._outbox: dict[int, deque[memoryview]] = {peer: deque() for peer in links}
        self._closed: dict[int, str] = {}
        for peer, link in links.items():
            link.setblocking(False)
            # Rounds are small messages that wait on each other: no coalescing delay.
            link.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._selector.register(link, selectors.EVENT_READ, peer)

    @property
    def world(self) -> int:
        """Processes in the session, the dealer included."""
        return len(self.names)

    def who(self, rank: int) -> str:
        """How errors name a process of this session."""
        return describe(rank, self.names)

    def send(self, peer: int, payload: bytes | memoryview) -> None:
        """Send one frame to `peer`; returns once TLS has taken all of it."""
        self._link(peer)
        box, view = self._outbox[peer], memoryview(payload).cast("B")
        header = HEADER.pack(len(view))
        if len(view) <= CHUNK:  # one TLS record for a round's small message
            box.append(memoryview(header + view))
        else:
            box.extend((memoryview(header), view))
        self._flush(peer)
        self._wait(lambda: not box, peer, "take")

    def recv(self, peer: int) -> bytes:
        """The next frame from `peer`."""
        self._link(peer)
        frames = self._frames[peer]
        if not frames:
            self._read(peer)
        self._wait(lambda: bool(frames), peer, "send")
        return frames.popleft()

    def broken(self) -> bool:
        """Whether a connection has closed, once what has arrived is read (without
        waiting): a process whose session lost a member has nothing left to serve."""
        for key, events in self._selector.select(0):
            if events & selectors.EVENT_READ:
                self._read(key.data)
        return bool(self._closed)

    def close(self) -> None:
        """Close every connection."""
        for link in self._links.values():
            link.close()
        self._selector.close()

    def _link(self, peer: int) -> ssl.SSLSocket:
        if peer not in self._links:
            raise ChannelError(f"{self.who(self.rank)} has no connection to rank {peer}")
        return self._links[peer]

    def _wait(self, done: Callable[[], bool], peer: int, what: str) -> None:
        """Drive every connection until `done()`; an error if any connection closes first
        (a session cannot go on without one of its processes), or the channel's timeout
        passes."""
        timeout_s = self.timeout_s
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not done():
            lost = peer if peer in self._closed else next(iter(self._closed), None)
            if lost is not None:
                raise ChannelError(f"{self.who(self.rank)}: the connection to "
                                   f"{self.who(lost)} closed ({self._closed[lost]}); the "
                                   "session cannot go on")
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise ChannelError(f"{self.who(self.rank)}: {self.who(peer)} did not {what} "
                                   f"a message within {timeout_s:g} s")
            for key, events in self._selector.select(left):
                if events & selectors.EVENT_READ:
                    self._read(key.data)
                if events & selectors.EVENT_WRITE:
                    self._flush(key.data)

    def _flush(self, peer: int) -> None:
        """Hand TLS as much of `peer`'s pending frames as it takes now; watch for the
        socket to become writable while some are left."""
        box, link = self._outbox[peer], self._links[peer]
        if peer in self._closed:
            return
        try:
            while box:
                written = link.send(box[0][:CHUNK])
                box[0] = box[0][written:]
                if not len(box[0]):
                    box.popleft()
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            pass
        except OSError as error:
            self._lose(peer, str(error))
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if box else 0)
        if self._selector.get_key(link).events != events:
            self._selector.modify(link, events, peer)

    def _read(self, peer: int) -> None:
        """Read whatever `peer` has sent and split it into frames."""
        inbox, link = self._inbox[peer], self._links[peer]
        while peer not in self._closed:
            try:
                data = link.recv(CHUNK)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                break
            except OSError as error:
                data, reason = b"", str(error) or type(error).__name__
            else:
                reason = "the peer closed it"
            if not data:
                self._lose(peer, reason)
                break
            inbox.extend(data)
        self._split(peer)

    def _split(self, peer: int) -> None:
        inbox, frames = self._inbox[peer], self._frames[peer]
        while len(inbox) >= HEADER.size:
            (size,) = HEADER.unpack_from(inbox)
            if size > MAX_FRAME:
                self._lose(peer, f"it sent a frame of {size} bytes, above {MAX_FRAME}")
                inbox.clear()
                return
            end = HEADER.size + size
            if len(inbox) < end:
                return
            frames.append(bytes(inbox[HEADER.size:end]))
            del inbox[:end]

    def _lose(self, peer: int, reason: str) -> None:
        """Mark `peer`'s connection closed; frames already received can still be read."""
        if peer not in self._closed:
            self._closed[peer] = reason
            self._selector.unregister(self._links[peer])


def _peer_name(link: ssl.SSLSocket) -> str | None:
    """The common name of the peer's (verified) certificate."""
    certificate = link.getpeercert() or {}
    for entry in certificate.get("subject", ()):
        for key, value in entry:
            if key == "commonName":
                return str(value)
    return None


def _write(link: ssl.SSLSocket, payload: bytes) -> None:
    """Send one frame on a blocking connection (while the session forms)."""
    link.sendall(HEADER.pack(len(payload)) + payload)


def _read(link: ssl.SSLSocket, what: str) -> bytes:
    """One frame from a blocking connection (while the session forms)."""
    header = _exactly(link, HEADER.size, what)
    (size,) = HEADER.unpack(header)
    if size > MAX_HELLO:
        raise ChannelError(f"{what} is {size} bytes long, above {MAX_HELLO}")
    return _exactly(link, size, what)


def _exactly(link: ssl.SSLSocket, size: int, what: str) -> bytes:
    data = bytearray()
    while len(data) < size:
        piece = link.recv(size - len(data))
        if not piece:
            raise ChannelError(f"the connection closed before {what} arrived")
        data.extend(piece)
    return bytes(data)
