"""The coordinator server: runs a study across the sites under any backend.

It holds the list of sites and the session state, never a site's rows or clear partials
and never the HE secret key: under `he` and `he+dp` it combines ciphertexts and asks the
analyst, on the run's own stream, to reveal each round's aggregate. Under `mpc` the sites'
parties compute and this server hosts the dealer (Beaver triples; it holds no data). The
study loop itself is `pet.study.Study`, here over the site servers (`services.remote`).
Every run has a deadline, and each analyst may run only so many at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc

from pet.backends import get_backend
from pet.errors import PetError, QueryError
from pet.limits import RequestLimits, check_query
from pet.mpc.parties import PartyConfig
from pet.queries.base import Query
from pet.schema import Schema
from services import convert, logs, server
from services.config import CoordinatorConfig, read_coordinator
from services.console import Console, Endpoints
from services.jobs import Post, Runs, deadline_of, streamed
from services.metrics import Metrics
from services.pb import (
    common_pb2,
    coordinator_pb2,
    coordinator_pb2_grpc,
    synthesis_pb2,
    synthesis_pb2_grpc,
)
from services.remote import Sites, remaining
from services.reveal import AnalystReveal
from services.security import TokenInterceptor, bearer_token, server_credentials
from services.site import SHARED_INPUT
from services.status import CallError, handled, handled_stream
from services.synthesis import SynthesisService


class CoordinatorService(coordinator_pb2_grpc.CoordinatorServicer):
    """Converts messages and runs `Study` over the site servers."""

    def __init__(self, config: CoordinatorConfig, sites: Sites, runs: Runs) -> None:
        self.config, self.sites, self.runs = config, sites, runs

    @handled
    def Describe(self, request: Any, context: grpc.ServicerContext) -> coordinator_pb2.Federation:
        agreement = self.sites.agreement(deadline_of(context, self.config.deadline_s))
        return coordinator_pb2.Federation(sites=list(self.sites.names),
                                          schema_json=convert.schema_json(agreement.schema),
                                          backends=list(agreement.backends))

    @handled_stream
    def Run(self, requests: Iterator[coordinator_pb2.RunRequest],
            context: grpc.ServicerContext) -> Iterator[coordinator_pb2.RunReply]:
        first = next(requests, None)
        if first is None or first.WhichOneof("kind") != "start":
            raise QueryError("a run starts with a Start message")
        for reply in self._run(first.start, requests, context, "pet-run"):
            yield reply if isinstance(reply, coordinator_pb2.RunReply) else \
                coordinator_pb2.RunReply(result=reply)

    @handled
    def Ask(self, request: coordinator_pb2.Start,
            context: grpc.ServicerContext) -> common_pb2.Result:
        """`Run` in one message each way, for the backends whose answers need no analyst's
        key: a unary call costs a few milliseconds less than a stream."""
        if request.backend.name in convert.ANALYST_KEYS:
            raise CallError(grpc.StatusCode.FAILED_PRECONDITION,
                            f"{request.backend.name[:100]} studies need the analyst to reveal "
                            "each round with their key: ask them through Run")
        for result in self._run(request, iter(()), context, "pet-ask"):
            return result  # type: ignore[no-any-return]  # nothing is posted before it
        raise CallError(grpc.StatusCode.CANCELLED, "the call ended before its result")

    def _run(self, start: coordinator_pb2.Start, requests: Iterator[Any],
             context: grpc.ServicerContext, name: str) -> Iterator[Any]:
        """The study's posts (he's reveals), then its result, from a thread of its own
        (`streamed`): the call ends at the server's deadline or the caller's cancel even
        where a site or an MPC party holds the work; the analyst's place is held until the
        work ends, not the call."""
        analyst = self.config.analyst(bearer_token(context.invocation_metadata()) or "") or ""
        deadline = deadline_of(context, self.config.run_deadline_s)

        def work(post: Post) -> common_pb2.Result:
            with self.runs.admitted(analyst):
                return convert.result_message(self._study(start, requests, analyst,
                                                           deadline, post))

        return streamed(work, context, name=name, deadline=deadline, limit="run_deadline_s")

    @handled
    def Budget(self, request: common_pb2.BudgetRequest,
               context: grpc.ServicerContext) -> common_pb2.BudgetReply:
        """Every site's budgets (of one dataset: those sites that keep it)."""
        timeout = remaining(deadline_of(context, self.config.deadline_s))
        reply = common_pb2.BudgetReply()
        for peer in self.sites.peers:
            try:
                reply.budgets.extend(peer.call("Budget", request, timeout).budgets)
            except CallError as error:
                if error.code != grpc.StatusCode.NOT_FOUND:
                    raise
        if request.dataset and not reply.budgets:
            raise CallError(grpc.StatusCode.NOT_FOUND,
                            f"no site keeps a budget for dataset {request.dataset[:100]!r}")
        return reply

    def _study(self, start: coordinator_pb2.Start, requests: Iterator[Any], analyst: str,
               deadline: float, post: Post) -> Any:
        agreement = self.sites.agreement(deadline)
        query = _checked(start.query, agreement.schema, self.config.limits)
        name = start.backend.name
        options = convert.backend_options(start.backend)
        if name not in agreement.backends:
            raise CallError(grpc.StatusCode.PERMISSION_DENIED,
                            f"not every site takes part in {name!r} studies; all of them "
                            f"allow {list(agreement.backends)}")
        if name in SHARED_INPUT:
            with self.sites.mpc.held() as parties:
                backend = get_backend(name, **options, parties=parties)
                study = self.sites.study(backend, start.backend, analyst, deadline,
                                         parties.session)
                return study.run(query)
        backend = get_backend(name, **options)
        if name in convert.ANALYST_KEYS:
            backend = AnalystReveal(backend, requests, post,
                                    lambda reveal, query: coordinator_pb2.RunReply(reveal=reveal))
        return self.sites.study(backend, start.backend, analyst, deadline).run(query)


