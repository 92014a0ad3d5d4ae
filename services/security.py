"""Who may call whom: TLS with client certificates between the coordinator and the sites,
bearer tokens for analysts at the coordinator.

A site answers only the peer whose certificate (signed by the federation's CA) names the
coordinator; health checks and reflection are open to any certified peer. The coordinator
serves analysts over TLS and knows them by a bearer token, which it compares as a SHA-256
digest (the configuration never holds a token itself).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from services.status import CallError

if TYPE_CHECKING:
    from services.config import Tls

OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
"""Methods every authenticated peer may call (health checks, reflection)."""

CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
)
"""A restarted peer is reached again within a second; pieces of streamed payloads stay
far below the receive limit."""


def server_credentials(tls: Tls, *, require_client_certificate: bool) -> grpc.ServerCredentials:
    """This server's TLS credentials; sites require a client certificate from the CA."""
    cert, key, ca = tls.read()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                       require_client_auth=require_client_certificate)


def peer_channel(address: str, tls: Tls) -> grpc.Channel:
    """A mutual-TLS channel to a peer server, presenting this server's certificate."""
    cert, key, ca = tls.read()
    credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                               certificate_chain=cert)
    return grpc.secure_channel(address, credentials, options=CHANNEL_OPTIONS)


def analyst_channel(address: str, ca: bytes, token: str) -> grpc.Channel:
    """An analyst's channel to the coordinator: TLS, with the bearer token on every call."""
    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=ca),
        grpc.access_token_call_credentials(token))
    return grpc.secure_channel(address, credentials, options=CHANNEL_OPTIONS)


def peer_name(context: grpc.ServicerContext) -> str | None:
    """The common name of the calling peer's certificate, if it presented one."""
    names = context.auth_context().get("x509_common_name") or []
    return names[0].decode() if names else None


def require_peer(context: grpc.ServicerContext, allowed: str) -> None:
    """Refuse (PERMISSION_DENIED) unless the peer's certificate names `allowed`."""
    name = peer_name(context)
    if name != allowed:
        raise CallError(grpc.StatusCode.PERMISSION_DENIED,
                        f"only {allowed!r} may call this site; the caller's certificate "
                        f"names {name!r}")


def bearer_token(metadata: Any) -> str | None:
    """The bearer token of a call's metadata, if any."""
    for key, value in metadata or ():
        if key == "authorization" and value.startswith("Bearer "):
            return value[len("Bearer "):]
    return None


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses, with UNAUTHENTICATED, every call but health and reflection that carries no
    bearer token of a known analyst."""

    def __init__(self, analyst: Callable[[str], str | None]) -> None:
        self._analyst = analyst

    def intercept_service(self, continuation: Callable[[Any], Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method
        if method.startswith(OPEN_SERVICES):
            return continuation(handler_call_details)
        token = bearer_token(handler_call_details.invocation_metadata)
        if token is not None and self._analyst(token) is not None:
            return continuation(handler_call_details)
        reason = "no bearer token" if token is None else "an unknown bearer token"
        return _refusal(grpc.StatusCode.UNAUTHENTICATED,
                        f"the call carries {reason}; analysts authenticate with "
                        "'authorization: Bearer TOKEN'", handler_call_details, continuation)


def _refusal(code: grpc.StatusCode, message: str, details: grpc.HandlerCallDetails,
             continuation: Callable[[Any], Any]) -> grpc.RpcMethodHandler:
    """A handler of the method's own shape that ends the call with `code`."""
    handler = continuation(details)

    def abort(request: Any, context: grpc.ServicerContext) -> None:
        context.abort(code, message)

    if handler is None:
        return None
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)
