"""The site server: a hospital's tables behind the Site service.

It answers only the coordinator (by certificate). Each contribution is computed by
`pet.site.Site` — disclosure control, then the DP charge to this site's own ledger, then
the backend's protection — and every request, answered or refused, goes to the site's
append-only audit log. Under `mpc` the protected input never leaves: the site keeps it and
hands it to its own MPC party, sending the coordinator only a token for it.
"""

from __future__ import annotations

import functools
import logging
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from pet import codec
from pet.audit import AuditLog
from pet.backends import BACKENDS, Backend, get_backend
from pet.errors import PetError
from pet.ledger import Ledger
from pet.mpc.parties import Party, PartyConfig, PartyError, free_port
from pet.mpc.programs import PROGRAMS
from pet.site import Site
from services import convert, server
from services.config import SiteConfig, read_site
from services.pb import common_pb2, site_pb2, site_pb2_grpc
from services.security import require_peer, server_credentials
from services.status import CallError, handled, handled_stream

log = logging.getLogger("pet.services.site")

PIECE_BYTES = 1 << 20
"""Large messages travel in pieces of 1 MiB, far below gRPC's 4 MiB message limit."""

SHARED_INPUT = ("mpc", "mpc+dp")
"""Backends whose protected input stays at the site, for its own MPC party."""


@dataclass
class Seat:
    """This site's place in one MPC session: its party and the inputs it keeps for it."""

    party: Party
    inputs: dict[bytes, bytes] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def keep(self, message: bytes) -> bytes:
        """Keep a protected input for the party; the token that names it."""
        token = uuid.uuid4().hex.encode()
        self.inputs[token] = message
        return token

    def take(self, token: bytes) -> bytes:
        """The input a token names (used once)."""
        if token not in self.inputs:
            raise CallError(grpc.StatusCode.INVALID_ARGUMENT,
                            "the input token names nothing this site keeps for the session")
        return self.inputs.pop(token)


