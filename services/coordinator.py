"""The coordinator server: runs a study across the sites under any backend.

It holds the list of sites and the session state, never a site's rows or clear partials
and never the HE secret key: under `he` and `he+dp` it combines ciphertexts and asks the
analyst, on the run's own stream, to reveal each round's aggregate. Under `mpc` the sites'
parties compute and this server hosts the dealer (Beaver triples; it holds no data). The
study loop itself is `pet.study.Study`, here over `RemoteSite`s.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from pet import codec
from pet.backends import Backend, get_backend
from pet.backends.base import Conclusion
from pet.errors import PetError, QueryError
from pet.layout import Layout
from pet.mpc.parties import Party, PartyConfig, PartyError
from pet.queries.base import Query, State
from pet.schema import Schema
from pet.site import Contribution
from pet.study import Study
from services import convert, server
from services.config import CoordinatorConfig, Tls, read_coordinator
from services.jobs import Post, deadline_of, streamed
from services.pb import (
    common_pb2,
    coordinator_pb2,
    coordinator_pb2_grpc,
    site_pb2,
    site_pb2_grpc,
    synthesis_pb2,
    synthesis_pb2_grpc,
)
from services.security import (
    TokenInterceptor,
    bearer_token,
    peer_channel,
    server_credentials,
)
from services.site import PIECE_BYTES, SHARED_INPUT
from services.status import CallError, from_rpc, handled, handled_stream
from services.synthesis import SynthesisService

MIN_MPC_SITES = 3
"""Below three sites an MPC session would need parties that no site runs."""
RECONNECT_S = 3.0
"""How long a call waits for an unreachable site to come back before giving up."""


@dataclass(frozen=True)
class Federation:
    """The sites' common schema and the backends every site takes part in."""

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
        self._round = 0

    def contribute(self, query: Query, state: State, backend: Backend, *,
                   request: str | None = None) -> Contribution:
        """Ask the site for its protected message; its refusal keeps its status code."""
        self._round += 1
        message = site_pb2.ContributeRequest(
            request=request or "", analyst=self._analyst, query=convert.query_message(query),
            state_json=codec.dumps(state), backend=self._spec, n_sites=self._n_sites,
            mpc_session=self._mpc_session, round=self._round)
        pieces = self._peer.stream("Contribute", message, _remaining(self._deadline))
        if not pieces or pieces[-1].WhichOneof("kind") != "done":
            raise CallError(grpc.StatusCode.UNAVAILABLE,
                            f"site {self.name!r} ended its message without finishing it")
        done = pieces[-1].done
        return Contribution(self.name, b"".join(p.data for p in pieces[:-1]), done.local_s,
                            done.protect_s)


class RemoteParties:
    """An MPC session whose parties run at the sites (one each) and whose dealer runs
    here; `pet.backends.MPC` drives it like local parties."""

    def __init__(self, peers: Sequence[SitePeer], *, config: PartyConfig) -> None:
        self.n = len(peers)
        self.session = uuid.uuid4().hex
        self._peers, self._config = list(peers), config
        self._pool = ThreadPoolExecutor(max_workers=self.n)
        self._dealer: Party | None = None
        self._ended = False
        try:
            first = self._call(0, "JoinMpc", site_pb2.JoinMpcRequest(
                session=self.session, rank=0, world=self.n), config.timeout_s)
            joins = [self._pool.submit(self._call, rank, "JoinMpc", site_pb2.JoinMpcRequest(
                session=self.session, rank=rank, world=self.n, address=first.address,
                port=first.port), config.timeout_s) for rank in range(1, self.n)]
            for join in joins:
                join.result()
            self._dealer = Party(self.n, self.n, first.address, first.port)
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
        """Every site leaves the session; the dealer stops."""
        self._ended = True
        for rank in range(self.n):
            with contextlib.suppress(PetError):  # a site that is down has no party to stop
                self._call(rank, "LeaveMpc", site_pb2.LeaveMpcRequest(session=self.session), 10)
        if self._dealer is not None:
            self._dealer.stop()

    def _call(self, rank: int, method: str, request: Any, timeout: float) -> Any:
        return self._peers[rank].call(method, request, timeout)


