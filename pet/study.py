"""A study: one query run across sites under one backend.

The layout → local → aggregate → finalize loop lives here once (DESIGN §2). Each round
every site computes and protects its partial, the coordinator combines the messages, and
the backend concludes: it reveals the aggregate for the query to finalize (or, under MPC,
finalizes inside the computation), giving the answer or the next round's state.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any

import numpy as np

from pet.backends import Backend, get_backend
from pet.errors import PetError
from pet.queries.base import Next, Query, State
from pet.result import Result, SiteReport
from pet.schema import Schema
from pet.site import Contribution, Site


class Study:
    """Sites sharing one public schema, queried under one backend: a name with its options
    (`Study(sites, backend="dp", epsilon=1.0, delta=1e-6)`) or a backend made beforehand."""

    def __init__(self, sites: Sequence[Site], *, backend: str | Backend = "plaintext",
                 parallel: bool | Executor = False, **options: Any) -> None:
        if not sites:
            raise PetError("a study needs at least one site")
        names = [s.name for s in sites]
        if len(set(names)) != len(names):
            raise PetError(f"site names repeat: {names}")
        self.schema: Schema = sites[0].schema
        for site in sites[1:]:
            if site.schema != self.schema:
                raise PetError(f"site {site.name!r} follows a different schema from site "
                               f"{sites[0].name!r}; every site must use the study's schema")
        self.sites = tuple(sites)
        if options and not isinstance(backend, str):
            raise PetError(f"options {sorted(options)} go with a backend's name, not with a "
                           "backend already made")
        self.backend = get_backend(backend, **options) if isinstance(backend, str) else backend
        self.parallel = parallel
        """Ask every site at once (sites that are servers elsewhere) instead of in turn: on
        threads of a round's own, or on the given executor's long-lived ones (a server
        asking many studies' sites then starts none a round)."""
        self._asked: dict[str, int] = {}
        """Rounds asked so far under each request id the caller shares between runs: each
        release of a request is numbered, so a site tells a new release from a retry."""
        self.backend.open(len(self.sites))

    def close(self) -> None:
        """End the backend's session (stops MPC parties; a no-op for most backends)."""
        self.backend.close()

    def __enter__(self) -> Study:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, query: Query, *, request: str | None = None) -> Result:
        """Answer `query` across all sites; raises if any site refuses or the query is bad.
        Releases that share a `request` id are charged to the sites' ledgers once (a
        synthesizer's fit, whose releases spend ρ from one (ε, δ) charge)."""
        query.validate(self.schema)
        start = time.perf_counter()
        names = [s.name for s in self.sites]
        local, protect = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
        sent = dict.fromkeys(names, 0)
        comm_rounds = 0
        timings = {"combine": 0.0, "reveal": 0.0}
        state = query.initial_state(self.schema)
        shared = request is not None
        request = request or uuid.uuid4().hex  # one ledger charge per site for all rounds
        first = self._asked.pop(request, 0) if shared else 0
        for rounds in range(1, query.max_rounds + 1):
            layout = query.layout(self.schema, state)
            if shared:
                self._asked[request] = first + rounds
            contributions = self._contributions(query, state, request, first + rounds)
            for c in contributions:
                local[c.site] += c.local_s
                protect[c.site] += c.protect_s
            with _timer(timings, "combine"):
                combined = self.backend.combine([c.message for c in contributions], layout)
            with _timer(timings, "reveal"):
                conclusion = self.backend.conclude(query, self.schema, state, combined, layout)
            wire = conclusion.site_bytes or [len(c.message) for c in contributions]
            for name, size in zip(names, wire, strict=True):
                sent[name] += size
            comm_rounds += conclusion.comm_rounds
            if not isinstance(conclusion.outcome, Next):
                break
            state = conclusion.outcome.state
        else:
            raise PetError(f"{query.describe()} asked for more than {query.max_rounds} rounds")
        head = np.rint(conclusion.head).astype(int).tolist()
        nullable = query.missing_columns(self.schema)
        return Result(
            query=query.describe(),
            value=conclusion.outcome,
            backend=self.backend.name,
            n=head[0],
            missing=dict(zip(nullable, head[1:1 + len(nullable)], strict=True)),
            clipped=dict(zip(query.clip, head[1 + len(nullable):], strict=True)),
            error_bounds=conclusion.error_bounds,
            privacy=conclusion.privacy,
            rounds=rounds,
            latency_s=time.perf_counter() - start,
            sites=tuple(SiteReport(n, local[n], protect[n], sent[n]) for n in names),
            combine_s=timings["combine"],
            reveal_s=timings["reveal"],
            comm_rounds=comm_rounds,
            interval=conclusion.interval,
        )

    def _contributions(self, query: Query, state: State, request: str,
                       round: int) -> list[Contribution]:
        """Every site's contribution to one round of a request, in site order."""
        def ask(site: Site) -> Contribution:
            return site.contribute(query, state, self.backend, request=request, round=round)

        if not self.parallel or len(self.sites) == 1:
            return [ask(site) for site in self.sites]
        if not isinstance(self.parallel, Executor):
            with ThreadPoolExecutor(max_workers=len(self.sites)) as pool:
                return _every(pool, ask, self.sites)
        try:
            return _every(self.parallel, ask, self.sites)
        except RuntimeError as error:  # the executor was shut down: its owner is stopping
            raise PetError(f"no site can be asked any more: {error}") from None


def _every(pool: Executor, ask: Any, sites: Sequence[Site]) -> list[Contribution]:
    """Every site's answer, asked at once; the first failure (in site order) is raised
    once every call has ended, so that none outlives its round."""
    calls = [pool.submit(ask, site) for site in sites]
    wait(calls)
    return [call.result() for call in calls]


@contextmanager
def _timer(totals: dict[str, float], phase: str) -> Iterator[None]:
    """Add the seconds spent inside the block to totals[phase]."""
    start = time.perf_counter()
    yield
    totals[phase] += time.perf_counter() - start
