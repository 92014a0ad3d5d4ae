"""The errors pet raises: each names what was wrong and where, so a user can fix it."""

from __future__ import annotations


class PetError(Exception):
    """Base class of every error pet raises on purpose."""


class ArgumentError(PetError, ValueError):
    """An option outside its allowed range (ε, δ, session limits)."""


class SchemaError(PetError, ValueError):
    """A schema is malformed, or a table does not match its schema.

    `column` and `row` (0-based data row, counted over the whole table) locate the
    problem when it lies in the data; `limit` is the schema's bound that was broken.
    """

    def __init__(
        self,
        message: str,
        *,
        column: str | None = None,
        row: int | None = None,
        limit: object = None,
    ) -> None:
        where = []
        if column is not None:
            where.append(f"column {column!r}")
        if row is not None:
            where.append(f"row {row}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.column = column
        self.row = row
        self.limit = limit


class QueryError(PetError, ValueError):
    """A query does not fit the schema (unknown column, wrong type, bad option)."""


class DisclosureError(PetError):
    """A site refused to contribute because its answer would disclose too little data.

    Raised by output disclosure control (DataSHIELD-style) for non-DP answers.
    """

    def __init__(self, message: str, *, site: str | None = None, limit: float | None = None):
        super().__init__(f"site {site!r} refused: {message}" if site else message)
        self.site = site
        self.limit = limit


class PartyError(PetError):
    """An MPC party failed, stalled or died; the session was torn down (`pet.mpc.parties`;
    here, so that what reports it need not load the parties)."""


class SourceError(PetError):
    """A source that cannot be read: no such table, a query that is not one SELECT, an
    engine that refuses the connection (`pet.sources`; here, so that what reports it
    need not load the engines)."""
