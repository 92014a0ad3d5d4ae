"""gRPC status codes that mean what they say, for every error pet raises on purpose.

Servicers never let an exception escape as UNKNOWN: `handled` turns pet's errors into
their status code and anything unexpected into INTERNAL, so one bad request never takes
a server down and the caller always learns which site, column or limit was at fault.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from pet.codec import CodecError
from pet.errors import (
    DisclosureError,
    PartyError,
    PetError,
    QueryError,
    SchemaError,
    SourceError,
)
from pet.ledger import BudgetError
from pet.limits import FilterLimitError, LimitError
from pet.releases import KeyReuse, ReleaseError

log = logging.getLogger("pet.services")


class CallError(PetError):
    """An error with its status code: raised where the code is known (a peer's reply, an
    authentication or permission check), and passed on as it is."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


MAX_MESSAGE = 300
"""Characters of an error message a caller is told: the start of a longer one is kept, so
that no echo of a large request can exceed a client's metadata limit."""

CODES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (BudgetError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (FilterLimitError, grpc.StatusCode.INVALID_ARGUMENT),
    (LimitError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DisclosureError, grpc.StatusCode.FAILED_PRECONDITION),
    (ReleaseError, grpc.StatusCode.ALREADY_EXISTS),
    (KeyReuse, grpc.StatusCode.PERMISSION_DENIED),
    (PartyError, grpc.StatusCode.UNAVAILABLE),
    (SourceError, grpc.StatusCode.UNAVAILABLE),
    (QueryError, grpc.StatusCode.INVALID_ARGUMENT),
    (SchemaError, grpc.StatusCode.INVALID_ARGUMENT),
    (CodecError, grpc.StatusCode.INVALID_ARGUMENT),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
    (PetError, grpc.StatusCode.FAILED_PRECONDITION),
)
"""Most specific first: an exhausted budget, a filter beyond its limits (malformed), a
request beyond a size limit, a disclosure refusal, a request id already used for another
release, an MPC party gone or a site's database unreachable, a malformed query or
option (pet's ValueErrors); any other refusal means the request cannot run in this state.
RecursionError and MemoryError stay INTERNAL: parsing a request turns them into its own
errors, so elsewhere they are bugs."""


def code_of(error: Exception) -> grpc.StatusCode:
    """The status code of an error pet raised (INTERNAL for anything unexpected)."""
    if isinstance(error, CallError):
        return error.code
    return next((code for kind, code in CODES if isinstance(error, kind)),
                grpc.StatusCode.INTERNAL)


def message_of(error: Exception) -> str:
    """What the caller is told: pet's own message, or a generic one for a bug (logged);
    clipped to MAX_MESSAGE characters."""
    if isinstance(error, PetError):
        return clipped(str(error))
    log.exception("unexpected error", exc_info=error)
    return f"internal error ({type(error).__name__}); the server logged it and goes on serving"


def clipped(message: str) -> str:
    """The message, or its first MAX_MESSAGE characters with an ellipsis and its length."""
    if len(message) <= MAX_MESSAGE:
        return message
    return f"{message[:MAX_MESSAGE]}… ({len(message)} characters)"


F = TypeVar("F", bound=Callable[..., Any])


def handled(method: F) -> F:
    """Wrap a unary servicer method: pet's errors end the call with their status code."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as error:  # every failure becomes a status, never a dead server
            context.abort(code_of(error), message_of(error))

    return wrapper  # type: ignore[return-value]


def handled_stream(method: F) -> F:
    """Wrap a streaming servicer method in the same way as `handled`."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from method(self, request, context)
        except Exception as error:  # every failure becomes a status, never a dead server
            context.abort(code_of(error), message_of(error))

    return wrapper  # type: ignore[return-value]


def from_rpc(error: grpc.RpcError, peer: str) -> CallError:
    """A peer's failed reply as a CallError naming the peer (unless its message does); an
    unreachable or slow peer is UNAVAILABLE."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.CANCELLED):
        return CallError(grpc.StatusCode.UNAVAILABLE,
                         f"{peer} is unavailable ({code.name.lower()}: {details})")
    if code == grpc.StatusCode.UNIMPLEMENTED:  # the caller's own method is implemented
        return CallError(grpc.StatusCode.FAILED_PRECONDITION,
                         f"{peer} lacks a method this server calls ({details}); its pet "
                         "version differs from this server's")
    return CallError(code, details if peer in details else f"{peer}: {details}")
