"""The coordinator's side of its sites: a connection to each, their common schema and
backends, studies over them, and the one MPC session their parties share.

Both services the coordinator hosts — the study service and the synthesis service — are
handed one `Sites`; neither reaches into the other.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import grpc

from pet import codec
from pet.backends import Backend
from pet.errors import PetError
from pet.mpc.parties import Party, PartyConfig, PartyError, Spare, Warm
from pet.queries.base import Query, State
from pet.schema import Schema
from pet.site import Contribution
from pet.study import Study
from services import convert
from services.config import SiteAddress, Tls
from services.pb import common_pb2, site_pb2, site_pb2_grpc
from services.security import peer_channel
from services.server import MAX_WORKERS
from services.status import CallError, from_rpc

CALLS_PER_SITE = MAX_WORKERS
"""Threads kept for calls to each site, over every run: as many as the server has for
runs, so that no run's round waits for another's (a round would pay about a millisecond
to start threads of its own)."""
MIN_MPC_SITES = 3
"""Below three sites an MPC session would need parties that no site runs."""
RECONNECT_S = 3.0
"""How long a call waits for an unreachable site to come back before giving up."""


@dataclass(frozen=True)
class Agreement:
    """What the sites agree on: their common schema and the backends all of them allow."""

    schema: Schema
    backends: tuple[str, ...]


class SitePeer:
    """The coordinator's connection to one site: every call carries a deadline, and a call
    that finds the site unreachable waits briefly for it to come back (a restarted site
    is reconnected within a second) before the site is reported UNAVAILABLE."""

    def __init__(self, name: str, address: str, tls: Tls) -> None:
        self.name = name
        self.channel = peer_channel(address, tls)
        self.stub = site_pb2_grpc.SiteStub(self.channel)

    def call(self, method: str, request: Any, timeout: float | None) -> Any:
        """A unary call to the site."""
        return self._retrying(lambda: getattr(self.stub, method)(request, timeout=timeout))

    def stream(self, method: str, request: Any, timeout: float | None) -> list[Any]:
        """A call whose reply streams, read to its end."""
        return self._retrying(lambda: list(getattr(self.stub, method)(request,
                                                                      timeout=timeout)))

    def _retrying(self, call: Callable[[], Any]) -> Any:
        """The call; made once more if the site was unreachable and comes back."""
        try:
            return call()
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or not self._back():
                raise from_rpc(error, f"site {self.name!r}") from None
        return self._once(call)

    def _once(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except grpc.RpcError as error:
            raise from_rpc(error, f"site {self.name!r}") from None

    def reachable(self, timeout_s: float) -> bool:
        """Whether the channel is (or becomes, within the timeout) ready."""
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            return False
        return True

    def _back(self) -> bool:
        """Whether an unreachable site comes back within RECONNECT_S."""
        return self.reachable(RECONNECT_S)


class RemoteSite:
    """A site server as `Study` sees a site: it contributes one round's message."""

    def __init__(self, peer: SitePeer, schema: Schema, *, spec: common_pb2.Backend,
                 n_sites: int, analyst: str, deadline: float, mpc_session: str = "") -> None:
        self.name, self.schema, self._peer = peer.name, schema, peer
        self._spec, self._n_sites = spec, n_sites
        self._analyst, self._deadline, self._mpc_session = analyst, deadline, mpc_session

    def contribute(self, query: Query, state: State, backend: Backend, *,
                   request: str | None = None, round: int = 1) -> Contribution:
        """Ask the site for its protected message for one round of a request; its refusal
        keeps its status code."""
        message = site_pb2.ContributeRequest(
            request=request or "", analyst=self._analyst, query=convert.query_message(query),
            state_json=codec.dumps(state), backend=self._spec, n_sites=self._n_sites,
            mpc_session=self._mpc_session, round=round)
        pieces = self._peer.stream("Contribute", message, remaining(self._deadline))
        if not pieces or pieces[-1].WhichOneof("kind") != "done":
            raise CallError(grpc.StatusCode.UNAVAILABLE,
                            f"site {self.name!r} ended its message without finishing it")
        done = pieces[-1].done
        return Contribution(self.name, b"".join(p.data for p in pieces[:-1]), done.local_s,
                            done.protect_s)


