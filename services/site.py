"""The site server: a hospital's tables behind the Site service.

It answers only the coordinator (by certificate). Each contribution is computed by
`pet.site.Site` — disclosure control, then the DP charge to this site's own ledger, then
the backend's protection — and every request, answered or refused, goes to the site's
append-only audit log. Under `mpc` the protected input never leaves: the site keeps it and
hands it to its own MPC party, sending the coordinator only a token for it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import grpc

from pet import codec
from pet.audit import AuditLog
from pet.backends import BACKENDS, Backend, get_backend
from pet.backends.mpc import ATTEMPTS
from pet.errors import PetError, QueryError
from pet.ledger import Ledger
from pet.limits import check_query, check_round
from pet.mpc.parties import Party, PartyConfig, PartyError, Warm
from pet.queries.base import Query
from pet.releases import Ask
from pet.site import Site
from pet.subsets import SubsetControl
from services import convert, logs, server
from services.config import SiteConfig, read_site
from services.console import Console, Endpoints
from services.metrics import Metrics
from services.pb import common_pb2, site_pb2, site_pb2_grpc
from services.security import peer_name, require_peer, server_credentials
from services.status import CallError, handled, handled_stream

log = logging.getLogger("pet.services.site")

PIECE_BYTES = 1 << 20
"""Large messages travel in pieces of 1 MiB, far below gRPC's 4 MiB message limit."""

SHARED_INPUT = ("mpc", "mpc+dp")
"""Backends whose protected input stays at the site, for its own MPC party."""
MAX_SEATS = 4
"""MPC sessions a site sits in at once: each is a party process, so a peer may not start
them without end."""
MAX_KEPT = 64
"""Inputs a site keeps for its party in one session before the party takes them."""
SERVED_PROGRAMS = ("share_sum", "reveal_sum", "secure")
"""The MPC programs a site's party runs for the coordinator (the others are tests')."""
Programs = dict[str, dict[str, Any]]
"""The programs that may run on a query round's shared sum, with their public parameters,
as the site derives them from the query (`Backend.programs`)."""
ID = re.compile(r"[A-Za-z0-9._:-]{0,128}")
"""Request ids and session names: short and plain, since each is stored with every
release and audit entry."""


@dataclass
class Seat:
    """This site's place in one MPC session: its party, the inputs it keeps for it (each
    with the programs that may finish its query round), and the programs that may finish
    the round whose sum the parties hold now."""

    party: Party
    inputs: dict[bytes, tuple[bytes, Programs]] = field(default_factory=dict)
    current: Programs = field(default_factory=dict)
    runs: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def keep(self, message: bytes, asked: bytes, programs: Programs) -> bytes:
        """Keep a protected input for the party, after the digest of what was asked for it
        (the parties compare digests before sharing), with the programs its round may run;
        the token that names it."""
        if len(self.inputs) >= MAX_KEPT:
            raise CallError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"this site already keeps {MAX_KEPT} inputs its MPC party has not "
                            "taken; run the session's programs first")
        token = uuid.uuid4().hex.encode()
        self.inputs[token] = asked + message[len(asked):], programs
        return token

    def program(self, name: str, token: bytes) -> tuple[bytes, dict[str, Any]]:
        """The input and public parameters of a program this site runs: share_sum takes a
        kept input (used once) and its round's parameters; any other program must be one
        that finishes the round shared last, with that round's parameters. The
        coordinator's parameters are never used: with another scale or head per party it
        could reveal one site's partial, or sums a secure query keeps hidden. A program
        runs at most `ATTEMPTS` times on one shared sum, as many as the backend's reruns
        need: each run of a secure program reveals fresh rounding noise, and a coordinator
        that ran it at will would average that noise into more than the answer."""
        if name == "share_sum":
            if token not in self.inputs:
                raise CallError(grpc.StatusCode.INVALID_ARGUMENT,
                                "share_sum shares an input this site keeps: the token names "
                                "none")
            value, self.current = self.inputs.pop(token)
            self.runs = Counter()
            return value, self.current["share_sum"]
        if name not in self.current:
            raise CallError(grpc.StatusCode.FAILED_PRECONDITION,
                            f"{name} does not finish the query round this session's sum "
                            f"answers (it may run {sorted(set(self.current) - {'share_sum'})})")
        if self.runs[name] >= ATTEMPTS:
            raise CallError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"{name} already ran {ATTEMPTS} times on the sum this session's "
                            "parties hold; share the inputs again to run it once more")
        self.runs[name] += 1
        return b"", self.current[name]


