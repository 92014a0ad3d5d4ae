"""A site (data holder): its table and disclosure policy; it computes and protects partials.

The site is the only place rows are read. It answers a query round with the message its
backend makes of its partial vector, after checking the partial against its own
disclosure policy, so nothing leaves a site that its policy forbids.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from pet.backends.base import Backend
from pet.disclosure import DisclosurePolicy
from pet.queries.base import Query, State
from pet.schema import Schema
from pet.table import Table


@dataclass(frozen=True)
class Contribution:
    """What one site sends for one round, and what it cost the site to make it."""

    site: str
    message: bytes
    local_s: float
    protect_s: float


class Site:
    """A data holder with one table, validated against the study's public schema."""

    def __init__(self, name: str, table: Table, *,
                 policy: DisclosurePolicy | None = None) -> None:
        self.name = name
        self.table = table
        self.policy = policy or DisclosurePolicy()

    @property
    def schema(self) -> Schema:
        """The public schema the site's table follows."""
        return self.table.schema

    def partial(self, query: Query, state: State = None) -> np.ndarray:
        """The site's plaintext partial vector for one round, checked for disclosure."""
        layout = query.layout(self.schema, state)
        partial = query.local(self.table.chunks(query.used_columns()), self.schema, state)
        self.policy.check(partial, layout, site=self.name)
        return partial

    def contribute(self, query: Query, state: State, backend: Backend) -> Contribution:
        """The message this site sends for one round under `backend`."""
        start = time.perf_counter()
        partial = self.partial(query, state)
        computed = time.perf_counter()
        message = backend.protect(partial, query.layout(self.schema, state))
        return Contribution(self.name, message, computed - start,
                            time.perf_counter() - computed)

    def __repr__(self) -> str:
        return f"Site({self.name!r}, rows={self.table.n_rows})"
