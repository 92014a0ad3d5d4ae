"""The `mpc` backend: each site is a CrypTen party; partials are secret-shared among the
parties and added as shares. For the statistics in `SECURE` the answer is computed inside
MPC and only it (with n and the missing counts) is revealed; for the others the sum is
revealed to the analyst's side and finalized there, as under `he`.

Parties run in their own processes for the whole session (see `pet.mpc.parties`), with a
dealer process for Beaver triples that holds no data. A site's partial goes only to its
own party; what crosses the network are shares, counted by CrypTen and reported as each
site's bytes. Sums are exact for counts and within 2^-(P+1) per site for real sums, where
the fixed-point scale 2^P is chosen per layout so that no sum can wrap the 64-bit ring.
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pet.backends.base import Aggregate, Backend, Conclusion, Limits, Privacy
from pet.errors import PetError, QueryError
from pet.layout import Layout
from pet.mpc.parties import Parties, PartyConfig
from pet.queries import Covariance, Mean, StdDev, Variance
from pet.queries.base import affine, from_upper_triangle
from pet.schema import Schema

CONFIDENTIALITY = ("sites' partials are secret-shared among the sites' parties; only the "
                   "sum is revealed, to the analyst")
SECURE_CONFIDENTIALITY = ("sites' partials are secret-shared; the statistic is computed "
                          "inside MPC and only it (with n and missing counts) is revealed")
MIN_PARTIES = 3
"""With three or more parties CrypTen divides shares using the dealer's wrap counts; with
two it truncates probabilistically, which is occasionally off by 2^32."""
RING_BITS = 62
"""Usable bits of CrypTen's 64-bit ring (a sign bit and one of margin)."""
TRUNCATION_BITS = 46
"""Largest magnitude (in bits) of a value that secure programs divide. CrypTen's division
with the dealer's wrap counts omits one correction term and is wrong (by 2^64/divisor)
with probability about |x|/2^63 per element: 2^-17 at this bound, far less below it.
Layouts whose values are at most 1 per row (the ones secure programs read) are scaled to
stay under it; others are only ever summed and revealed, which needs no division."""
MAX_SCALE_BITS = 32


def scale_bits(layout: Layout, limits: Limits) -> int:
    """Fractional bits of the fixed-point encoding: as many as the worst-case sum leaves."""
    largest = float(np.max(layout.bounds(), initial=1.0))
    room = TRUNCATION_BITS if largest <= 1 else RING_BITS
    worst = max(largest, 1.0) * limits.max_rows_per_site * limits.max_sites
    bits = min(MAX_SCALE_BITS, room - math.ceil(math.log2(worst + 1)))
    if bits < 8:
        raise PetError(f"sums up to {worst:.3g} leave fewer than 8 fractional bits in the "
                       "64-bit ring; lower max_rows_per_site or max_sites")
    return bits


class MPC(Backend):
    """Secure multiparty aggregation with CrypTen parties (one per site) and a dealer."""

    name = "mpc"

    def __init__(self, *, max_rows_per_site: int = 10**8, max_sites: int = 100,
                 parties: PartyConfig | None = None) -> None:
        self.limits = Limits(max_rows_per_site, max_sites)
        self.config = parties or PartyConfig()
        self._parties: Parties | None = None

    def open(self, n_sites: int) -> None:
        """Start one party per site (at least three) and the dealer, unless they run."""
        if n_sites > self.limits.max_sites:
            raise PetError(f"{n_sites} sites exceed this session's max_sites="
                           f"{self.limits.max_sites}")
        parties = self._parties
        if parties is not None and parties.alive and parties.n == max(n_sites, MIN_PARTIES):
            return
        self.close()
        start = time.perf_counter()
        self._parties = Parties(max(n_sites, MIN_PARTIES), self.config)
        self.startup_s = time.perf_counter() - start

    def close(self) -> None:
        if self._parties is not None:
            self._parties.close()
            self._parties = None

    def protect(self, partial: np.ndarray, layout: Layout) -> bytes:
        """The site's private input to its own party (never sent to the coordinator)."""
        self.limits.check(partial, layout)
        return np.ascontiguousarray(partial, dtype="<f8").tobytes()

    def combine(self, messages: Sequence[bytes], layout: Layout) -> bytes:
        """Secret-share the sites' inputs among the parties and add the shares; the sum
        stays shared. The message records the scale and each site's bytes so far."""
        parties = self._session(len(messages))
        inputs = [np.frombuffer(m, dtype="<f8") for m in messages]
        if any(v.shape != (layout.size,) for v in inputs):
            raise PetError(f"a site's input does not have the layout's {layout.size} elements")
        # Fewer than three sites: empty parties join, so that there are always three.
        inputs += [np.zeros(layout.size)] * (parties.n - len(inputs))
        bits = scale_bits(layout, self.limits)
        outputs = parties.run("share_sum", inputs, {"scale": 2.0**bits})
        sent = [int(o["bytes"]) for o in outputs[:len(messages)]]
        return struct.pack(f"<III{len(sent)}Q", bits, outputs[0]["rounds"], len(sent), *sent)

    def reveal(self, combined: bytes, layout: Layout) -> Aggregate:
        """Reveal the shared sum to the analyst, decoded from fixed point."""
        bits, rounds, n_sites, sent = _unpack(combined)
        outputs = self._run("reveal_sum", n_sites, {})
        raw = outputs[0]["values"]
        total = raw / 2.0**bits
        counts = layout.counts_mask()
        total[counts] = np.rint(total[counts])
        bounds = np.where(counts, 0.0, n_sites * 2.0 ** -(bits + 1))
        return Aggregate(total, bounds, Privacy(CONFIDENTIALITY),
                         site_bytes=_add_bytes(sent, outputs),
                         comm_rounds=rounds + outputs[0]["rounds"])

    def conclude(self, query: Any, schema: Schema, state: Any, combined: bytes,
                 layout: Layout) -> Conclusion:
        """Finalize inside MPC where pet knows how (mean, variance, standard deviation,
        covariance: only n, the missing counts and the answer are revealed); otherwise
        reveal the sum and finalize it in the clear."""
        secure = SECURE.get(type(query))
        if secure is None:
            return super().conclude(query, schema, state, combined, layout)
        bits, rounds, n_sites, sent = _unpack(combined)
        columns = [c for c in query.used_columns() if c in query.inputs()]
        public = secure.public(layout, len(columns))
        outputs = self._run("moments", n_sites, {"scale": 2.0**bits, **public})
        head = outputs[0]["head"] / 2.0**bits
        if outputs[0]["values"] is None:
            raise QueryError(f"{query.describe()}: too few complete rows ({head[0]:g}) at "
                             "all sites together for this statistic")
        halves = np.array([affine(schema[c])[1] for c in columns])
        precision = outputs[0]["bits"]
        revealed = outputs[0]["values"] / 2.0**precision
        if public["kind"] != "mean":  # unbiased: the public factor n / (n − 1)
            revealed = revealed * head[0] / (head[0] - 1)
        unit = 16 * (self._parties.n + n_sites) * 2.0**-precision  # see SecureProgram
        value, bound = secure.answer(query, schema, revealed, halves, unit)
        return Conclusion(value, head, bound, Privacy(SECURE_CONFIDENTIALITY),
                          _add_bytes(sent, outputs), rounds + outputs[0]["rounds"])

    def _run(self, program: str, n_sites: int, public: dict[str, Any]) -> list[Any]:
        parties = self._session(n_sites)
        return parties.run(program, [np.zeros(0)] * parties.n, public)

    def _session(self, n_sites: int) -> Parties:
        """The live parties, restarted if a failure ended the last session."""
        self.open(n_sites)
        assert self._parties is not None
        return self._parties


