"""A session's MPC parties: one process per site plus the dealer, kept alive across queries.

Each party is a CrypTen process joined over torch.distributed (gloo). Beaver triples come
from CrypTen's trusted-third-party provider, run in a separate dealer process that holds no
data (CrypTen's default trusted-first-party provider would let party 0 know every triple).
Address, port and world size come from `PartyConfig`, so the same code runs across hosts.

The session process talks to each party over a pipe: it hands a party its site's private
input and a program name, and party 0 hands back what the program reveals. Every wait has a
deadline; a party that dies, stalls or fails ends the whole session (every process is
terminated, nothing partial is returned) and the next query starts a fresh one.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

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


def _free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


class Parties:
    """`n` party processes and one dealer, started once and reused by every query."""

    def __init__(self, n: int, config: PartyConfig | None = None) -> None:
        if n < 2:
            raise PetError(f"MPC needs at least 2 parties, got {n}")
        self.n = n
        self.config = config or PartyConfig()
        port = self.config.port or _free_port(self.config.address)
        context = multiprocessing.get_context("spawn")
        start = time.perf_counter()
        self._pipes: list[Connection] = []
        self._processes = []
        for rank in range(n + 1):  # rank n is the dealer
            ours, theirs = context.Pipe()
            process = context.Process(
                target=_party_main, args=(rank, n, self.config.address, port, theirs),
                name=f"pet-mpc-{'dealer' if rank == n else f'party-{rank}'}", daemon=True)
            process.start()
            theirs.close()
            self._pipes.append(ours)
            self._processes.append(process)
        for rank in range(n):
            self._receive(rank, "start", self.config.startup_timeout_s)
        self.startup_s = time.perf_counter() - start

    def run(self, program: str, inputs: Sequence[np.ndarray], public: Any = None) -> list[Any]:
        """Run `program` with each party's private input; return each party's output (what
        the program reveals goes to party 0 only)."""
        if len(inputs) != self.n:
            raise PetError(f"{len(inputs)} inputs for {self.n} parties")
        for rank, value in enumerate(inputs):
            self._send(rank, ("run", program, value, public))
        return [self._receive(rank, program, self.config.timeout_s) for rank in range(self.n)]

    def close(self) -> None:
        """Stop every process; whatever does not stop in time is terminated."""
        for rank in range(self.n):
            with contextlib.suppress(BrokenPipeError, OSError):
                self._pipes[rank].send(("stop",))
        deadline = time.monotonic() + 10
        for process in self._processes:
            process.join(max(0.0, deadline - time.monotonic()))
        self._kill()

    @property
    def alive(self) -> bool:
        """Whether every process is still running."""
        return all(p.is_alive() for p in self._processes)

    def _send(self, rank: int, message: tuple) -> None:
        try:
            self._pipes[rank].send(message)
        except (BrokenPipeError, OSError):
            self._fail(f"party {rank} is gone")

    def _receive(self, rank: int, what: str, timeout_s: float) -> Any:
        pipe, process = self._pipes[rank], self._processes[rank]
        deadline = time.monotonic() + timeout_s
        while not pipe.poll(0.05):
            if not process.is_alive():
                self._fail(f"party {rank} died during {what} (exit code {process.exitcode})")
            if time.monotonic() > deadline:
                self._fail(f"party {rank} did not answer {what} within {timeout_s:g} s")
        try:
            status, value = pipe.recv()
        except (EOFError, OSError):
            process.join(1)
            self._fail(f"party {rank} died during {what} (exit code {process.exitcode})")
        if status == "error":
            time.sleep(0.2)  # a peer's death often surfaces first as this party's error
            dead = [r for r, p in enumerate(self._processes) if not p.is_alive()]
            if dead:
                self._fail(f"party {dead[0]} died during {what} "
                           f"(exit code {self._processes[dead[0]].exitcode})")
            self._fail(f"party {rank} failed during {what}: {value}")
        return value

    def _fail(self, reason: str) -> None:
        self._kill()
        raise PartyError(f"MPC session ended: {reason}; nothing was revealed")

    def _kill(self) -> None:
        for process in self._processes:
            if process.is_alive():
                process.terminate()
        for process in self._processes:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)
        for pipe in self._pipes:
            pipe.close()


def _party_main(rank: int, world: int, address: str, port: int, pipe: Connection) -> None:
    """A party (or, at rank == world, the dealer): join, then serve programs until stopped."""
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
