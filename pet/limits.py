"""Public limits on what one request may ask of a server, checked before any work is done.

A request's cost follows from public facts alone: the elements of each round's vector
(its layout), the columns it reads, the length and nesting of its filter, its rounds
and its size on the wire. A server compares them with its configured `RequestLimits`
before it parses a filter, allocates a vector or touches a row, so no single request can
exhaust it. A refusal is a `LimitError` that names the limit, its configured value and
what was asked:

- cells, columns, rounds and request bytes are sizes: the request is well formed but
  larger than this server serves (RESOURCE_EXHAUSTED, as gRPC itself answers a message
  over its size limit);
- a filter's length and nesting are `FilterLimitError`s, also `QueryError`s: no
  sensible filter needs them, so the text is refused as malformed (INVALID_ARGUMENT).
"""

from __future__ import annotations

import io
import keyword
import tokenize
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from pet.errors import ArgumentError, PetError, QueryError

if TYPE_CHECKING:
    from pet.queries.base import Query, State
    from pet.schema import Schema

RANGES: dict[str, tuple[int, int]] = {
    "cells": (1, 10**8),
    "blocks": (3, 1_000_000),
    "columns": (1, 10_000),
    "filter_chars": (1, 100_000),
    "filter_depth": (1, 100),
    "rounds": (1, 10_000),
    "request_bytes": (1, 2**31 - 1),
}
"""The values each limit may be configured to. The ceilings keep a configuration typo
from opening a server to the requests the limits exist to refuse: a filter nested 100
deep stays far inside Python's recursion limit, and gRPC lengths are 32-bit."""


@dataclass(frozen=True)
class RequestLimits:
    """The most one request may ask of a server; every field a whole number in `RANGES`."""

    cells: int = 2**20
    """Elements of one round's vector (8 MiB of float64 per site), layout head included."""
    blocks: int = 4096
    """Blocks of one round's layout: under DP each is a release of its own (a
    synthesizer's marginals of 64 columns take 2 016 pairs)."""
    columns: int = 64
    """Columns a query reads, its filter's included."""
    filter_chars: int = 4096
    """Characters of a filter's text."""
    filter_depth: int = 32
    """Nesting of a filter's text (see `nesting`)."""
    rounds: int = 100
    """Rounds an iterative query may take (each is a release under DP)."""
    request_bytes: int = 4 * 2**20
    """Bytes of one request message (gRPC's default receive limit)."""

    def __post_init__(self) -> None:
        for name, (low, high) in RANGES.items():
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool)
                    and low <= value <= high):
                raise ArgumentError(f"limits.{name} must be a whole number in "
                                    f"[{low}, {high}], got {value!r}")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None) -> RequestLimits:
        """Limits from a configuration's `limits:` section (None or empty: the defaults);
        an unknown key is refused rather than silently ignored."""
        if mapping is None:
            return cls()
        if not isinstance(mapping, Mapping):
            raise ArgumentError(f"limits must be a mapping of limit names to whole numbers, "
                                f"got {type(mapping).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(str(key) for key in mapping if key not in known)
        if unknown:
            raise ArgumentError(f"unknown limits {unknown}; the limits are {known}")
        return cls(**mapping)


DEFAULT_LIMITS = RequestLimits()
"""The limits of a server whose configuration sets none."""


class LimitError(PetError):
    """A request larger than a server's limit: `limit` names it, `allowed` is its value
    and `asked` what the request needed (RESOURCE_EXHAUSTED)."""

    def __init__(self, subject: str, limit: str, allowed: int, asked: int) -> None:
        super().__init__(f"{subject}: {asked} {_UNITS[limit]}, more than this server's "
                         f"limit {limit}={allowed}")
        self.limit = limit
        self.allowed = allowed
        self.asked = asked


class FilterLimitError(LimitError, QueryError):
    """A filter too long or too deeply nested: malformed input (INVALID_ARGUMENT)."""


_UNITS = {
    "cells": "elements per round (its layout's vector)",
    "blocks": "blocks per round (each a DP release of its own)",
    "columns": "columns",
    "filter_chars": "characters",
    "filter_depth": "levels of nesting",
    "rounds": "rounds",
    "request_bytes": "bytes",
}


def check_where_text(text: str, limits: RequestLimits = DEFAULT_LIMITS) -> None:
    """Refuse a filter's text that is longer or nests deeper than the limits allow; run
    before the text is parsed, and never echoes it."""
    if len(text) > limits.filter_chars:
        raise FilterLimitError("the filter", "filter_chars", limits.filter_chars, len(text))
    depth = nesting(text)
    if depth > limits.filter_depth:
        raise FilterLimitError("the filter", "filter_depth", limits.filter_depth, depth)


def nesting(text: str) -> int:
    """How deeply a filter's text nests, read off its tokens without parsing it: the most,
    at any point, of brackets open plus prefix operators (`not`, unary `-` `+` `~`) still
    in force (`and`, `or` and `,` end those of their bracket). The tree a parser builds
    is at most a few levels per unit deeper, so bounding this bounds every recursion over
    it. Text that does not tokenize is measured up to the fault; parsing reports it."""
    prefixes, total, deepest = [0], 0, 0
    previous: tokenize.TokenInfo | None = None
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT):
                continue
            word = token.string
            if word in ("(", "[", "{"):
                prefixes.append(0)
                total += 1
            elif word in (")", "]", "}") and len(prefixes) > 1:
                total -= 1 + prefixes.pop()
            elif word in ("and", "or", ","):
                total -= prefixes[-1]
                prefixes[-1] = 0
            elif word in ("not", "-", "+", "~") and not _ends_operand(previous):
                prefixes[-1] += 1
                total += 1
            deepest = max(deepest, total)
            previous = token
    except (tokenize.TokenError, SyntaxError):
        pass
    return deepest


