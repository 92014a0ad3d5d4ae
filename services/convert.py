"""Protobuf messages ↔ pet values, in one place: queries, backend sessions, results.

Everything a peer sends is checked here or by the pet constructors it feeds: a malformed
message becomes a `QueryError` (INVALID_ARGUMENT) that names the field, never a crash.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from pet import codec
from pet.backends import BACKENDS
from pet.backends.base import Privacy
from pet.errors import PetError, QueryError
from pet.intervals import Interval
from pet.limits import DEFAULT_LIMITS, RequestLimits
from pet.queries import QUERIES
from pet.queries.base import Query
from pet.result import Result, SiteReport, answer_vector
from pet.schema import Schema
from pet.where import Where
from services.pb import common_pb2 as pb

ANALYST_KEYS = ("he", "he+dp")
"""Backends whose keys the analyst makes and whose aggregates only the analyst reveals,
each round on `Run`'s two-way stream."""


def query_message(query: Query) -> pb.Query:
    """The wire form of a query: its class name and its non-default arguments."""
    message = pb.Query(kind=type(query).__name__, where=getattr(query.where, "text", "") or "")
    for field in dataclasses.fields(query):
        value = getattr(query, field.name)
        if field.name != "where" and value != _default(field):
            message.arguments[field.name].CopyFrom(_value_message(value, field.name))
    return message


def query_of(message: pb.Query, limits: RequestLimits = DEFAULT_LIMITS) -> Query:
    """The query a message asks for, its filter read within `limits` (the server's); a
    QueryError names what is wrong with it."""
    cls = QUERIES.get(message.kind)
    if cls is None:
        raise QueryError(f"unknown query kind {message.kind!r}; choose one of {sorted(QUERIES)}")
    where = Where(message.where, limits=limits) if message.where else None
    arguments = {name: _value_of(value, name) for name, value in message.arguments.items()}
    try:
        return cls(**arguments, where=where)
    except (TypeError, ValueError) as exc:
        raise QueryError(f"{message.kind}: {exc}") from None


def backend_message(name: str, options: Mapping[str, Any]) -> pb.Backend:
    """The public description of a backend session."""
    message = pb.Backend(name=name, max_rows_per_site=int(options.get("max_rows_per_site", 0)),
                         max_sites=int(options.get("max_sites", 0)),
                         public_context=options.get("public_context") or b"")
    for field in ("epsilon", "delta", "rho"):
        if options.get(field) is not None:
            setattr(message, field, float(options[field]))
    return message


SESSION_RANGES = {"max_rows_per_site": (1, 10**10), "max_sites": (1, 10**4)}
"""The session limits a request may set: generous (DESIGN's scale is 100 sites of 10^8
rows) but finite; within them HE and MPC still refuse, by name, sizes that would leave
their moduli or fixed-point scales too little precision."""
WIRE_OPTIONS = frozenset({"epsilon", "delta", "rho", "public_context", *SESSION_RANGES})
"""The backend options a Backend message can set."""


def backend_options(message: pb.Backend) -> dict[str, Any]:
    """The keyword options that build the described backend (the analyst's public context
    included, never a secret); unset fields keep the backend's defaults. An option the
    backend does not take, or a session limit outside SESSION_RANGES, is a QueryError."""
    cls = BACKENDS.get(message.name)
    if cls is None:
        raise QueryError(f"unknown backend {message.name!r}; choose one of {sorted(BACKENDS)}")
    options: dict[str, Any] = {}
    if cls.differentially_private:
        options.update({field: getattr(message, field) for field in ("epsilon", "delta", "rho")
                        if message.HasField(field)})
    for field, (low, high) in SESSION_RANGES.items():
        value = getattr(message, field)
        if not value:  # unset: the backend's default
            continue
        if not low <= value <= high:
            raise QueryError(f"backend {field} must lie in [{low}, {high}], got {value}")
        options[field] = value
    taken = backend_keywords(cls)
    if "public_context" in taken:
        if not message.public_context:
            raise QueryError(f"{message.name} needs the analyst's public context")
        options["public_context"] = message.public_context
    stray = sorted(set(options) - taken)
    if stray:
        raise QueryError(f"backend {message.name!r} takes no option {', '.join(stray)}; it "
                         f"takes {sorted(taken & WIRE_OPTIONS) or 'none'}")
    return options


@functools.cache
def backend_keywords(cls: type) -> frozenset[str]:
    """The keyword options a backend class's constructor takes; a backend that passes
    `**options` on to an `inner` backend takes that one's too (read once a class: a
    signature costs a fifth of a millisecond, every call)."""
    parameters = inspect.signature(cls).parameters.values()
    names = {p.name for p in parameters
             if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)}
    inner = getattr(cls, "inner", None)
    if inner is not None and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        names |= backend_keywords(inner)
    return frozenset(names)


def schema_json(schema: Schema) -> str:
    """The public schema as JSON (its file form)."""
    return json.dumps(schema.to_dict())


