"""The `mpc` backend: each site is a CrypTen party; partials are secret-shared among the
parties, added as shares, and only their sum is revealed, to the analyst's side.

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
from collections.abc import Sequence

import numpy as np

from pet.backends.base import Aggregate, Backend, Limits, Privacy
from pet.errors import PetError
from pet.layout import Layout
from pet.mpc.parties import Parties, PartyConfig

CONFIDENTIALITY = ("sites' partials are secret-shared among the sites' parties; only the "
                   "sum is revealed, to the analyst")
RING_BITS = 62
"""Usable bits of CrypTen's 64-bit ring (a sign bit and one of margin)."""
MAX_SCALE_BITS = 32


def scale_bits(layout: Layout, limits: Limits) -> int:
    """Fractional bits of the fixed-point encoding: as many as the worst-case sum leaves."""
    worst = max(float(np.max(layout.bounds(), initial=1.0)), 1.0)
    worst *= limits.max_rows_per_site * limits.max_sites
    bits = min(MAX_SCALE_BITS, RING_BITS - math.ceil(math.log2(worst + 1)))
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
        """Start one party per site (at least two) and the dealer, unless they run already."""
        if n_sites > self.limits.max_sites:
            raise PetError(f"{n_sites} sites exceed this session's max_sites="
                           f"{self.limits.max_sites}")
        parties = self._parties
        if parties is not None and parties.alive and parties.n == max(n_sites, 2):
            return
        self.close()
        start = time.perf_counter()
        self._parties = Parties(max(n_sites, 2), self.config)
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
        """Run the secure sum among the parties; keep what party 0 reveals."""
        parties = self._session(len(messages))
        inputs = [np.frombuffer(m, dtype="<f8") for m in messages]
        if any(v.shape != (layout.size,) for v in inputs):
            raise PetError(f"a site's input does not have the layout's {layout.size} elements")
        # With one site a second, empty party still secret-shares: MPC needs two parties.
        inputs += [np.zeros(layout.size)] * (parties.n - len(inputs))
        bits = scale_bits(layout, self.limits)
        outputs = parties.run("sum", inputs, {"scale": 2.0**bits})
        sent = [int(o["bytes"]) for o in outputs[:len(messages)]]
        header = struct.pack(f"<II{len(sent)}Q", bits, len(sent), *sent)
        return header + outputs[0]["sum"].astype("<i8").tobytes()

    def reveal(self, combined: bytes, layout: Layout) -> Aggregate:
        """The revealed sum, decoded from fixed point, with each site's bytes on the wire."""
        bits, n_sites = struct.unpack_from("<II", combined)
        site_bytes = struct.unpack_from(f"<{n_sites}Q", combined, 8)
        raw = np.frombuffer(combined, dtype="<i8", offset=8 + 8 * n_sites)
        if raw.shape != (layout.size,):
            raise PetError(f"the revealed sum has {raw.size} elements, the layout {layout.size}")
        total = raw / 2.0**bits
        counts = np.concatenate([np.full(b.size, b.integer) for b in layout.blocks]
                                or [np.zeros(0, bool)])
        total[counts] = np.rint(total[counts])
        bounds = np.where(counts, 0.0, n_sites * 2.0 ** -(bits + 1))
        return Aggregate(total, bounds, Privacy(CONFIDENTIALITY), site_bytes=site_bytes)

    def _session(self, n_sites: int) -> Parties:
        """The live parties, restarted if a failure ended the last session."""
        self.open(n_sites)
        assert self._parties is not None
        return self._parties
