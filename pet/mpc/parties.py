"""A session's MPC parties: one process per site plus the dealer, kept alive across queries.

Each party is a CrypTen process joined over torch.distributed (gloo). Beaver triples come
from CrypTen's trusted-third-party provider, run in a separate dealer process that holds no
data (CrypTen's default trusted-first-party provider would let party 0 know every triple).
Address, port and world size come from `PartyConfig`, so the same code runs across hosts.

Each party process is driven over a pipe by the process that started it (its site's server,
or the session process when all parties run on one host): it is handed its site's private
input and a program name, and party 0 hands back what the program reveals. Every wait has a
deadline; a party that dies, stalls or fails ends the whole session (every process is
terminated, nothing partial is returned) and the next query starts a fresh one.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Protocol

from pet.errors import PetError


class PartyError(PetError):
    """An MPC party failed, stalled or died; the session was torn down."""


@dataclass(frozen=True)
class PartyConfig:
    """Where the parties meet: torch.distributed rendezvous address and port (0: pick a free
    port on this host); the deadline of every wait on a party during a query, and of the
    start-up (processes import torch and join, which takes seconds)."""

    address: str = "127.0.0.1"
    port: int = 0
    timeout_s: float = 120.0
    startup_timeout_s: float = 180.0


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
    """A TCP port that is free on `address` now (for a rendezvous about to start)."""
    with socket.socket() as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


class Party:
    """One party process (rank < world) or the dealer (rank == world), driven over a pipe.

    A site server holds one of these per MPC session, the coordinator holds the dealer, and
    `Parties` holds all of them when a whole session runs on one host. Every failure is a
    `PartyError` naming the rank; the caller decides what else to end.
    """

    def __init__(self, rank: int, world: int, address: str, port: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.rank, self.world = rank, world
        self._pipe, theirs = context.Pipe()
        role = "dealer" if rank == world else f"party-{rank}"
        self.process = context.Process(target=_party_main, args=(rank, world, address, port,
                                                                 theirs),
                                       name=f"pet-mpc-{role}", daemon=True)
        self.process.start()
        theirs.close()
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
        """End the process now (terminate, then kill), and close the pipe."""
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self._pipe.close()


class Parties:
    """`n` party processes and one dealer on this host, started once and reused by every
    query."""

    def __init__(self, n: int, config: PartyConfig | None = None) -> None:
        if n < 2:
            raise PetError(f"MPC needs at least 2 parties, got {n}")
        self.n = n
        self.config = config or PartyConfig()
        port = self.config.port or free_port(self.config.address)
        start = time.perf_counter()
        self._parties = [Party(rank, n, self.config.address, port) for rank in range(n + 1)]
        self._guard(lambda: [p.wait_started(self.config.startup_timeout_s)
                             for p in self._parties])
        self.startup_s = time.perf_counter() - start

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
        """Stop every process; whatever does not stop in time is terminated."""
        for party in self._parties:
            party.stop()

    @property
    def alive(self) -> bool:
        """Whether every process is still running."""
        return all(p.alive for p in self._parties)

    def _guard(self, step: Callable[[], Any]) -> Any:
        """Run a step; on any party's failure end the whole session, naming the party that
        died first (a peer's death often surfaces first as another party's error)."""
        try:
            return step()
        except PartyError as failure:
            time.sleep(0.2)
            dead = [p for p in self._parties if not p.alive]
            reason = (f"party {dead[0].rank} died (exit code {dead[0].process.exitcode}): "
                      f"{failure}" if dead else str(failure))
            for party in self._parties:
                party.kill()
            raise PartyError(f"MPC session ended: {reason}; nothing was revealed") from None


def _party_main(rank: int, world: int, address: str, port: int, pipe: Connection) -> None:
    """A party (or, at rank == world, the dealer): join, then serve programs until stopped."""
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    os.environ.update(DISTRIBUTED_BACKEND="gloo", RENDEZVOUS=f"tcp://{address}:{port}",
                      WORLD_SIZE=str(world), RANK=str(rank))
    from pet.mpc.programs import PROGRAMS, start_crypten

    crypten = start_crypten(dealer=rank == world)
    if crypten is None:  # the dealer has served every request and been told to stop
        return
    pipe.send(("ok", None))
    memory: dict[str, Any] = {}  # shares kept between the programs of one query
    while True:
        message = pipe.recv()
        if message[0] == "stop":
            break
        _, program, value, public = message
        try:
            pipe.send(("ok", PROGRAMS[program](crypten, rank, world, value, public, memory)))
        except Exception as exc:  # reported to the session, which then ends every party
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))
    crypten.uninit()


def _exit_with_parent(parent: int) -> None:
    """End this process once the process that started it is gone (a server killed with
    SIGKILL cannot stop its parties, which would otherwise wait on their peers)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)