def schema_of(text: str) -> Schema:
    """A schema from its JSON form."""
    try:
        return Schema.from_dict(json.loads(text))
    except (ValueError, RecursionError) as exc:
        raise PetError(f"not a schema: {exc}") from None


def guarantee_message(privacy: Privacy) -> pb.Guarantee:
    """What a result guarantees, on the wire."""
    message = pb.Guarantee(confidentiality=privacy.confidentiality)
    for name in ("rho", "epsilon", "delta"):
        if getattr(privacy, name) is not None:
            setattr(message, name, getattr(privacy, name))
    return message


def privacy_of(message: pb.Guarantee) -> Privacy:
    """A guarantee as pet's Privacy."""
    return Privacy(message.confidentiality,
                   *(getattr(message, n) if message.HasField(n) else None
                     for n in ("rho", "epsilon", "delta")))


def interval_message(interval: Interval | None) -> pb.Interval | None:
    """A DP answer's interval on the wire (None: the answer has none)."""
    if interval is None:
        return None
    low, high = interval
    return pb.Interval(low=np.ravel(low).tolist(), high=np.ravel(high).tolist())


def interval_of(message: Any, field: str = "interval") -> Interval | None:
    """The interval a message carries, if any."""
    if not message.HasField(field):
        return None
    interval = getattr(message, field)
    return np.asarray(interval.low, dtype=np.float64), np.asarray(interval.high,
                                                                  dtype=np.float64)


def result_message(result: Result) -> pb.Result:
    """A result with its cost and guarantee, the answer in pet's JSON encoding."""
    return pb.Result(
        query=result.query, backend=result.backend, value_json=codec.dumps(result.value),
        n=result.n, missing=result.missing, error_bound=result.error_bound,
        error_bounds=result.error_bounds,
        guarantee=guarantee_message(result.privacy), interval=interval_message(result.interval),
        clipped=result.clipped,
        cost=pb.Cost(latency_s=result.latency_s, rounds=result.rounds,
                     comm_rounds=result.comm_rounds, combine_s=result.combine_s,
                     reveal_s=result.reveal_s,
                     sites=[pb.SiteCost(site=s.name, local_s=s.local_s, protect_s=s.protect_s,
                                        bytes_sent=s.bytes_sent) for s in result.sites]))


def result_of(message: pb.Result) -> Result:
    """A result from its wire form."""
    cost = message.cost
    value = codec.loads(message.value_json)
    return Result(
        query=message.query, value=value, backend=message.backend,
        n=message.n, missing=dict(message.missing), error_bounds=_error_bounds(message, value),
        privacy=privacy_of(message.guarantee), rounds=cost.rounds, latency_s=cost.latency_s,
        sites=tuple(SiteReport(s.site, s.local_s, s.protect_s, s.bytes_sent)
                    for s in cost.sites),
        combine_s=cost.combine_s, reveal_s=cost.reveal_s, comm_rounds=cost.comm_rounds,
        interval=interval_of(message), clipped=dict(message.clipped))


def _error_bounds(message: pb.Result, value: Any) -> np.ndarray:
    """Each number's bound, or, from a server that sends only the largest, that one for
    every number (never 0 for an inexact answer)."""
    if message.error_bounds or not message.error_bound:
        return np.asarray(message.error_bounds, dtype=np.float64)
    return np.full(answer_vector(value).size, message.error_bound)


def _default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _value_message(value: Any, name: str) -> pb.Value:
    if isinstance(value, bool):
        return pb.Value(flag=value)
    if isinstance(value, str):
        return pb.Value(text=value)
    if isinstance(value, int | np.integer):
        return pb.Value(integer=int(value))
    if isinstance(value, float | np.floating):
        return pb.Value(number=float(value))
    if isinstance(value, Mapping):
        table = pb.Table()
        for key, numbers in value.items():
            table.entries[str(key)].items.extend(float(v) for v in numbers)
        return pb.Value(table=table)
    items = list(value)
    if all(isinstance(v, str) for v in items):
        return pb.Value(texts=pb.Texts(items=items))
    if items and all(isinstance(v, tuple | list) for v in items):
        return pb.Value(groups=pb.Groups(items=[pb.Texts(items=list(v)) for v in items]))
    return pb.Value(numbers=pb.Numbers(items=[float(v) for v in items]))


def _value_of(value: pb.Value, name: str) -> Any:
    kind = value.WhichOneof("kind")
    if kind is None:
        raise QueryError(f"argument {name!r} has no value")
    if kind == "texts":
        return tuple(value.texts.items)
    if kind == "groups":
        return tuple(tuple(group.items) for group in value.groups.items)
    if kind == "numbers":
        return tuple(_finite(v, name) for v in value.numbers.items)
    if kind == "table":
        return {key: tuple(_finite(v, name) for v in numbers.items)
                for key, numbers in value.table.entries.items()}
    if kind == "number":
        return _finite(value.number, name)
    return getattr(value, kind)


def _finite(number: float, name: str) -> float:
    if not math.isfinite(number):
        raise QueryError(f"argument {name!r} holds {number}; only finite numbers are allowed")
    return number
