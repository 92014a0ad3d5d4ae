"""A session's MPC parties: one process per site plus the dealer, kept alive across queries.

Each party is a CrypTen process. Beaver triples come from CrypTen's trusted-third-party
provider, run in a separate dealer process that holds no data (CrypTen's default
trusted-first-party provider would let party 0 know every triple).

The processes talk over mutually authenticated TLS 1.3 connections (`pet.mpc.channel`):
each presents a certificate of the federation, and each checks that its peer's
certificate names the process expected at that rank. torch.distributed's gloo transport,
which CrypTen uses by default, has no TLS in the installed torch, so `pet.crypten_shim`
runs CrypTen over pet's own communicator instead. Every session takes this one path, on
one host too (`Parties` makes a throwaway federation for it). It is faster than gloo was
on loopback: three parties running share_sum and secure programs (mean, variance,
correlations) on 2 cores (interleaved runs, other work sharing the cores) made 330-510
rounds of communication a second over gloo and 1,650-1,750 over TLS, as one thread
drives all of a process's connections and a collective is one exchange of messages; and
one path is one path to test and to audit.

Where a party listens (an interface and a port range) and as whom (certificates and the
names expected at every rank) come from `PartyConfig`, so the same code runs across hosts.

Each party process is driven over a pipe by the process that started it (its site's server,
or the session process when all parties run on one host): it is handed its site's private
input and a program name, and party 0 hands back what the program reveals. Every wait has a
deadline; a party that dies, stalls or fails ends the whole session (every process is
terminated, nothing partial is returned) and the next query starts a fresh one.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import multiprocessing
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NoReturn, Protocol

from pet.certs import COORDINATOR, make_certificates
from pet.errors import PartyError, PetError
from pet.mpc.channel import ChannelError, TlsIdentity, describe, listen, open_channel
from pet.relay import Link, Relay

DEFAULT_PORTS = (47000, 47999)
WILDCARDS = frozenset({"", "*", "0.0.0.0", "::"})


IDLE_CHECK_S = 1.0
"""How often an idle party checks that its session still has every member."""
ASKED_BYTES = 32
"""A party's input to `share_sum` starts with this many bytes: the digest of the query
round it answers, which the parties compare before sharing anything."""

@dataclass(frozen=True)
class PartyConfig:
    """Where and as whom a session's processes meet.

    `host` is the one interface a party listens on (an address or a name of this host,
    which the others are told to reach it at), `ports` the inclusive range its listener
    takes the first free port of; the dealer only connects out and ignores both. `tls` is
    this process's certificate and key and the federation's CA (None only for `Parties`,
    which makes its own); `names` are the certificate names of the parties by rank and
    `dealer` the dealer's: a connection whose certificate names anyone else is refused.
    The deadlines are those of every wait on a party during a query, and of the start-up
    (processes import torch and join, which takes seconds). `link` emulates a network
    that is not loopback (`pet.relay`): each party's listener is then reached through a
    relay that adds the link's round trip and bandwidth, so every connection of the
    session crosses one link, as between hospitals; for benchmarks, never needed."""

    host: str = "127.0.0.1"
    ports: tuple[int, int] = DEFAULT_PORTS
    tls: TlsIdentity | None = None
    names: tuple[str, ...] = ()
    dealer: str = COORDINATOR
    timeout_s: float = 120.0
    startup_timeout_s: float = 180.0
    link: Link | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ports", tuple(self.ports))
        object.__setattr__(self, "names", tuple(self.names))
        low, high = self.ports
        if not 1 <= low <= high <= 65535:
            raise PetError(f"ports must be an inclusive range (low, high) within 1-65535, "
                           f"got {self.ports}")
        if self.host in WILDCARDS:
            raise PetError(f"host {self.host!r} would listen on every interface; give the "
                           "address of the one interface MPC parties use")
        if len(set(self.names)) != len(self.names) or self.dealer in self.names:
            raise PetError(f"certificate names must be distinct, got parties {self.names} "
                           f"and dealer {self.dealer!r}")

    def roster(self) -> tuple[str, ...]:
        """The certificate name of every process of the session: parties, then dealer."""
        return (*self.names, self.dealer)


class PartySession(Protocol):
    """What a backend drives: `n` parties that run programs together. `Parties` runs them
    all on this host; the coordinator service runs them at the sites."""

    n: int

    @property
    def alive(self) -> bool:
        """Whether every party is still running."""

    def run(self, program: str, inputs: Sequence[Any], public: Any = None) -> list[Any]:
        """Run a program with each party's private input; each party's output."""

    def close(self) -> None:
        """End the session."""


def free_port(address: str) -> int:
    """A TCP port that is free on `address` now (for a server about to start)."""
    with socket.socket() as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


class Party:
    """One party process (rank < world) or the dealer (rank == world), driven over a pipe.

    A site server holds one of these per MPC session, the coordinator holds the dealer, and
    `Parties` holds all of them when a whole session runs on one host. Party 0 is where the
    others meet: it takes no `rendezvous`, and every other process is given its `address`.
    A party's listener is bound here, before the process starts, so its address is known
    at once; the dealer only connects and listens nowhere. Every failure is a `PartyError`
    naming the rank; the caller decides what else to end.
    """

    def __init__(self, rank: int, world: int, config: PartyConfig,
                 rendezvous: tuple[str, int] | None = None, *,
                 spare: Spare | None = None) -> None:
        self.rank, self.world = rank, world
        try:
            roster = _roster(rank, world, config, rendezvous)
            listener = _listen(rank, roster, config) if rank < world else None
        except PartyError:
            if spare is not None:  # no session will take it: it would idle until exit
                spare.close()
            raise
        self._relay: Relay | None = None
        try:
            own = (config.host, listener.getsockname()[1]) if listener is not None else None
            if own is not None and config.link is not None:
                self._relay = Relay(own, config.link, host=config.host)
            self.address: tuple[str, int] | None = (
                self._relay.address if self._relay is not None else own)
            """Where the others reach this party: its configured host and the port it took,
            or its relay's (None for the dealer)."""
            session = (rank, roster, config, listener, rendezvous, self.address)
            if spare is not None and spare.alive and spare.take(session):  # warm
                self.process, self._pipe = spare.process, spare.pipe
            else:
                if spare is not None:
                    spare.close()
                self.process, self._pipe = _spawn(_party_main, session,
                                                  "dealer" if rank == world else f"party-{rank}")
        except BaseException:  # no process runs for this party: nothing of it may stay
            if self._relay is not None:
                self._relay.close()
            if spare is not None:
                spare.close()
            raise
        finally:
            if listener is not None:  # the process has its own copy now, if it started
                listener.close()
        self._started = rank == world  # the dealer sends nothing: it serves until the end

    @property
    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process.is_alive()

    def wait_started(self, timeout_s: float) -> None:
        """Wait until the party has joined the session (importing torch and meeting the
        others takes seconds)."""
        if not self._started:
            self.receive("start", timeout_s)
            self._started = True

    def send(self, message: tuple) -> None:
        """Hand the party a message (a program to run, or "stop")."""
        try:
            self._pipe.send(message)
        except (BrokenPipeError, OSError):
            raise PartyError(f"party {self.rank} is gone") from None

    def receive(self, what: str, timeout_s: float) -> Any:
        """The party's answer to `what`, within the deadline."""
        deadline = time.monotonic() + timeout_s
        while not self._pipe.poll(0.05):
            if not self.process.is_alive():
                raise PartyError(f"party {self.rank} died during {what} "
                                 f"(exit code {self.process.exitcode})")
            if time.monotonic() > deadline:
                raise PartyError(f"party {self.rank} did not answer {what} within "
                                 f"{timeout_s:g} s")
        try:
            status, value = self._pipe.recv()
        except (EOFError, OSError):
            self.process.join(1)
            raise PartyError(f"party {self.rank} died during {what} "
                             f"(exit code {self.process.exitcode})") from None
        if status == "error":
            raise PartyError(f"party {self.rank} failed during {what}: {value}")
        return value

    def run(self, program: str, value: Any, public: Any, timeout_s: float) -> Any:
        """Run one program with this party's private input and return its output."""
        self.send(("run", program, value, public))
        return self.receive(program, timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the process to stop; terminate it if it does not in time."""
        with contextlib.suppress(BrokenPipeError, OSError):
            self._pipe.send(("stop",))
        self.process.join(timeout_s)
        self.kill()

    def kill(self) -> None:
        """End the process now (terminate, then kill), and close the pipe and the relay."""
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self._pipe.close()
        if self._relay is not None:
            self._relay.close()


class Spare:
    """A process that has imported CrypTen (seconds of torch) and waits to become a party
    or the dealer of the next session: started when a server starts, so that its first
    MPC session meets at once. `Party(..., spare=...)` hands it the session."""

    def __init__(self) -> None:
        self.process, self.pipe = _spawn(_spare_main, (), "spare")

    @property
    def alive(self) -> bool:
        """Whether the process still waits (a session finding it dead starts a fresh
        party instead)."""
        return self.process.is_alive()

    def take(self, session: tuple) -> bool:
        """Hand the process a session to join; False if it is gone."""
        try:
            self.pipe.send(("join", *session))
        except (BrokenPipeError, OSError):
            return False
        return True

    def close(self) -> None:
        """End the process, if no session took it."""
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        self.pipe.close()


class Warm:
    """A server's spare kept ready for its next MPC session (once `start`ed). A session
    takes it; its replacement starts `REFILL_S` later, so that importing torch does not
    compete with the session that has just begun."""

    def __init__(self) -> None:
        self._spare: Spare | None = None
        self._refill: threading.Timer | None = None
        self._closed = False
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start keeping a spare (not once closed)."""
        with self._lock:
            if self._spare is None and not self._closed:
                self._spare = Spare()

    def take(self) -> Spare | None:
        """The spare, if one is ready (its replacement follows); None otherwise."""
        with self._lock:
            spare, self._spare = self._spare, None
            if spare is not None:
                self._refill = threading.Timer(REFILL_S, self.start)
                self._refill.daemon = True
                self._refill.start()
        return spare

    def close(self) -> None:
        """End the spare no session took, and keep none."""
        with self._lock:
            self._closed = True
            if self._refill is not None:
                self._refill.cancel()
            if self._spare is not None:
                self._spare.close()
                self._spare = None


REFILL_S = 30.0
"""Seconds after a session takes a server's spare before the next spare starts."""


def _spawn(target: Callable[..., None], args: tuple,
           role: str) -> tuple[multiprocessing.process.BaseProcess, Connection]:
    """A fresh interpreter running `target(*args, pipe)`, and this end of its pipe."""
    _require_main_guard()
    context = multiprocessing.get_context("spawn")
    mine, theirs = context.Pipe()
    process = context.Process(target=target, args=(*args, theirs), name=f"pet-mpc-{role}",
                              daemon=True)
    try:
        process.start()
    finally:
        theirs.close()
    return process, mine


def _require_main_guard() -> None:
    """Refuse to start a party from a script's top level outside `if __name__ ==
    "__main__":`. A party is a spawned interpreter that imports the script again; the
    script would then start parties again, and the party would die with only
    multiprocessing's bootstrapping error to show for it. What multiprocessing does not
    import again (an interactive session, a notebook, `python -c`, a package's
    `__main__`) passes."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name.split(".")[-1] == "__main__":
        return  # a package run with -m: multiprocessing does not import it again
    frame = sys._getframe(1)
    while frame is not None and not (frame.f_globals is vars(main)
                                     and frame.f_code.co_name == "<module>"):
        frame = frame.f_back
    if path is None or frame is None:  # not run by a script's top level (a thread, a REPL)
        return
    try:
        tree = ast.parse(Path(path).read_text())
    except (OSError, SyntaxError, ValueError):
        return
    line = frame.f_lineno
    if not any(_main_guard(node) and node.body[0].lineno <= line
               <= (node.body[-1].end_lineno or line) for node in ast.walk(tree)):
        raise PetError(f"{path}, line {line}: MPC starts its parties as new Python processes, "
                       "which import this script again; put the code that runs the study "
                       'under `if __name__ == "__main__":`')


def _main_guard(node: ast.AST) -> bool:
    """Whether a node is `if __name__ == "__main__":` (either way round, or as one term
    of an `and`), whose body runs only in the script itself."""
    if not isinstance(node, ast.If):
        return False
    terms = node.test.values if isinstance(node.test, ast.BoolOp) and isinstance(
        node.test.op, ast.And) else [node.test]
    return any(_is_main_test(term) for term in terms)


def _is_main_test(test: ast.expr) -> bool:
    """Whether an expression is `__name__ == "__main__"` (either way round)."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1
            and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = {ast.dump(test.left), ast.dump(test.comparators[0])}
    return sides == {ast.dump(ast.Name("__name__", ast.Load())),
                     ast.dump(ast.Constant("__main__"))}


def _spare_main(pipe: Connection) -> None:
    """Import what a party needs, then wait for a session to join (its listener comes
    over the pipe); end when the pipe closes first."""
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    for module in ("pet.crypten_shim", "pet.mpc.programs"):  # torch, CrypTen: seconds
        importlib.import_module(module)

    try:
        kind, *session = pipe.recv()
    except EOFError:
        _exit_now()
    if kind == "join":
        _party_main(*session, pipe)
    _exit_now()


class Parties:
    """`n` party processes and one dealer on this host, started once and reused by every
    query. They meet over TLS as parties at different sites do, with the certificates of
    a throwaway federation made for the session: its CA's key is never written, and its
    files are deleted when the session closes."""

    def __init__(self, n: int, config: PartyConfig | None = None, *,
                 spares: Sequence[Spare] = ()) -> None:
        if n < 2:
            raise PetError(f"MPC needs at least 2 parties, got {n}")
        self.n = n
        self.config = config or PartyConfig()
        if self.config.tls is not None:
            raise PetError("Parties makes its own certificates for a session on this host; "
                           "a process with the federation's certificate is a Party")
        start = time.perf_counter()
        self._folder = tempfile.TemporaryDirectory(prefix="pet-mpc-")
        self._parties: list[Party] = []
        self._guard(lambda: self._start(spares))
        self._guard(lambda: [p.wait_started(self.config.startup_timeout_s)
                             for p in self._parties])
        self.startup_s = time.perf_counter() - start

    def _start(self, spares: Sequence[Spare]) -> None:
        """Start party 0, then the other parties and the dealer, each with its own
        certificate (in the spares, by rank, where given)."""
        names = tuple(f"party-{rank}" for rank in range(self.n))
        certificates = make_certificates(self._folder.name, sites=names)
        for rank, name in enumerate((*names, self.config.dealer)):
            identity = TlsIdentity(certificates.cert(name), certificates.key(name),
                                   certificates.ca)
            config = replace(self.config, tls=identity, names=names)
            rendezvous = self._parties[0].address if rank else None
            self._parties.append(Party(rank, self.n, config, rendezvous,
                                       spare=spares[rank] if spares else None))

    def run(self, program: str, inputs: Sequence[Any], public: Any = None) -> list[Any]:
        """Run `program` with each party's private input; return each party's output (what
        the program reveals goes to party 0 only)."""
        if len(inputs) != self.n:
            raise PetError(f"{len(inputs)} inputs for {self.n} parties")

        def run() -> list[Any]:
            for party, value in zip(self._parties, inputs, strict=False):
                party.send(("run", program, value, public))
            return [p.receive(program, self.config.timeout_s) for p in self._parties[:self.n]]

        return self._guard(run)

    def close(self) -> None:
        """Stop every process (whatever does not stop in time is terminated) and delete
        the session's certificates."""
        for party in self._parties:
            party.stop()
        self._folder.cleanup()

    @property
    def alive(self) -> bool:
        """Whether every process is still running."""
        return all(p.alive for p in self._parties)

    def _guard(self, step: Callable[[], Any]) -> Any:
        """Run a step; on any party's failure (or a party that could not be set up, such
        as its relay) end the whole session, naming the party that died first (a peer's
        death often surfaces first as another party's error)."""
        try:
            return step()
        except PetError as failure:
            time.sleep(0.2)
            dead = [p for p in self._parties if not p.alive]
            reason = (f"party {dead[0].rank} died (exit code {dead[0].process.exitcode}): "
                      f"{failure}" if dead else str(failure))
            for party in self._parties:
                party.kill()
            self._folder.cleanup()
            raise PartyError(f"MPC session ended: {reason}; nothing was revealed") from None


def _party_main(rank: int, roster: tuple[str, ...], config: PartyConfig,
                listener: socket.socket | None, rendezvous: tuple[str, int] | None,
                address: tuple[str, int] | None, pipe: Connection) -> None:
    """A party (or, as the last of the roster, the dealer): join, then serve programs until
    stopped. A failure to join is reported on the pipe and ends the process."""
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    try:
        crypten = _join(rank, roster, config, listener, rendezvous, address)
    except Exception as error:  # reported to the session, which then ends every party
        pipe.send(("error", f"{type(error).__name__}: {error}"))
        raise SystemExit(f"{describe(rank, roster)} could not join: {error}") from None
    if crypten is None:  # the dealer has served every request and been told to stop
        _exit_now()
    from pet.mpc.programs import PROGRAMS

    pipe.send(("ok", None))
    channel = crypten.communicator.get().collectives.channel
    memory: dict[str, Any] = {}  # shares kept between the programs of one query
    while True:
        if not pipe.poll(IDLE_CHECK_S):
            if channel.broken():  # a member left (a coordinator killed, say): end here too
                break
            continue
        message = pipe.recv()
        if message[0] == "stop":
            break
        _, program, value, public = message
        # Each program reports its own bytes and rounds, not its query's earlier programs'.
        crypten.communicator.get().reset_communication_stats()
        try:
            pipe.send(("ok", PROGRAMS[program](crypten, rank, len(roster) - 1, value, public,
                                               memory)))
        except Exception as exc:  # reported to the session, which then ends every party
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))
    crypten.uninit()
    _exit_now()