class AnalystReveal(Backend):
    """A backend whose reveal needs the analyst's secret key (he, he+dp), as the coordinator
    holds it: it combines like the public backend and asks the analyst, on the run's
    stream, to conclude each round."""

    def __init__(self, public: Backend, requests: Iterator[coordinator_pb2.RunRequest],
                 post: Post) -> None:
        self.public, self.requests, self.post = public, requests, post
        self.name = public.name  # type: ignore[misc]
        self.differentially_private = public.differentially_private  # type: ignore[misc]
        self.rounds = 0

    def cost(self) -> tuple[float, float]:
        return self.public.cost()

    def open(self, n_sites: int) -> None:
        self.public.open(n_sites)

    def protect(self, partial: np.ndarray, layout: Layout) -> bytes:
        raise PetError("sites protect their own partials; the coordinator never sees one")

    def combine(self, messages: Sequence[bytes], layout: Layout) -> bytes:
        return self.public.combine(messages, layout)

    def reveal(self, combined: bytes, layout: Layout) -> Any:
        raise PetError("only the analyst, who holds the secret key, reveals")

    def conclude(self, query: Any, schema: Any, state: Any, combined: bytes,
                 layout: Layout) -> Conclusion:
        """Send the combined ciphertext to the analyst in pieces; their conclusion back."""
        self.rounds += 1
        starts = range(0, max(len(combined), 1), PIECE_BYTES)
        for start in starts:
            reveal = coordinator_pb2.Reveal(
                data=combined[start:start + PIECE_BYTES], last=start == starts[-1],
                state_json=codec.dumps(state) if start == 0 else "", round=self.rounds)
            self.post(coordinator_pb2.RunReply(reveal=reveal))
        try:
            request = next(self.requests)
        except (StopIteration, grpc.RpcError):
            raise CallError(grpc.StatusCode.CANCELLED, "the analyst left the run") from None
        if request.WhichOneof("kind") != "conclusion":
            raise QueryError("the analyst must answer a Reveal with a Conclusion")
        answer = request.conclusion
        return Conclusion(codec.loads(answer.outcome_json), np.asarray(answer.head),
                          answer.error_bound, convert.privacy_of(answer.guarantee))


