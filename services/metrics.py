"""A server's Prometheus metrics and its structured log of calls.

One interceptor sees every call that reaches a handler (health checks and refusals by
other interceptors included; not what gRPC refuses before any handler runs, a request
over the size limit or one that does not parse). It counts calls by method and status
code, times them, counts refusals by reason (the kind of error a servicer refused with,
e.g. `budget`, `disclosure`, `limit`, or the status code where no servicer ran) and
writes one JSON log line per call. Gauges that describe state (budgets left per dataset,
MPC sessions open) are read when scraped.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pet.ledger import Budget

log = logging.getLogger("pet.services.calls")

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
"""Latency buckets (seconds): a plaintext count takes milliseconds, an MPC fit minutes."""


NOT_REFUSED = frozenset({grpc.StatusCode.OK, grpc.StatusCode.CANCELLED})
"""Codes that are not the server's refusal: an answer, or a client that went away."""


class Metrics:
    """The metrics of one server (its own registry, so that servers in one process, as
    in tests, keep theirs apart)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.calls = Counter("pet_requests", "Calls by method and status code",
                             ["method", "code"], registry=self.registry)
        self.seconds = Histogram("pet_request_seconds", "Time to answer a call, by method",
                                 ["method"], buckets=BUCKETS, registry=self.registry)
        self.refusals = Counter("pet_refusals", "Calls refused, by reason", ["reason"],
                                registry=self.registry)

    def gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A number read from the server's state whenever metrics are scraped."""
        Gauge(name, documentation, registry=self.registry).set_function(read)

    def budgets(self, read: Callable[[], Iterable[Budget]]) -> None:
        """Per dataset, the (ε, δ) budget, what is spent and what is left, read from the
        ledger whenever metrics are scraped."""
        self.registry.register(_BudgetCollector(read))

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)

    def interceptor(self) -> grpc.ServerInterceptor:
        """The interceptor that counts, times and logs every call (put it first, so that
        it also sees calls other interceptors refuse)."""
        return _Observer(self)

    def observe(self, method: str, code: grpc.StatusCode, seconds: float,
                error: BaseException | None) -> None:
        """Record one finished call."""
        self.calls.labels(method, code.name).inc()
        self.seconds.labels(method).observe(seconds)
        reason = None if code in NOT_REFUSED else reason_of(error, code)
        if reason is not None:
            self.refusals.labels(reason).inc()
        log.info("call", extra={"method": method, "code": code.name,
                                "seconds": round(seconds, 6), "reason": reason})


def reason_of(error: BaseException | None, code: grpc.StatusCode) -> str:
    """Why a call was refused: the kind of pet error a servicer raised (`BudgetError` →
    `budget`; the error behind `context.abort` is its `__context__`; an error raised
    without abort is its own kind), else the status code (`unauthenticated`)."""
    if error is None:
        return code.name.lower()
    behind = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    name = type(behind or error).__name__
    if name in {"CallError", "Exception", "RpcError", "GeneratorExit"}:
        return code.name.lower()
    words = re.sub(r"(?<!^)(?=[A-Z])", "_", name.removesuffix("Error")).lower()
    return words or code.name.lower()


class _BudgetCollector(Collector):
    """The ledger's budgets as gauges, read at scrape time."""

    def __init__(self, read: Callable[[], Iterable[Budget]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {
            "epsilon": GaugeMetricFamily("pet_budget_epsilon", "Configured ε per dataset",
                                         labels=["dataset"]),
            "spent": GaugeMetricFamily("pet_budget_spent_epsilon", "ε spent per dataset",
                                       labels=["dataset"]),
            "left": GaugeMetricFamily("pet_budget_remaining_epsilon", "ε left per dataset",
                                      labels=["dataset"]),
            "delta_left": GaugeMetricFamily("pet_budget_remaining_delta",
                                            "δ left per dataset", labels=["dataset"]),
        }
        for budget in self._read():
            families["epsilon"].add_metric([budget.dataset], budget.epsilon)
            families["spent"].add_metric([budget.dataset], budget.spent_epsilon)
            families["left"].add_metric([budget.dataset],
                                        max(budget.epsilon - budget.spent_epsilon, 0.0))
            families["delta_left"].add_metric([budget.dataset],
                                              max(budget.delta - budget.spent_delta, 0.0))
        yield from families.values()


class _Observer(grpc.ServerInterceptor):
    """Wraps every method handler so that its end (answered, aborted, or a stream that
    ran out or failed) is recorded once."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def intercept_service(self, continuation: Callable[[Any], Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        wrap = self._stream if handler.response_streaming else self._unary
        kind = {(False, False): grpc.unary_unary_rpc_method_handler,
                (False, True): grpc.unary_stream_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler}[
            (handler.request_streaming, handler.response_streaming)]
        behaviour = (handler.unary_unary or handler.unary_stream or handler.stream_unary
                     or handler.stream_stream)
        return kind(wrap(method, behaviour), request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)

    def _finish(self, method: str, context: grpc.ServicerContext, start: float,
                error: BaseException | None) -> None:
        """Record the call's status: the one it was aborted with; where the call ended
        under it (a stream closed, the call no longer active), DEADLINE_EXCEEDED past its
        deadline, else CANCELLED (the client went away); else OK (UNKNOWN for an error
        that set none)."""
        code = context.code()
        if code is None:
            if isinstance(error, GeneratorExit) or not context.is_active():
                remaining = context.time_remaining()
                code = (grpc.StatusCode.DEADLINE_EXCEEDED
                        if remaining is not None and remaining <= 0
                        else grpc.StatusCode.CANCELLED)
            else:
                code = grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN
        self._metrics.observe(method, code, time.perf_counter() - start, error)

    def _unary(self, method: str, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        def observed(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            try:
                reply = behaviour(request, context)
            except BaseException as error:
                self._finish(method, context, start, error)
                raise
            self._finish(method, context, start, None)
            return reply

        return observed

    def _stream(self, method: str, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        def observed(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            start = time.perf_counter()
            try:
                yield from behaviour(request, context)
            except BaseException as error:
                self._finish(method, context, start, error)
                raise
            self._finish(method, context, start, None)

        return observed