class RemoteParties:
    """An MPC session whose parties run at the sites (one each) and whose dealer runs
    here; `pet.backends.MPC` drives it like local parties."""

    def __init__(self, peers: Sequence[SitePeer], *, config: PartyConfig,
                 spare: Spare | None = None) -> None:
        self.n = len(peers)
        self.session = uuid.uuid4().hex
        self._peers, self._config = list(peers), config
        self._pool = ThreadPoolExecutor(max_workers=self.n)
        self._dealer: Party | None = None
        self._ended = False
        names = tuple(peer.name for peer in self._peers)
        try:
            first = self._call(0, "JoinMpc", site_pb2.JoinMpcRequest(
                session=self.session, rank=0, world=self.n, parties=names), config.timeout_s)
            joins = [self._pool.submit(self._call, rank, "JoinMpc", site_pb2.JoinMpcRequest(
                session=self.session, rank=rank, world=self.n, address=first.address,
                port=first.port, parties=names), config.timeout_s)
                for rank in range(1, self.n)]
            for join in joins:
                join.result()
            self._dealer = Party(self.n, self.n, replace(config, names=names),
                                 (first.address, first.port), spare=spare)
        except PetError:
            self.close()
            raise

    @property
    def alive(self) -> bool:
        """Whether the session still runs (no party failed, the dealer lives)."""
        return not self._ended and self._dealer is not None and self._dealer.alive

    def run(self, program: str, inputs: Sequence[Any], public: Any = None) -> list[Any]:
        """Run a program on every site's party, each with its input (a token for the input
        the site keeps, or nothing); each party's output. Any failure ends the session."""
        timeout = self._config.startup_timeout_s + self._config.timeout_s
        calls = [self._pool.submit(self._call, rank, "RunProgram", site_pb2.ProgramRequest(
            session=self.session, program=program, input=bytes(value),
            public_json=codec.dumps(public)), timeout) for rank, value in enumerate(inputs)]
        try:
            return [codec.loads(call.result().output_json) for call in calls]
        except PetError as failure:
            down = [peer.name for peer in self._peers if not peer.reachable(1.0)]
            self.close()
            cause = f"site {down[0]!r} is unavailable" if down else str(failure)
            raise PartyError(f"MPC session ended: {cause}; nothing was revealed") from None

    def close(self) -> None:
        """Every site leaves the session, all at once (each stops its party process); the
        dealer stops."""
        self._ended = True
        for leaving in [self._pool.submit(self._leave, rank) for rank in range(self.n)]:
            leaving.result()
        if self._dealer is not None:
            self._dealer.stop()

    def _leave(self, rank: int) -> None:
        with contextlib.suppress(PetError):  # a site that is down has no party to stop
            self._call(rank, "LeaveMpc", site_pb2.LeaveMpcRequest(session=self.session), 10)

    def _call(self, rank: int, method: str, request: Any, timeout: float) -> Any:
        return self._peers[rank].call(method, request, timeout)


class MpcSession:
    """The MPC session the sites' parties share, started when first needed and restarted
    after a failure; one query or fit holds it at a time."""

    def __init__(self, peers: Sequence[SitePeer], config: PartyConfig) -> None:
        self._peers, self._config = list(peers), config
        self._parties: RemoteParties | None = None
        self._lock = threading.Lock()
        self.warm = Warm()
        """A spare dealer process, kept once the coordinator serves."""

    @property
    def open(self) -> bool:
        """Whether a session runs (its parties alive)."""
        parties = self._parties
        return parties is not None and parties.alive

    @contextlib.contextmanager
    def held(self) -> Iterator[RemoteParties]:
        """The live session, for the caller alone until the block ends."""
        if len(self._peers) < MIN_MPC_SITES:
            raise PetError(f"mpc over the services needs at least {MIN_MPC_SITES} sites, each "
                           f"running its own party; this federation has {len(self._peers)}")
        with self._lock:
            if self._parties is None or not self._parties.alive:
                if self._parties is not None:
                    self._parties.close()
                self._parties = RemoteParties(self._peers, config=self._config,
                                              spare=self.warm.take())
            yield self._parties

    def close(self) -> None:
        """End the session, if one runs, and the spare dealer."""
        with self._lock:
            if self._parties is not None:
                self._parties.close()
                self._parties = None
        self.warm.close()


class Sites:
    """The coordinator's sites: connections, what they agree on, studies over them, and
    their MPC session."""

    def __init__(self, addresses: Sequence[SiteAddress], tls: Tls, *,
                 party: PartyConfig) -> None:
        self.peers = [SitePeer(s.name, s.address, tls) for s in addresses]
        dealer = tls.identity()  # the dealer proves itself with the coordinator's certificate
        self.mpc = MpcSession(self.peers, replace(party, tls=dealer, dealer=dealer.name()))
        self._agreement: Agreement | None = None
        self._calls = ThreadPoolExecutor(max_workers=CALLS_PER_SITE * len(self.peers),
                                         thread_name_prefix="pet-site")

    @property
    def names(self) -> tuple[str, ...]:
        """The sites, in order."""
        return tuple(peer.name for peer in self.peers)

    def agreement(self, deadline: float) -> Agreement:
        """The sites' common schema and the backends all of them allow (asked once)."""
        if self._agreement is None:
            infos = [peer.call("Describe", site_pb2.DescribeSiteRequest(), remaining(deadline))
                     for peer in self.peers]
            schemas = {info.schema_json for info in infos}
            if len(schemas) != 1:
                raise PetError("the sites do not share one schema; every site must serve the "
                               "federation's schema")
            allowed = [name for name in infos[0].backends
                       if all(name in info.backends for info in infos)]
            self._agreement = Agreement(convert.schema_of(schemas.pop()), tuple(allowed))
        return self._agreement

    def study(self, backend: Backend, spec: common_pb2.Backend, analyst: str, deadline: float,
              mpc_session: str = "") -> Study:
        """A study over the site servers under `backend`, described to them by `spec`."""
        schema = self.agreement(deadline).schema
        sites = [RemoteSite(peer, schema, spec=spec, n_sites=len(self.peers),
                            analyst=analyst, deadline=deadline, mpc_session=mpc_session)
                 for peer in self.peers]
        return Study(sites, backend=backend, parallel=self._calls)  # type: ignore[arg-type]

    def close(self) -> None:
        """End the MPC session and close the channels to the sites."""
        self.mpc.close()
        self._calls.shutdown(wait=False, cancel_futures=True)
        for peer in self.peers:
            peer.channel.close()


def remaining(deadline: float) -> float | None:
    """Seconds left before a deadline, for a call's timeout (None: no deadline)."""
    if math.isinf(deadline):
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise CallError(grpc.StatusCode.DEADLINE_EXCEEDED, "the run's deadline has passed")
    return left