def _ends_operand(token: tokenize.TokenInfo | None) -> bool:
    """Whether a token closes an operand, so that a following `-` or `not` is binary
    (`a - 1`, `a not in [...]`) rather than a prefix."""
    if token is None:
        return False
    if token.type == tokenize.NAME:
        return not keyword.iskeyword(token.string) or token.string in ("True", "False", "None")
    return token.type in (tokenize.NUMBER, tokenize.STRING) or token.string in (")", "]", "}")


def check_request_bytes(size: int, limits: RequestLimits = DEFAULT_LIMITS) -> None:
    """Refuse a request message of more bytes than the limit (servers also hand the limit
    to gRPC as its receive limit, which refuses before parsing)."""
    if size > limits.request_bytes:
        raise LimitError("the request", "request_bytes", limits.request_bytes, size)


def check_query(query: Query, schema: Schema, limits: RequestLimits = DEFAULT_LIMITS) -> None:
    """Everything a server checks of a query before any work: its filter's text, the
    columns it reads, its options against the schema, and the size of its first round and
    its rounds. Nothing here allocates in proportion to the layout (sizes come from the
    blocks' counts), so a query of 2^40 cells is refused as cheaply as one of 2."""
    text = getattr(query.where, "text", None)
    if text is not None:
        check_where_text(text, limits)
    columns = query.used_columns()
    if len(columns) > limits.columns:
        raise LimitError(query.describe(), "columns", limits.columns, len(columns))
    query.validate(schema)
    if query.max_rounds > limits.rounds:
        raise LimitError(query.describe(), "rounds", limits.rounds, query.max_rounds)
    check_round(query, schema, query.initial_state(schema), limits)


def check_round(query: Query, schema: Schema, state: State,
                limits: RequestLimits = DEFAULT_LIMITS) -> None:
    """Refuse a round's state that the query could not be in (a peer's None, a wrong type
    or shape: QueryError), or a round whose vector is larger than the cells limit."""
    layout = query.layout(schema, state)  # the layout checks the state first
    if layout.size > limits.cells:
        raise LimitError(query.describe(), "cells", limits.cells, layout.size)
    if len(layout.blocks) > limits.blocks:
        raise LimitError(query.describe(), "blocks", limits.blocks, len(layout.blocks))
