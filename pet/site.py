"""A site (data holder): its table and disclosure policy; it computes and protects partials.

The site is the only place rows are read. It answers a query round with the message its
backend makes of its partial vector, after checking the partial against its own
disclosure policy, so nothing leaves a site that its policy forbids.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import numpy as np

from pet.backends.base import Backend
from pet.disclosure import DisclosurePolicy
from pet.errors import PetError
from pet.ledger import Ledger
from pet.mechanisms import rho_of
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

    def __init__(self, name: str, table: Table, *, policy: DisclosurePolicy | None = None,
                 ledger: Ledger | None = None, dataset: str | None = None) -> None:
        self.name = name
        self.table = table
        self.policy = policy or DisclosurePolicy()
        self.ledger = ledger
        self.dataset = dataset or name

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

    def contribute(self, query: Query, state: State, backend: Backend, *,
                   request: str | None = None) -> Contribution:
        """The message this site sends for one round under `backend`. Under a DP backend
        the release is charged to the site's ledger first (see `charge`)."""
        if query.requires_dp and not backend.differentially_private:
            raise PetError(f"{query.describe()} may only be released under a DP backend "
                           f"(dp, he+dp, mpc+dp), not {backend.name}")
        start = time.perf_counter()
        partial = self.partial(query, state)
        if backend.differentially_private:
            self.charge(query, backend, request or uuid.uuid4().hex)
        computed = time.perf_counter()
        message = backend.protect(partial, query.layout(self.schema, state))
        return Contribution(self.name, message, computed - start,
                            time.perf_counter() - computed)

    def charge(self, query: Query, backend: Backend, request: str) -> None:
        """Charge the query's whole cost — every round it may take, up front — to this
        site's ledger, before anything leaves; a later round of the same request is not
        charged again, and a refusal stops the query before any release."""
        if query.releases_records:
            raise PetError(f"{query.describe()} releases a record's own value, which no DP "
                           "mechanism covers; ask for grid Quantiles under DP")
        if self.ledger is None:
            raise PetError(f"site {self.name!r} keeps no privacy ledger; DP releases need "
                           "one (Site(..., ledger=Ledger(path)))")
        epsilon, delta = backend.cost()
        rounds = query.max_rounds
        rho = getattr(backend, "rho", None)
        if rho is None:
            self.ledger.charge(self.dataset, epsilon * rounds, min(delta * rounds, 1.0),
                               query=query.describe(), request=request)
            return
        # One of many Gaussian releases of a request charged its whole (ε, δ) once: each
        # spends ρ from what that charge affords (zCDP composition).
        self.ledger.charge(self.dataset, epsilon, delta, query=f"zCDP budget of {request}",
                           request=request)
        self.ledger.spend(self.dataset, request, rho * rounds, allowed=rho_of(epsilon, delta),
                          query=query.describe())

    def __repr__(self) -> str:
        return f"Site({self.name!r}, rows={self.table.n_rows})"
