"""A site (data holder): its table and disclosure policy; it computes and protects partials.

The site is the only place rows are read. It answers a query round with the message its
backend makes of its partial vector. Under exact backends it first checks the request
and the partial against its own disclosure policy and subset control, so nothing leaves
that its policy forbids. Under DP backends the noise protects the rows and nothing is
refused on their say (unless the site's policy sets `min_cell_under_dp`); a DP release
is bound to what was asked, charged, stored and audited in one transaction before it
leaves (`pet.releases`): a retry gets the stored release, never a new draw.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from dataclasses import dataclass

import numpy as np

from pet.audit import AuditLog
from pet.backends.base import Backend
from pet.backends.he import PublicHE
from pet.disclosure import DisclosurePolicy
from pet.errors import DisclosureError, PetError
from pet.ledger import Ledger
from pet.mechanisms import query_rho, release_rho
from pet.queries.base import Query, State
from pet.releases import Ask, Payment, Release, Releases
from pet.schema import Schema
from pet.subsets import SubsetControl
from pet.table import Table


@dataclass(frozen=True)
class Contribution:
    """What one site sends for one round, and what it cost the site to make it;
    `audited` when the site's audit log already holds the entry that reports it."""

    site: str
    message: bytes
    local_s: float
    protect_s: float
    audited: bool = False


def _check_dataset(ledger: Ledger, site: str, dataset: str) -> None:
    """Refuse a ledger that keeps a budget under the site's name and none under the
    schema's: pet once charged a site's name by default, and taking the schema's now would
    start a fresh budget beside what was spent."""
    kept = {b.dataset for b in ledger.budgets()}
    if site != dataset and site in kept and dataset not in kept:
        raise PetError(f"site {site!r}: its ledger keeps a budget for dataset {site!r} (the "
                       f"site's name, which pet once charged by default) and none for "
                       f"{dataset!r}, the schema's name it charges now; to keep charging what "
                       f"was spent, name the dataset: Site(..., dataset={site!r}), or "
                       f"`dataset: {site}` in the site's configuration")