class CoordinatorService(coordinator_pb2_grpc.CoordinatorServicer):
    """Converts messages, runs `Study` over the site servers, and keeps the MPC session."""

    def __init__(self, config: CoordinatorConfig, *, party: PartyConfig | None = None) -> None:
        self.config = config
        self.party_config = party or PartyConfig(timeout_s=config.deadline_s)
        self.peers = [SitePeer(s.name, s.address, config.tls) for s in config.sites]
        self._federation: Federation | None = None
        self._mpc: RemoteParties | None = None
        self.mpc_lock = threading.Lock()

    @handled
    def Describe(self, request: Any, context: grpc.ServicerContext) -> coordinator_pb2.Federation:
        federation = self.federation(deadline_of(context, self.config.deadline_s))
        return coordinator_pb2.Federation(sites=[peer.name for peer in self.peers],
                                          schema_json=convert.schema_json(federation.schema),
                                          backends=list(federation.backends))

    @handled_stream
    def Run(self, requests: Iterator[coordinator_pb2.RunRequest],
            context: grpc.ServicerContext) -> Iterator[coordinator_pb2.RunReply]:
        first = next(requests, None)
        if first is None or first.WhichOneof("kind") != "start":
            raise QueryError("a run starts with a Start message")
        analyst = self.config.analyst(bearer_token(context.invocation_metadata()) or "")
        deadline = deadline_of(context, math.inf)

        def work(post: Post) -> coordinator_pb2.RunReply:
            result = self._study(first.start, requests, analyst or "", deadline, post)
            return coordinator_pb2.RunReply(result=convert.result_message(result))

        yield from streamed(work, context, name="pet-run")

    @handled
    def Budget(self, request: common_pb2.BudgetRequest,
               context: grpc.ServicerContext) -> common_pb2.BudgetReply:
        timeout = _remaining(deadline_of(context, self.config.deadline_s))
        reply = common_pb2.BudgetReply()
        for peer in self.peers:
            reply.budgets.extend(peer.call("Budget", request, timeout).budgets)
        return reply

    def federation(self, deadline: float) -> Federation:
        """The sites' common schema and the backends all of them allow (asked once)."""
        if self._federation is None:
            infos = [peer.call("Describe", site_pb2.DescribeSiteRequest(), _remaining(deadline))
                     for peer in self.peers]
            schemas = {info.schema_json for info in infos}
            if len(schemas) != 1:
                raise PetError("the sites do not share one schema; every site must serve the "
                               "federation's schema")
            allowed = [name for name in infos[0].backends
                       if all(name in info.backends for info in infos)]
            self._federation = Federation(convert.schema_of(schemas.pop()), tuple(allowed))
        return self._federation

    def close(self) -> None:
        """End the MPC session, if one runs, and close the channels to the sites."""
        with self.mpc_lock:
            if self._mpc is not None:
                self._mpc.close()
                self._mpc = None
        for peer in self.peers:
            peer.channel.close()

    def _study(self, start: coordinator_pb2.Start, requests: Iterator[Any], analyst: str,
               deadline: float, post: Post) -> Any:
        federation = self.federation(deadline)
        query = _checked(start.query, federation.schema)
        name = start.backend.name
        options = convert.backend_options(start.backend)
        if name not in federation.backends:
            raise CallError(grpc.StatusCode.PERMISSION_DENIED,
                            f"not every site takes part in {name!r} studies; all of them "
                            f"allow {list(federation.backends)}")
        if name in SHARED_INPUT:
            with self.mpc_lock:
                parties = self.mpc_parties(deadline)
                backend = get_backend(name, **options, parties=parties)
                return self._run(query, backend, start.backend, federation, analyst,
                                 deadline, parties.session)
        backend = get_backend(name, **options)
        if name in ("he", "he+dp"):
            backend = AnalystReveal(backend, requests, post)
        return self._run(query, backend, start.backend, federation, analyst, deadline)

    def _run(self, query: Query, backend: Backend, spec: common_pb2.Backend,
             federation: Federation, analyst: str, deadline: float,
             mpc_session: str = "") -> Any:
        return self.study(backend, spec, federation, analyst, deadline, mpc_session).run(query)

    def study(self, backend: Backend, spec: common_pb2.Backend, federation: Federation,
              analyst: str, deadline: float, mpc_session: str = "") -> Study:
        """A study over the site servers under `backend`, described to them by `spec`."""
        sites = [RemoteSite(peer, federation.schema, spec=spec, n_sites=len(self.peers),
                            analyst=analyst, deadline=deadline, mpc_session=mpc_session)
                 for peer in self.peers]
        return Study(sites, backend=backend, parallel=True)  # type: ignore[arg-type]

    def mpc_parties(self, deadline: float) -> RemoteParties:
        """The live MPC session at the sites, started if none runs (callers hold the lock)."""
        if len(self.peers) < MIN_MPC_SITES:
            raise PetError(f"mpc over the services needs at least {MIN_MPC_SITES} sites, each "
                           f"running its own party; this federation has {len(self.peers)}")
        if self._mpc is None or not self._mpc.alive:
            if self._mpc is not None:
                self._mpc.close()
            self._mpc = RemoteParties(self.peers, config=self.party_config)
        return self._mpc


def _checked(message: common_pb2.Query, schema: Schema) -> Query:
    """The asked query, checked against the schema down to its first round's layout: any
    failure here is the request's fault (INVALID_ARGUMENT), never the server's."""
    try:
        query = convert.query_of(message)
        query.validate(schema)
        query.layout(schema, query.initial_state(schema))
    except PetError:
        raise
    except Exception as exc:  # a query the classes did not foresee: still the caller's fault
        raise QueryError(f"{message.kind}: {type(exc).__name__}: {exc}") from None
    return query


def _remaining(deadline: float) -> float | None:
    """Seconds left before a deadline, for a call's timeout (None: no deadline)."""
    if math.isinf(deadline):
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise CallError(grpc.StatusCode.DEADLINE_EXCEEDED, "the run's deadline has passed")
    return left


def serve(config_path: str) -> None:
    """Run the coordinator from its configuration file until SIGTERM or SIGINT."""
    config = read_coordinator(config_path)
    service = CoordinatorService(config)
    hosted = [server.Hosted(service, coordinator_pb2_grpc.add_CoordinatorServicer_to_server,
                            coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name),
              server.Hosted(SynthesisService(service),
                            synthesis_pb2_grpc.add_SynthesisServicer_to_server,
                            synthesis_pb2.DESCRIPTOR.services_by_name["Synthesis"].full_name)]
    server.run(config.listen, server_credentials(config.tls, require_client_certificate=False),
               hosted,
               banner=lambda port: f"coordinator serving on port {port} for sites "
                                   f"{[s.name for s in config.sites]}",
               on_stop=service.close, interceptors=[TokenInterceptor(config.analyst)])