def _unpack(combined: bytes) -> tuple[int, int, int, tuple[int, ...]]:
    """Scale bits, communication rounds so far, number of sites, each site's bytes."""
    bits, rounds, n_sites = struct.unpack_from("<III", combined)
    return bits, rounds, n_sites, struct.unpack_from(f"<{n_sites}Q", combined, 12)


def _add_bytes(sent: Sequence[int], outputs: list[Any]) -> tuple[int, ...]:
    """Each site's bytes: its sharing, plus what its party sent while concluding."""
    return tuple(s + int(o["bytes"]) for s, o in zip(sent, outputs, strict=False))


@dataclass(frozen=True)
class SecureProgram:
    """How one kind of query is finalized inside MPC: which blocks the `moments` program
    reads, and how the revealed scaled values become the answer and its error bound.

    `unit` bounds the error of one revealed scaled value: each division by the public n
    and each Beaver product truncates with an error below one unit of 2^-precision per
    party, and the inputs' own rounding adds half a unit per site; sixteen times (parties
    + sites) units covers the few operations of these programs with room to spare.
    """

    kind: str
    answer: Callable[[Any, Schema, np.ndarray, np.ndarray, float], tuple[Any, float]]

    def public(self, layout: Layout, d: int) -> dict[str, Any]:
        """Slices of the layout's blocks and the index pairs of the products."""
        where = {block.name: (s.start, s.stop) for block, s in layout}
        head = 1 + where["missing"][1] - where["missing"][0]
        if self.kind == "mean":
            return {"kind": "mean", "head": head, "sums": where["sum"]}
        squares = where["cross"] if "cross" in where else where["sum_sq"]
        rows, cols = np.triu_indices(d)
        return {"kind": "variance", "head": head, "sums": where["sum"], "squares": squares,
                "pairs": (rows.tolist(), cols.tolist())}


def _mean(query: Any, schema: Schema, revealed: np.ndarray, halves: np.ndarray,
          unit: float) -> tuple[float, float]:
    center, half = affine(schema[query.column])
    return float(center + half * revealed[0]), float(half * unit)


def _variance(query: Any, schema: Schema, revealed: np.ndarray, halves: np.ndarray,
              unit: float) -> tuple[float, float]:
    variance = max(float(revealed[0]), 0.0) * halves[0] ** 2
    bound = float(unit * halves[0] ** 2)
    if isinstance(query, StdDev):  # |√a − √b| = |a − b| / (√a + √b)
        spread = bound / np.sqrt(variance - bound) if variance > 2 * bound else np.sqrt(bound)
        return float(np.sqrt(variance)), float(spread)
    return variance, bound


def _covariance(query: Any, schema: Schema, revealed: np.ndarray, halves: np.ndarray,
                unit: float) -> tuple[np.ndarray, float]:
    scaled = from_upper_triangle(revealed, len(halves))
    return scaled * np.outer(halves, halves), float(unit * np.max(halves) ** 2)


SECURE: dict[type, SecureProgram] = {
    Mean: SecureProgram("mean", _mean),
    Variance: SecureProgram("variance", _variance),
    StdDev: SecureProgram("variance", _variance),
    Covariance: SecureProgram("variance", _covariance),
}
"""Queries finalized inside MPC, by exact type (Correlation, a Covariance, still needs a
secure inverse square root and is finalized after revealing its sums)."""