def _checked(message: common_pb2.Query, schema: Schema, limits: RequestLimits) -> Query:
    """The asked query, checked against the schema and the coordinator's limits down to
    its first round's size: any failure here is the request's fault (INVALID_ARGUMENT or
    RESOURCE_EXHAUSTED), never the server's."""
    try:
        query = convert.query_of(message, limits)
        check_query(query, schema, limits)
    except PetError:
        raise
    except Exception as exc:  # a query the classes did not foresee: still the caller's fault
        raise QueryError(f"{message.kind[:100]}: {type(exc).__name__}: {exc}") from None
    return query


def serve(config_path: str) -> None:
    """Run the coordinator from its configuration file until SIGTERM or SIGINT."""
    config = read_coordinator(config_path)
    logs.configure("coordinator")
    sites = Sites(config.sites, config.tls, party=PartyConfig(timeout_s=config.deadline_s))
    runs = Runs(config.runs_per_analyst)
    metrics = Metrics()
    metrics.gauge("pet_runs", "Runs and fits under way", runs.under_way)
    metrics.gauge("pet_mpc_sessions", "MPC sessions open among the sites",
                  lambda: int(sites.mpc.open))
    console = None if config.console is None else Console(
        config.console.listen, config.tls, config.console.officers, Endpoints(metrics.exposition))
    hosted = [server.Hosted(CoordinatorService(config, sites, runs),
                            coordinator_pb2_grpc.add_CoordinatorServicer_to_server,
                            coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name),
              server.Hosted(SynthesisService(config, sites, runs),
                            synthesis_pb2_grpc.add_SynthesisServicer_to_server,
                            synthesis_pb2.DESCRIPTOR.services_by_name["Synthesis"].full_name)]
    server.run(config.listen, server_credentials(config.tls, require_client_certificate=False),
               hosted, metrics=metrics, console=console,
               banner=lambda port: f"coordinator serving on port {port} for sites "
                                   f"{list(sites.names)}",
               on_stop=sites.close, interceptors=[TokenInterceptor(config.analyst)],
               max_request_bytes=config.limits.request_bytes,
               on_serving=sites.mpc.warm.start if config.mpc_warm else lambda: None)
