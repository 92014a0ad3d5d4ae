"""The backend interface: how sites' partial vectors become one aggregate.

A backend implements three hooks, one per role (DESIGN §1): `protect` runs at each site
on its plaintext partial and returns the bytes the site sends; `combine` runs at the
coordinator on those messages; `reveal` runs at the analyst and returns the aggregate
with its error bound and privacy guarantee. The study loop itself lives in `Study`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from pet.errors import ArgumentError, PetError
from pet.intervals import Interval, Spread
from pet.layout import Layout
from pet.queries.base import Next


@dataclass(frozen=True)
class Privacy:
    """What a result guarantees: a formal DP cost (ρ-zCDP, reported as (ε, δ)) and/or
    confidentiality of the site partials, in words."""

    confidentiality: str = "none (the coordinator sees every site's partial)"
    rho: float | None = None
    epsilon: float | None = None
    delta: float | None = None

    @property
    def differentially_private(self) -> bool:
        """Whether the release carries a formal DP guarantee."""
        return self.epsilon is not None

    def __str__(self) -> str:
        if not self.differentially_private:
            return "none"
        return f"ε={self.epsilon:g}, δ={self.delta or 0:g}"


@dataclass(frozen=True)
class Limits:
    """Public limits of a session, agreed before it starts: they fix what no partial or sum
    may outgrow (HE plain moduli and scales, MPC fixed-point scales). A site whose partial
    exceeds them is refused, never wrapped around."""

    max_rows_per_site: int = 10**8
    max_sites: int = 100

    def __post_init__(self) -> None:
        if self.max_rows_per_site < 1 or self.max_sites < 1:
            raise ArgumentError("max_rows_per_site and max_sites must be at least 1")

    def check(self, partial: np.ndarray, layout: Layout) -> None:
        """Refuse a partial of the wrong size, or larger than one row's bound times
        max_rows_per_site."""
        self._check_shape(partial, layout)
        over = np.abs(partial) > layout.bounds() * self.max_rows_per_site
        if np.any(over):
            raise PetError(
                f"element {int(np.argmax(over))} of the partial exceeds what "
                f"max_rows_per_site={self.max_rows_per_site} allows; start the session "
                "with a larger limit"
            )

    def clamp(self, partial: np.ndarray, layout: Layout) -> np.ndarray:
        """The partial clipped into what max_rows_per_site allows. DP backends clamp
        instead of refusing: a refusal that depends on the rows would answer a question
        about them for free, while clipping changes no sum by more than one row would
        (its sensitivity stays that of the layout)."""
        self._check_shape(partial, layout)
        limit = layout.bounds() * self.max_rows_per_site
        return np.clip(np.nan_to_num(partial, nan=0.0), -limit, limit)

    @staticmethod
    def _check_shape(partial: np.ndarray, layout: Layout) -> None:
        if np.shape(partial) != (layout.size,):
            raise PetError(f"a partial of shape {np.shape(partial)} does not fit the query's "
                           f"layout of {layout.size} elements")


@dataclass(frozen=True)
class Aggregate:
    """The aggregated vector as the analyst receives it.

    `error_bounds` bounds |aggregate - exact sum| element by element (0 where exact):
    worst-case bounds (fixed-point rounding) unless `independent`, when each element's
    error is independent Gaussian noise (CKKS decoding) and its bound spans `BOUND_Z`
    standard deviations. `site_bytes`, when given, is what each site sent on the wire
    if that is not its message (MPC parties exchange shares among themselves);
    `comm_rounds` counts the rounds of communication among parties (0 where sites send
    one message each).
    `spread` is the DP noise the total carries, element by element (None without DP).
    """

    total: np.ndarray
    error_bounds: np.ndarray
    privacy: Privacy
    site_bytes: tuple[int, ...] | None = None
    comm_rounds: int = 0
    spread: Spread | None = None
    independent: bool = False


@dataclass(frozen=True)
class Conclusion:
    """A round's outcome as the analyst receives it: the answer (or the next round's
    state), the head of the layout (n, the missing counts, the clipped counts), the error
    bound of each number of the answer (see `Result`), the guarantee, each site's bytes
    where they are not its message, the rounds of communication among parties, and for a
    DP answer the 95% interval of each of its numbers from the noise it carries
    (`pet.intervals`)."""

    outcome: Any
    head: np.ndarray
    error_bounds: np.ndarray
    privacy: Privacy
    site_bytes: tuple[int, ...] | None = None
    comm_rounds: int = 0
    interval: Interval | None = None

    @property
    def error_bound(self) -> float:
        """The largest of the numbers' known error bounds (`largest`)."""
        return largest(self.error_bounds)


