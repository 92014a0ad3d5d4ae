"""Starting a server: thread pool, TLS, standard health checking and reflection, and a
clean stop on SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pet.limits import DEFAULT_LIMITS
from services.console import Console
from services.metrics import Metrics

log = logging.getLogger("pet.services")

MAX_WORKERS = 64
"""Threads serving calls at once; more calls wait their turn instead of being refused."""


@dataclass(frozen=True)
class Hosted:
    """One service a server hosts: its servicer, the generated function that registers it,
    and its full name (for health checking and reflection)."""

    servicer: Any
    add: Callable[[Any, grpc.Server], None]
    name: str


def start(listen: str, credentials: grpc.ServerCredentials, services: Sequence[Hosted], *,
          interceptors: Sequence[grpc.ServerInterceptor] = (),
          max_request_bytes: int = DEFAULT_LIMITS.request_bytes) -> tuple[grpc.Server, int]:
    """A started server on `listen` with the given services, health checking reporting
    SERVING for each, and reflection. Returns the server and the port it bound (useful
    with port 0). gRPC refuses a request message over `max_request_bytes` before it is
    parsed (RESOURCE_EXHAUSTED)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=MAX_WORKERS),
                         interceptors=list(interceptors),
                         options=[("grpc.max_receive_message_length", max_request_bytes)])
    for hosted in services:
        hosted.add(hosted.servicer, server)
    checker = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    names = [hosted.name for hosted in services]
    for name in ("", *names):
        checker.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    port = server.add_secure_port(listen, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    server.start()
    return server, port


def run(listen: str, credentials: grpc.ServerCredentials, services: Sequence[Hosted], *,
        banner: Callable[[int], str], on_stop: Callable[[], Any], metrics: Metrics,
        console: Console | None = None, on_serving: Callable[[], Any] = lambda: None,
        interceptors: Sequence[grpc.ServerInterceptor] = (),
        max_request_bytes: int = DEFAULT_LIMITS.request_bytes) -> None:
    """Start a server as `start` does, with `metrics` seeing every call, log its banner,
    serve its console (if any), run `on_serving` (what may warm up once calls are
    taken), and serve until SIGTERM or SIGINT (then `on_stop` releases what the servicers
    hold)."""
    server, port = start(listen, credentials, services,
                         interceptors=[metrics.interceptor(), *interceptors],
                         max_request_bytes=max_request_bytes)
    log.info(banner(port), extra={"port": port})
    if console is not None:
        console.start()
        log.info(f"console and metrics on https port {console.port}",
                 extra={"console_port": console.port})
    on_serving()
    serve_until_stopped(server, lambda: _stop(console, on_stop))


def _stop(console: Console | None, on_stop: Callable[[], Any]) -> None:
    """Close the console's port, then release what the servicers hold."""
    if console is not None:
        console.close()
    on_stop()


def serve_until_stopped(server: grpc.Server, on_stop: Callable[[], Any] = lambda: None,
                        *, grace_s: float = 5.0) -> None:
    """Block until SIGTERM or SIGINT, then stop taking calls, let running ones finish
    within the grace period, and run `on_stop`."""
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
    server.stop(grace_s).wait()
    on_stop()