class SiteService(site_pb2_grpc.SiteServicer):
    """Converts messages and delegates to `pet.site.Site`, the ledger and the audit log."""

    def __init__(self, config: SiteConfig, *, party: PartyConfig | None = None) -> None:
        self.config = config
        self.ledger = ledger = Ledger(config.ledger)
        self.audit = AuditLog(config.audit)
        self.site = Site(config.name, config.table(), policy=config.policy, ledger=ledger,
                         dataset=config.dataset,
                         audit=self.audit, subsets=SubsetControl(config.ledger))
        if config.budget and not any(b.dataset == self.site.dataset for b in ledger.budgets()):
            ledger.set_budget(self.site.dataset, *config.budget)
        self.party_config = party or PartyConfig()
        self.warm = Warm()
        """A spare party process, kept once the server serves (`mpc: {warm: true}`)."""
        self.seats: dict[str, Seat] = {}
        self._seats_lock = threading.Lock()

    def overview(self) -> dict[str, Any]:
        """What the console shows: every dataset's budget, the audit log's chain checked,
        and its latest CONSOLE_ENTRIES entries (who asked what, when, at what cost), the
        refusals among them apart."""
        try:
            chain = {"intact": True, "entries": self.audit.verify(), "problem": None}
        except PetError as error:
            chain = {"intact": False, "entries": None, "problem": str(error)}
        newest = [asdict(e) for e in reversed(self.audit.entries(limit=CONSOLE_ENTRIES))]
        return {"site": self.config.name, "budgets": [asdict(b) for b in self.ledger.budgets()],
                "chain": chain, "entries": newest,
                "refusals": [e for e in newest if e["outcome"] != "answered"]}

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
        caller = self._caller(context, request)
        try:
            require_peer(context, self.config.coordinator)
            if name not in self.backends:
                raise CallError(grpc.StatusCode.PERMISSION_DENIED,
                                f"site {self.site.name!r} does not take part in {name!r} "
                                f"studies; it allows {self.backends}")
            _check_ids(request.request, request.mpc_session)
            if name in SHARED_INPUT:
                self._seat(request.mpc_session)  # before anything is charged
            limits = self.config.limits
            query = convert.query_of(request.query, limits)
            query_text = query.describe()
            check_query(query, self.site.schema, limits)
            state = codec.loads(request.state_json or "null")
            self._check_round(request, query)
            check_round(query, self.site.schema, state, limits)
            backend = self._backend(request.backend.SerializeToString(deterministic=True),
                                    request.n_sites)
            ask = Ask(request.request or uuid.uuid4().hex, session=_session(request.backend),
                      analyst=caller, round=request.round or 1)
            contribution = self.site.contribute(query, state, backend, ask=ask)
            message = contribution.message
            if name in SHARED_INPUT:
                message = self._seat(request.mpc_session).keep(
                    message, _asked(request), backend.programs(query, self.site.schema, state))
        except Exception as error:
            self._record(request, caller, query_text, error)
            raise
        if not contribution.audited:
            self._record(request, caller, query_text, None)
        for start in range(0, len(message), PIECE_BYTES):
            yield site_pb2.ContributePiece(data=message[start:start + PIECE_BYTES])
        yield site_pb2.ContributePiece(done=site_pb2.ContributeDone(
            local_s=contribution.local_s, protect_s=contribution.protect_s, size=len(message)))

    @handled
    def JoinMpc(self, request: site_pb2.JoinMpcRequest,
                context: grpc.ServicerContext) -> site_pb2.JoinMpcReply:
        require_peer(context, self.config.coordinator)
        _check_ids(request.session)
        names = self._parties(request)
        config = replace(self.party_config, host=self.config.mpc_host,
                         ports=self.config.mpc_ports, link=self.config.mpc_link,
                         tls=self.config.tls.identity(),
                         names=names, dealer=self.config.coordinator)
        rendezvous = (request.address, request.port) if request.rank else None  # 0 hosts it
        with self._seats_lock:
            if request.session in self.seats:
                raise CallError(grpc.StatusCode.ALREADY_EXISTS,
                                f"this site already sits in MPC session {request.session!r}")
            for ended in [s for s, seat in self.seats.items() if not seat.party.alive]:
                self.seats.pop(ended).party.kill()  # its session lost a member
            if len(self.seats) >= MAX_SEATS:
                raise CallError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"this site already sits in {MAX_SEATS} MPC sessions, its "
                                "limit; end one (LeaveMpc) first")
            party = Party(request.rank, request.world, config, rendezvous,
                          spare=self.warm.take())
            self.seats[request.session] = Seat(party)
        host, port = party.address or ("", 0)
        return site_pb2.JoinMpcReply(address=host, port=port)

    def _parties(self, request: site_pb2.JoinMpcRequest) -> tuple[str, ...]:
        """The parties of a session, by rank: exactly the sites of this site's own
        federation, this site at the rank it is asked to take; anything else is refused
        (a session of fewer or other parties could open this site's input)."""
        names = tuple(request.parties)
        federation = self._federation("MPC sessions need")
        if (sorted(names) != sorted(federation) or request.world != len(names)
                or not 0 <= request.rank < request.world or names[request.rank] != self.site.name):
            raise CallError(grpc.StatusCode.FAILED_PRECONDITION,
                            f"an MPC session's parties must be the federation's sites "
                            f"{list(federation)}, each once, with this site at the rank it "
                            f"takes; the request names {list(names)[:10]} for rank "
                            f"{request.rank} of {request.world}")
        return names

    @handled
    def RunProgram(self, request: site_pb2.ProgramRequest,
                   context: grpc.ServicerContext) -> site_pb2.ProgramReply:
        require_peer(context, self.config.coordinator)
        if request.program not in SERVED_PROGRAMS:
            raise CallError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"unknown MPC program {request.program[:100]!r}; a site runs "
                            f"{list(SERVED_PROGRAMS)}")
        seat = self._seat(request.session)
        with seat.lock:
            value, public = seat.program(request.program, request.input)
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
        known = ledger.budgets()
        if request.dataset:
            known = [b for b in known if b.dataset == request.dataset]
            if not known:
                raise CallError(grpc.StatusCode.NOT_FOUND,
                                f"site {self.site.name!r} keeps no budget for dataset "
                                f"{request.dataset[:100]!r}; its datasets are "
                                f"{[b.dataset for b in ledger.budgets()]}")
        return common_pb2.BudgetReply(budgets=[common_pb2.Budget(
            site=self.site.name, dataset=b.dataset, epsilon=b.epsilon, delta=b.delta,
            spent_epsilon=b.spent_epsilon, spent_delta=b.spent_delta, releases=b.releases,
            rho=b.rho, spent_rho=b.spent_rho)
            for b in known])

    def close(self) -> None:
        """Stop every MPC party this site runs, and its spare."""
        for session in list(self.seats):
            self._leave(session)
        self.warm.close()

    @functools.lru_cache(maxsize=16)  # noqa: B019 - one server object lives as long as its cache
    def _backend(self, spec: bytes, n_sites: int) -> Backend:
        """The site's side of a described backend (HE contexts are loaded once per key).
        Under distributed DP the site's noise share is calibrated for the federation of
        its own configuration, never for a number of sites a request claims."""
        message = common_pb2.Backend.FromString(spec)
        options = convert.backend_options(message)
        if BACKENDS[message.name].shares_noise:
            options["sites"] = self._federation_size(n_sites)
        return get_backend(message.name, **options)

    def _federation_size(self, claimed: int) -> int:
        """The number of sites this site's configuration says it federates with; refuses a
        request that claims another."""
        federation = self._federation("distributed DP needs to size its noise share")
        if claimed != len(federation):
            raise CallError(grpc.StatusCode.FAILED_PRECONDITION,
                            f"the request says the federation has {claimed} sites; site "
                            f"{self.site.name!r} federates with {len(federation)} "
                            f"({', '.join(federation)}) and sizes its noise share for them")
        return len(federation)

    def _federation(self, need: str) -> tuple[str, ...]:
        """The sites this site's configuration says it federates with; refused when the
        configuration names none."""
        if not self.config.federation:
            raise CallError(grpc.StatusCode.FAILED_PRECONDITION,
                            f"site {self.site.name!r} has no 'federation' list of sites in "
                            f"its configuration, which {need}; its operator must add one")
        return self.config.federation

    @staticmethod
    def _check_round(request: site_pb2.ContributeRequest, query: Query) -> None:
        """Refuse a round outside the query's public number of rounds (a request that makes
        many releases numbers them instead, each paid for by its ρ)."""
        if request.round < 0:
            raise QueryError(f"round {request.round} is negative; rounds count from 1")
        last = query.max_rounds
        if not request.backend.HasField("rho") and request.round > last:
            raise QueryError(f"round {request.round} is outside the rounds 1..{last} that "
                             f"{query.describe()} may take")

    def _caller(self, context: grpc.ServicerContext, request: Any) -> str:
        """Who the audit log names as asking: the analyst the coordinator vouches for, or
        the authenticated peer itself when it is not the coordinator."""
        peer = peer_name(context)
        if peer == self.config.coordinator:
            return request.analyst[:200] or "(unknown analyst)"
        return f"(certificate {peer!r})" if peer else "(no certificate)"

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

    def _record(self, request: site_pb2.ContributeRequest, caller: str, query: str,
                error: Exception | None) -> None:
        """One audit entry for a request round that cost nothing: an answer of an exact
        backend, or a refusal (DP releases are audited with their charge)."""
        outcome = ("answered" if error is None else
                   "refused" if isinstance(error, PetError) else "failed")
        detail = f"round {request.round or 1}" if error is None else str(error)
        self.audit.record(analyst=caller, request=request.request[:200] or "(none)",
                          query=query[:500] or "(none)",
                          backend=request.backend.name[:50] or "(none)",
                          outcome=outcome, detail=detail[:1000])