class SiteService(site_pb2_grpc.SiteServicer):
    """Converts messages and delegates to `pet.site.Site`, the ledger and the audit log."""

    def __init__(self, config: SiteConfig, *, party: PartyConfig | None = None) -> None:
        self.config = config
        ledger = Ledger(config.ledger)
        self.site = Site(config.name, config.table(), policy=config.policy, ledger=ledger)
        if config.budget and not any(b.dataset == self.site.dataset for b in ledger.budgets()):
            ledger.set_budget(self.site.dataset, *config.budget)
        self.audit = AuditLog(config.audit)
        self.party_config = party or PartyConfig()
        self.seats: dict[str, Seat] = {}
        self._seats_lock = threading.Lock()

    @property
    def backends(self) -> list[str]:
        """The backends this site takes part in."""
        return [n for n in BACKENDS if n != "plaintext" or self.config.allow_plaintext]

    @handled
    def Describe(self, request: Any, context: grpc.ServicerContext) -> site_pb2.SiteInfo:
        require_peer(context, self.config.coordinator)
        return site_pb2.SiteInfo(name=self.site.name, backends=self.backends,
                                 schema_json=convert.schema_json(self.site.schema))

    @handled_stream
    def Contribute(self, request: site_pb2.ContributeRequest,
                   context: grpc.ServicerContext) -> Iterator[site_pb2.ContributePiece]:
        name, query_text = request.backend.name, request.query.kind
        try:
            require_peer(context, self.config.coordinator)
            if name not in self.backends:
                raise CallError(grpc.StatusCode.PERMISSION_DENIED,
                                f"site {self.site.name!r} does not take part in {name!r} "
                                f"studies; it allows {self.backends}")
            query = convert.query_of(request.query)
            query_text = query.describe()
            query.validate(self.site.schema)
            state = codec.loads(request.state_json or "null")
            backend = self._backend(request.backend.SerializeToString(), request.n_sites)
            contribution = self.site.contribute(query, state, backend, request=request.request)
            message = contribution.message
            if name in SHARED_INPUT:
                message = self._seat(request.mpc_session).keep(message)
        except Exception as error:
            self._record(request, query_text, error)
            raise
        self._record(request, query_text, None)
        for start in range(0, len(message), PIECE_BYTES):
            yield site_pb2.ContributePiece(data=message[start:start + PIECE_BYTES])
        yield site_pb2.ContributePiece(done=site_pb2.ContributeDone(
            local_s=contribution.local_s, protect_s=contribution.protect_s, size=len(message)))

    @handled
    def JoinMpc(self, request: site_pb2.JoinMpcRequest,
                context: grpc.ServicerContext) -> site_pb2.JoinMpcReply:
        require_peer(context, self.config.coordinator)
        if not 0 <= request.rank < request.world or request.world < 2:
            raise CallError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"rank {request.rank} of a world of {request.world} parties")
        address, port = request.address, request.port
        if request.rank == 0:  # this site's party hosts the rendezvous
            address = self.config.mpc_host
            port = free_port(address)
        with self._seats_lock:
            if request.session in self.seats:
                raise CallError(grpc.StatusCode.ALREADY_EXISTS,
                                f"this site already sits in MPC session {request.session!r}")
            self.seats[request.session] = Seat(Party(request.rank, request.world, address, port))
        return site_pb2.JoinMpcReply(address=address, port=port)

    @handled
    def RunProgram(self, request: site_pb2.ProgramRequest,
                   context: grpc.ServicerContext) -> site_pb2.ProgramReply:
        require_peer(context, self.config.coordinator)
        if request.program not in PROGRAMS:
            raise CallError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"unknown MPC program {request.program!r}")
        seat = self._seat(request.session)
        public = codec.loads(request.public_json or "null")
        with seat.lock:
            value = seat.take(request.input) if request.input else b""
            try:
                seat.party.wait_started(self.party_config.startup_timeout_s)
                output = seat.party.run(request.program, value, public,
                                        self.party_config.timeout_s)
            except PartyError:
                self._leave(request.session)
                raise
        return site_pb2.ProgramReply(output_json=codec.dumps(output))

    @handled
    def LeaveMpc(self, request: site_pb2.LeaveMpcRequest,
                 context: grpc.ServicerContext) -> site_pb2.LeaveMpcReply:
        require_peer(context, self.config.coordinator)
        self._leave(request.session)
        return site_pb2.LeaveMpcReply()

    @handled
    def Budget(self, request: common_pb2.BudgetRequest,
               context: grpc.ServicerContext) -> common_pb2.BudgetReply:
        require_peer(context, self.config.coordinator)
        ledger = self.site.ledger
        assert ledger is not None
        budgets = [ledger.budget(request.dataset)] if request.dataset else ledger.budgets()
        return common_pb2.BudgetReply(budgets=[common_pb2.Budget(
            site=self.site.name, dataset=b.dataset, epsilon=b.epsilon, delta=b.delta,
            spent_epsilon=b.spent_epsilon, spent_delta=b.spent_delta, releases=b.releases)
            for b in budgets])

    def close(self) -> None:
        """Stop every MPC party this site runs."""
        for session in list(self.seats):
            self._leave(session)

    @functools.lru_cache(maxsize=16)  # noqa: B019 - one server object lives as long as its cache
    def _backend(self, spec: bytes, n_sites: int) -> Backend:
        """The site's side of a described backend (HE contexts are loaded once per key)."""
        message = common_pb2.Backend.FromString(spec)
        options = convert.backend_options(message)
        if BACKENDS[message.name].differentially_private and message.name != "dp":
            options["sites"] = n_sites
        return get_backend(message.name, **options)

    def _seat(self, session: str) -> Seat:
        seat = self.seats.get(session)
        if seat is None:
            raise CallError(grpc.StatusCode.FAILED_PRECONDITION,
                            f"site {self.site.name!r} sits in no MPC session {session!r}")
        return seat

    def _leave(self, session: str) -> None:
        with self._seats_lock:
            seat = self.seats.pop(session, None)
        if seat is not None:
            seat.party.stop()

    def _record(self, request: site_pb2.ContributeRequest, query: str,
                error: Exception | None) -> None:
        """One audit entry per request round: who asked what, under which backend, what
        this site's ledger charged for the request (first round only), and the outcome."""
        ledger = self.site.ledger
        assert ledger is not None
        first = request.round <= 1
        detail = f"round {max(request.round, 1)}"
        if request.backend.HasField("rho"):  # one of many releases of a charged request
            spends = ledger.spends(request.request, self.site.dataset)
            first = len(spends) == 1
            detail += f"; ρ={request.backend.rho:g} spent, {sum(spends):g} by the request"
        epsilon, delta = ledger.charged(request.request) if first else (0.0, 0.0)
        outcome = ("answered" if error is None else
                   "refused" if isinstance(error, PetError) else "failed")
        self.audit.record(analyst=request.analyst or "(unknown)",
                          request=request.request or "(none)", query=query,
                          backend=request.backend.name or "(none)", epsilon=epsilon,
                          delta=delta, outcome=outcome,
                          detail=detail if error is None else str(error))


def serve(config_path: str) -> None:
    """Run a site server from its configuration file until SIGTERM or SIGINT."""
    config = read_site(config_path)
    service = SiteService(config)
    hosted = server.Hosted(service, site_pb2_grpc.add_SiteServicer_to_server,
                           site_pb2.DESCRIPTOR.services_by_name["Site"].full_name)
    server.run(config.listen, server_credentials(config.tls, require_client_certificate=True),
               [hosted],
               banner=lambda port: f"site {config.name!r} serving on port {port} "
                                   f"({service.site.table.n_rows} rows, backends "
                                   f"{service.backends})",
               on_stop=service.close)