def _exit_now() -> NoReturn:
    """End a party's process at once once its session is over: the interpreter's own
    teardown of torch takes about a second, which every stop of a session (and so every
    server's stop) would wait for. Nothing is left to write but the standard streams."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _join(rank: int, roster: tuple[str, ...], config: PartyConfig,
          listener: socket.socket | None, rendezvous: tuple[str, int] | None,
          address: tuple[str, int] | None) -> Any:
    """Connect to every other process of the session, then start CrypTen over those
    connections: the `crypten` module for a party, None for the dealer once it has served.
    The dealer waits for party 0 without a deadline (a session may sit idle between
    queries); it ends when party 0 ends the session or its connection closes."""
    assert config.tls is not None
    dealer = rank == len(roster) - 1
    channel = open_channel(rank, roster, config.tls, listener=listener, address=address,
                           rendezvous=rendezvous,
                           timeout_s=None if dealer else config.timeout_s,
                           startup_timeout_s=config.startup_timeout_s)
    # CrypTen takes seconds to import; only the party processes need it.
    from pet.crypten_shim import start_party
    from pet.mpc.collectives import Collectives

    return start_party(Collectives(channel))


def _roster(rank: int, world: int, config: PartyConfig,
            rendezvous: tuple[str, int] | None) -> tuple[str, ...]:
    """The session's certificate names, once the configuration is checked for this rank:
    names for every party, this process's own certificate named as expected, and an
    address of party 0 for every other process."""
    if config.tls is None:
        raise PartyError(f"party {rank} needs the federation's certificate, key and CA "
                         "(PartyConfig.tls)")
    if len(config.names) != world or not 0 <= rank <= world:
        raise PartyError(f"rank {rank} of a session of {world} parties with "
                         f"{len(config.names)} certificate names {config.names}; give one "
                         "name per party (PartyConfig.names)")
    roster = config.roster()
    if (rank == 0) != (rendezvous is None):
        raise PartyError(f"{describe(rank, roster)}: party 0 is where the others meet; it "
                         "takes no rendezvous address, and every other process needs one")
    try:
        name = config.tls.name()
    except (OSError, PetError, ValueError) as error:
        raise PartyError(f"{describe(rank, roster)} cannot read its certificate "
                         f"{config.tls.cert}: {error}") from None
    if name != roster[rank]:
        raise PartyError(f"{describe(rank, roster)}: this process's certificate "
                         f"{config.tls.cert} names {name!r}; the session expects "
                         f"{roster[rank]!r} at rank {rank}")
    return roster


def _listen(rank: int, roster: tuple[str, ...], config: PartyConfig) -> socket.socket:
    """The party's listener, on the configured host, at the first free port of the range."""
    try:
        return listen(config.host, config.ports)
    except ChannelError as error:
        raise PartyError(f"{describe(rank, roster)} cannot listen: {error}") from None


def _exit_with_parent(parent: int) -> None:
    """End this process once the process that started it is gone (a server killed with
    SIGKILL cannot stop its parties, which would otherwise wait on their peers)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)