CONSOLE_ENTRIES = 500
"""The most recent audit entries the console shows."""


def _check_ids(*names: str) -> None:
    """Refuse a request id or session name that is not short and plain."""
    for name in names:
        if not ID.fullmatch(name):
            raise QueryError(f"request ids and session names are at most 128 letters, digits "
                             f"and . _ : -; got {len(name)} characters")


def _asked(request: site_pb2.ContributeRequest) -> bytes:
    """The digest of the query round a contribution answers, the same at every site (the
    backend session, the query, its state and round), which the MPC parties compare."""
    parts = (request.backend.SerializeToString(deterministic=True),
             request.query.SerializeToString(deterministic=True),
             request.state_json.encode(), str(request.round).encode())
    return hashlib.sha256(b"".join(len(p).to_bytes(8, "big") + p for p in parts)).digest()


def _session(spec: common_pb2.Backend) -> str:
    """The canonical text of a backend session: its wire form without the ρ of one
    release, as a digest (an HE session's public context is part of it)."""
    session = common_pb2.Backend()
    session.CopyFrom(spec)
    session.ClearField("rho")
    return hashlib.sha256(session.SerializeToString(deterministic=True)).hexdigest()


def serve(config_path: str) -> None:
    """Run a site server from its configuration file until SIGTERM or SIGINT, logging
    JSON lines, with its console and metrics where its configuration asks for them."""
    config = read_site(config_path)
    logs.configure(config.name)
    service = SiteService(config)
    hosted = server.Hosted(service, site_pb2_grpc.add_SiteServicer_to_server,
                           site_pb2.DESCRIPTOR.services_by_name["Site"].full_name)
    metrics = Metrics()
    metrics.budgets(service.ledger.budgets)
    metrics.gauge("pet_mpc_sessions", "MPC sessions this site's party is in",
                  lambda: len(service.seats))
    console = None if config.console is None else Console(
        config.console.listen, config.tls, config.console.officers,
        Endpoints(metrics.exposition, service.overview))
    server.run(config.listen, server_credentials(config.tls, require_client_certificate=True),
               [hosted], metrics=metrics, console=console,
               banner=lambda port: f"site {config.name!r} serving on port {port} "
                                   f"({service.site.table.n_rows} rows, backends "
                                   f"{service.backends})",
               on_stop=service.close, max_request_bytes=config.limits.request_bytes,
               on_serving=service.warm.start if config.mpc_warm else lambda: None)