def largest(bounds: np.ndarray) -> float:
    """The largest known bound: 0 for none at all, NaN when every one is unknown (a DP
    test's, which states its uncertainty by its p-value)."""
    known = np.asarray(bounds, dtype=np.float64)
    known = known[~np.isnan(known)]
    if known.size:
        return float(np.max(known))
    return 0.0 if np.size(bounds) == 0 else float("nan")


class Backend(ABC):
    """One privacy-enhancing way to sum the sites' partial vectors."""

    name: ClassVar[str]
    differentially_private: ClassVar[bool] = False
    """Whether the backend adds DP noise (and so takes an ε, and costs privacy budget)."""
    finalizes_inside: ClassVar[bool] = False
    """Whether the answers of secure-only queries are computed without revealing any sum
    (MPC), so that a site may contribute to them."""
    def hides_sums(self, query: Any) -> bool:
        """Whether this backend never reveals the query's sums beyond the layout's head
        (n and the missing and clipped counts) to anyone, a site's own program enforcing
        it: then a site's cell rule concerns the head alone."""
        return False

    suppresses_cells: ClassVar[bool] = False
    """Whether a site's message is its own full DP release, whose noisy cells the site may
    suppress (`suppress`) as post-processing."""
    shares_noise: ClassVar[bool] = False
    """Whether each site adds only its share of one central noise, sized by the number of
    sites (a site must then know its federation from its own configuration)."""

    startup_s: float = 0.0
    """Seconds spent setting the session up (keys, party processes), paid once."""

    def cost(self) -> tuple[float, float]:
        """The (ε, δ) one site's release of one round spends (nothing without DP)."""
        return 0.0, 0.0

    @property
    def session_bytes(self) -> int:
        """Bytes each site and the coordinator receive once per session (keys, contexts)."""
        return 0

    def open(self, n_sites: int) -> None:  # noqa: B027 - optional hook, no-op by default
        """Prepare a session for `n_sites` sites (called once, before any query)."""

    def close(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release what the session holds (processes, keys)."""

    @abstractmethod
    def protect(self, partial: np.ndarray, layout: Layout) -> bytes:
        """At a site: turn its plaintext partial into the message it sends."""

    @abstractmethod
    def combine(self, messages: Sequence[bytes], layout: Layout) -> bytes:
        """At the coordinator: combine the sites' messages into one."""

    @abstractmethod
    def reveal(self, combined: bytes, layout: Layout) -> Aggregate:
        """At the analyst: recover the aggregate from the combined message."""

    def suppress(self, message: bytes, layout: Layout, minimum: int) -> bytes:
        """The message with its noisy cells below `minimum` set to 0 (backends that
        `suppresses_cells`)."""
        raise PetError(f"{self.name} cannot suppress cells of a message")

    def programs(self, query: Any, schema: Any, state: Any) -> dict[str, dict[str, Any]]:
        """The MPC programs a site's party runs for one round of the query, by name, with
        their public parameters: a site derives them from the query it answers and runs
        nothing else (none for backends without parties)."""
        return {}

    def conclude(self, query: Any, schema: Any, state: Any, combined: bytes,
                 layout: Layout) -> Conclusion:
        """At the analyst: the round's outcome. By default the aggregate is revealed and
        the query finalizes it in the clear; a backend that can finalize without revealing
        the sums (MPC) overrides this for the queries it knows."""
        aggregate = self.reveal(combined, layout)
        spread = aggregate.spread
        outcome = query.finalize(aggregate.total, schema, state,
                                 error_bounds=aggregate.error_bounds,
                                 noise_sd=None if spread is None else spread.sd())
        determined = layout.split(aggregate.total)["n"][0] >= query.min_rows(schema)
        interval = (query.interval(aggregate.total, spread, schema, state, outcome)
                    if spread is not None and determined else None)
        return Conclusion(outcome, layout.head(aggregate.total),
                          _answer_bounds(query, schema, state, aggregate, outcome, interval),
                          aggregate.privacy, aggregate.site_bytes, aggregate.comm_rounds,
                          interval)


def _answer_bounds(query: Any, schema: Any, state: Any, aggregate: Aggregate, outcome: Any,
                   interval: Interval | None) -> np.ndarray:
    """The error bound of each number of the answer: under DP noise the half-width of its
    95% interval (NaN where it has none; the computation's own error is orders of
    magnitude below the noise), else the computation's bounds propagated through
    finalize."""
    if aggregate.spread is None:
        return query.error_bounds(aggregate.total, aggregate.error_bounds,
                                  aggregate.independent, schema, state, outcome)
    if isinstance(outcome, Next):
        return np.zeros(0)
    value = query.numbers(outcome)
    if interval is None:
        return np.full(value.size, np.nan)
    return np.maximum(interval[1] - value, value - interval[0])