class Site:
    """A data holder with one table, validated against the study's public schema. Its
    privacy ledger charges `dataset`, by default the schema's name."""

    def __init__(self, name: str, table: Table, *, policy: DisclosurePolicy | None = None,
                 ledger: Ledger | None = None, dataset: str | None = None,
                 audit: AuditLog | None = None, subsets: SubsetControl | None = None) -> None:
        self.name = name
        self.table = table
        self.policy = policy or DisclosurePolicy()
        self.ledger = ledger
        self.dataset = dataset or table.schema.name
        if dataset is None and ledger is not None:
            _check_dataset(ledger, name, self.dataset)
        self.audit = audit
        self.releases = Releases(ledger, audit) if ledger is not None else None
        self.subsets = subsets

    @property
    def schema(self) -> Schema:
        """The public schema the site's table follows."""
        return self.table.schema

    def partial(self, query: Query, state: State = None, *,
                head_only: bool = False) -> np.ndarray:
        """The site's plaintext partial vector for one round, checked for disclosure (the
        cell rule on the head alone with `head_only`: no other sum is ever revealed)."""
        partial = self._local(query, state)
        self.policy.check(partial, query.layout(self.schema, state), site=self.name,
                          head_only=head_only)
        return partial

    def _local(self, query: Query, state: State) -> np.ndarray:
        """The partial vector, unchecked: only a DP release, whose noise protects it, may
        leave without the disclosure checks (a refusal would answer a question about the
        rows without any noise or charge)."""
        return self.table.partial(query, state, site=self.name)

    def contribute(self, query: Query, state: State, backend: Backend, *,
                   request: str | None = None, round: int = 1,
                   ask: Ask | None = None) -> Contribution:
        """The message this site sends for round `round` of a request under `backend`.
        Under a DP backend the release is charged to the site's ledger, stored and audited
        before it leaves (`ask` says who asks and in which session; by default a local
        one)."""
        if query.requires_dp and not backend.differentially_private:
            raise PetError(f"{query.describe()} may only be released under a DP backend "
                           f"(dp, he+dp, mpc+dp), not {backend.name}")
        keys = _he_keys(backend)
        if keys and self.releases is not None:
            self.releases.bind_keys(keys, backend.name)
        if backend.differentially_private:
            ask = ask or Ask(request or uuid.uuid4().hex, _session(backend), round=round)
            return self._release(query, state, backend, ask)
        self.policy.check_request(query, state, inside_mpc=backend.finalizes_inside,
                                  site=self.name)
        start = time.perf_counter()
        partial = self.partial(query, state, head_only=backend.hides_sums(query))
        self.admit_subgroup(query, ask.request if ask else request)
        computed = time.perf_counter()
        message = backend.protect(partial, query.layout(self.schema, state))
        return Contribution(self.name, message, computed - start,
                            time.perf_counter() - computed)

    def admit_subgroup(self, query: Query, request: str | None) -> None:
        """Subset control (`pet.subsets`) for an exact (non-DP) answer: refuse a subgroup
        whose answer would difference one answered before, and record it before the
        partial leaves. DP answers skip it: their noise is what protects them."""
        if self.subsets is not None:
            self.subsets.admit(self.dataset, query.where, self.table,
                               minimum=self.policy.min_cell, request=request, site=self.name)

    def charge(self, query: Query, backend: Backend, request: str,
               state: State = None) -> None:
        """Charge the query's cost to this site's ledger once per request and spend its
        round's ρ from it, as a release would (a selection made at the site itself),
        audited in the same transaction."""
        ledger = self._ledger(query)
        with ledger.transaction(attach=self.audit) as db:
            epsilon, delta, note = self._payment(query, state, backend, request)(db)
            if self.audit is not None:
                self.audit.append_in(db, analyst=Ask.analyst, request=request,
                                     query=query.describe(), backend=backend.name,
                                     epsilon=epsilon, delta=delta, outcome="answered",
                                     detail=f"selected at this site; {note.rstrip('; ')}")

    def _release(self, query: Query, state: State, backend: Backend, ask: Ask) -> Contribution:
        """A DP release: the stored one if this exact release was made before, else a new
        draw, sent only once it is charged, stored and audited together."""
        self._ledger(query)
        assert self.releases is not None
        _check_round(query, state, ask.round)
        release = Release.of(ask, self.dataset, query, state, getattr(backend, "rho", None))
        stored = self.releases.stored(release)
        if stored is not None:
            self._audit_retry(ask, query, backend, release)
            return Contribution(self.name, stored, 0.0, 0.0, audited=self.audit is not None)
        layout = query.layout(self.schema, state)
        guard = self.policy.min_cell_under_dp and any(b.cells and b.size for b in layout.blocks)
        if guard and not backend.suppresses_cells:
            raise DisclosureError(
                f"{query.describe()} releases counts of people, which this site's policy "
                "(min_cell_under_dp) lets out under DP only as its own noisy release, with "
                f"noisy cells below {self.policy.min_cell} suppressed: ask under dp",
                site=self.name, limit=self.policy.min_cell)
        start = time.perf_counter()
        partial = self._local(query, state)
        computed = time.perf_counter()
        message = backend.protect(partial, layout)
        if guard:
            message = backend.suppress(message, layout, self.policy.min_cell)
        protected = time.perf_counter()
        sent = self.releases.commit(release, message,
                                    self._payment(query, state, backend, ask.request), ask=ask,
                                    query=query.describe(), backend=backend.name)
        return Contribution(self.name, sent, computed - start, protected - computed,
                            audited=self.audit is not None)

    def _ledger(self, query: Query) -> Ledger:
        """The ledger a DP release is charged to; refuses what no DP release may be."""
        if query.releases_records:
            raise PetError(f"{query.describe()} releases a record's own value, which no DP "
                           "mechanism covers; ask for grid Quantiles under DP")
        if self.ledger is None:
            raise PetError(f"site {self.name!r} keeps no privacy ledger; DP releases need "
                           "one (Site(..., ledger=Ledger(path)))")
        return self.ledger

    def _payment(self, query: Query, state: State, backend: Backend,
                 request: str) -> Payment:
        """How a release is paid for: the query's (ε, δ) is charged once per request, as
        ρ (zCDP adds; pure ε costs ε²/2); each release then spends its round's part of
        that ρ (`Layout.share`), or a synthesizer's release its own ρ, and the ledger
        refuses a release that would take the request past what its charge affords. A
        synthesizer's first charge notes the site's data fingerprint for the audit entry."""
        ledger, dataset = self._ledger(query), self.dataset
        epsilon, delta = backend.cost()
        allowed = query_rho(epsilon, delta)
        spend = release_rho(query.layout(self.schema, state), epsilon, delta,
                            getattr(backend, "rho", None))
        shared = getattr(backend, "rho", None) is not None
        # A fit's first release notes the data's fingerprint, taken before the ledger is
        # locked (a full pass over the table) and only for a synthesizer's measurement.
        fingerprint = (self.table.fingerprint() if shared and query.fingerprints_data
                       and ledger.charged(request) == (0.0, 0.0) else None)

        def pay(db: sqlite3.Connection) -> tuple[float, float, str]:
            fresh = ledger.charge_in(db, dataset, epsilon, delta, request=request,
                                     query=f"zCDP budget of {request}" if shared
                                     else query.describe())
            spent = ledger.spend_in(db, dataset, request, spend, allowed=allowed,
                                    query=query.describe())
            note = f"ρ={spend:g} spent, {spent:g} of {allowed:g} by the request; "
            if fresh and fingerprint is not None:  # what the fit's data card points to
                note = f"data fingerprint {fingerprint}; {note}"
            return (epsilon, delta, note) if fresh else (0.0, 0.0, note)

        return pay

    def _audit_retry(self, ask: Ask, query: Query, backend: Backend, release: Release) -> None:
        """Report a retry answered with the stored release (it costs nothing more)."""
        if self.audit is not None:
            self.audit.record(analyst=ask.analyst, request=ask.request,
                              query=query.describe(), backend=backend.name,
                              outcome="answered",
                              detail=f"round {ask.round}; retry answered with the stored "
                                     f"release {release.digest[:16]}, no new draw")

    def __repr__(self) -> str:
        return f"Site({self.name!r}, rows={self.table.n_rows})"


def _he_keys(backend: Backend) -> tuple[str, ...]:
    """The identities of the HE public keys a backend encrypts under (none without HE)."""
    inner = getattr(backend, "backend", backend)
    public = getattr(inner, "public", None)
    return public.identities() if isinstance(public, PublicHE) else ()


def _check_round(query: Query, state: State, round: int) -> None:
    """Refuse a DP round of an iterative query whose number is not its state's iteration
    plus one: each iteration's share of the query's budget is then released once per
    request (a peer could otherwise ask iteration 0, the cheapest, under every round)."""
    iteration = getattr(state, "iteration", None)
    if iteration is not None and round != iteration + 1:
        raise PetError(f"{query.describe()}: round {round} must carry iteration "
                       f"{round - 1}, not {iteration}; number a request's rounds from 1, "
                       "one per iteration")


def _session(backend: Backend) -> str:
    """The public session of a backend used in this process: its name and (ε, δ)."""
    epsilon, delta = backend.cost()
    return f"{backend.name} ε={epsilon!r} δ={delta!r}"
