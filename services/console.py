"""A server's HTTPS port for people and monitoring: Prometheus metrics (`/metrics`) and,
at a site, a read-only console for its data-protection officer (`/`).

The console shows what the site's own files say: the privacy budget of every dataset,
the audit log with its hash chain verified, the refusals, and who asked what and when.
It changes nothing. The page is static; its data (`/api/overview`) and the metrics are
served only to a bearer token whose SHA-256 the site's configuration lists (`officers`),
over the site's own TLS certificate.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import socket
import ssl
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from services.config import Tls

log = logging.getLogger("pet.services.console")

STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/console.js": ("console.js", "text/javascript; charset=utf-8"),
          "/console.css": ("console.css", "text/css; charset=utf-8")}
"""The page's files (in `services/console/`), by path."""

HEADERS = {"Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-store"}
"""Sent with every answer: the page runs only its own script and is never framed."""


@dataclass(frozen=True)
class Endpoints:
    """What the port serves: the metrics in Prometheus' text format, and at a site the
    console's data (None at the coordinator, which has no console page)."""

    metrics: Callable[[], bytes]
    overview: Callable[[], dict[str, Any]] | None = None


class Console:
    """The HTTPS server of one pet server, in a thread of its own."""

    def __init__(self, listen: str, tls: Tls, officers: dict[str, str],
                 endpoints: Endpoints) -> None:
        host, _, port = listen.rpartition(":")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(tls.cert, tls.key)
        self._server = _TlsServer((host.strip("[]"), int(port)),
                                  _handler(officers, endpoints), context)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="pet-console")

    def start(self) -> Console:
        """Serve in the background."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and close the port (connections still open end on their own
        timeouts: the accepting thread never waits on a client)."""
        self._server.shutdown()
        self._server.server_close()


TIMEOUT_S = 10.0
"""The longest a client may take over its TLS handshake, or be silent within a request."""

CONNECTION_S = 30.0
"""The longest one connection may last, handshake and request included."""

MAX_CONNECTIONS = 32
"""Connections served at once; a client past them is disconnected at once."""


class _TlsServer(ThreadingHTTPServer):
    """An HTTP server whose connections start TLS in their own thread, under a timeout, so
    that no client (one that never finishes its handshake, say) can hold up the accepting
    thread, the others, or the server's shutdown; at most MAX_CONNECTIONS at a time."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 context: ssl.SSLContext) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, handler)
        self._context = context
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started, so none will give the slot back
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        """TLS, then the request, within CONNECTION_S in all: a client that drips a byte
        at a time is cut off then (each byte would reset a per-read timeout)."""
        request.settimeout(TIMEOUT_S)
        guard = request.dup()  # the same connection, kept to cut it from the timer's thread
        deadline = threading.Timer(CONNECTION_S, _cut, (guard,))
        deadline.daemon = True
        deadline.start()
        try:
            secure = self._context.wrap_socket(request, server_side=True)
            try:
                super().finish_request(secure, client_address)
            finally:
                secure.close()
        finally:
            deadline.cancel()
            guard.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that broke its connection (a failed handshake, a timeout) is logged
        as one JSON line; the server goes on."""
        log.info("console connection failed", extra={"error": repr(sys.exc_info()[1])[:200]})


def _handler(officers: dict[str, str],
             endpoints: Endpoints) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to the officers' token digests and the endpoints."""
    digests = list(officers.values())

    class Handler(BaseHTTPRequestHandler):
        server_version = "pet"
        sys_version = ""
        timeout = TIMEOUT_S

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path in STATIC and endpoints.overview is not None:
                name, kind = STATIC[path]
                self._send(HTTPStatus.OK, kind, _static(name))
            elif path in {"/metrics", "/api/overview"}:
                self._authorized(path)
            else:
                self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n")

        def _authorized(self, path: str) -> None:
            """The metrics or the overview, for an officer's bearer token only."""
            if not _known(self.headers.get("Authorization", ""), digests):
                self._send(HTTPStatus.UNAUTHORIZED, "text/plain",
                           b"an officer's bearer token is needed\n",
                           {"WWW-Authenticate": 'Bearer realm="pet"'})
            elif path == "/metrics":
                self._send(HTTPStatus.OK, "text/plain; version=0.0.4", endpoints.metrics())
            elif endpoints.overview is None:
                self._send(HTTPStatus.NOT_FOUND, "text/plain", b"no console here\n")
            else:
                try:
                    body = json.dumps(endpoints.overview(), allow_nan=False).encode()
                except Exception as error:  # a file the site cannot read: say so, go on
                    log.exception("console overview failed", exc_info=error)
                    self._send(HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain",
                               b"the site could not read its ledger or audit log; see its "
                               b"log\n")
                    return
                self._send(HTTPStatus.OK, "application/json", body)

        def _send(self, status: HTTPStatus, kind: str, body: bytes,
                  extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in {**HEADERS, "Content-Type": kind,
                                "Content-Length": str(len(body)), **(extra or {})}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.info("console", extra={"path": self.path.split("?", 1)[0][:200],
                                       "status": args[1] if len(args) > 1 else None})

    return Handler


def _cut(connection: socket.socket) -> None:
    """End a connection past its deadline (a read blocked on it returns at once)."""
    with contextlib.suppress(OSError):  # it may have ended meanwhile
        connection.shutdown(socket.SHUT_RDWR)


def _known(header: str, digests: list[str]) -> bool:
    """Whether an Authorization header carries the bearer token of a listed officer
    (compared as SHA-256 digests, in constant time)."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    digest = hashlib.sha256(token.strip().encode()).hexdigest()
    return any(hmac.compare_digest(digest, known) for known in digests)


def _static(name: str) -> bytes:
    """One of the page's files."""
    return (resources.files("services") / "console" / name).read_bytes()
