"""Which backend when sites are far apart: a cost model of the `wan` profile's cells.

Per query, backend and number of sites, the latency over a link of round trip RTT is
modelled as

    T(RTT) = T₀ + L · RTT

T₀ is the latency over links that add no delay: the compute, the relays' own cost and the
bandwidth's (every link of the profile carries the same Mbit/s, so the bytes cost the same
at every RTT). L is how many round trips lie on the query's critical path: calls from the
coordinator to the sites (in parallel, so one a round), the exchanges among MPC parties
and party 0's requests to the dealer. L is read off the `FIT_MS` cells; the model then
predicts every other RTT, and each prediction's error against the measured median is
reported.

To more sites the model extends by the bytes alone, `SITES` of them, as if each host had
one link of the profile's bandwidth: without MPC every site's reply crosses the
coordinator's link, which carries the measured bytes times n / s for s sites measured;
under MPC a party sends its shares to every other party, and the busiest party's link
carries its measured bytes times (n − 1) / (s − 1). L stays as it is (sites are asked at
once; MPC's rounds do not grow with the parties), and so does the compute, which makes
these figures lower bounds: the coordinator's combining and each party's share arithmetic
grow with n too, and were not measured beyond three sites.

    python -m benchmarks.wan benchmarks/results/wan
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIT_MS = 80.0
"""The round trip whose cells give each query's L: the longest, where the round trips
stand out most from the runs' own spread."""
AT_MS = 20.0
"""The round trip the backends are ranked at, and the model extended at."""
SITES = (10, 30, 100)
"""The federations the model extends to."""
MPC_BACKENDS = ("mpc", "mpc+dp")
"""Backends whose `site_bytes` are an MPC party's traffic with the others."""


@dataclass(frozen=True)
class Fitted:
    """One query under one backend: its measured latencies by RTT (ms → s), T₀, L, the
    model's prediction and relative error at every RTT, and the rounds pet counted."""

    workload: str
    query: str
    backend: str
    sites: int
    measured: dict[float, float]
    base_s: float
    round_trips: float
    rounds: int
    comm_rounds: int
    bytes_total: float
    """Bytes the sites sent the coordinator (all of them cross its link; 0 under MPC,
    where they are the parties' and counted in `party_bytes`)."""
    party_bytes: float
    """Bytes the busiest MPC party sent (0 without MPC)."""

    def predicted(self, rtt_ms: float) -> float:
        """The model's latency at a round trip of `rtt_ms`."""
        return self.base_s + self.round_trips * rtt_ms / 1000

    def extended(self, sites: int, rtt_ms: float, mbit_s: float) -> float:
        """A lower bound on the latency with `sites` sites (see the module docstring)."""
        more = (self.bytes_total * (sites / self.sites - 1)
                + self.party_bytes * ((sites - 1) / (self.sites - 1) - 1))
        return self.predicted(rtt_ms) + max(more, 0.0) * 8 / (mbit_s * 1e6)

    def error(self, rtt_ms: float) -> float:
        """The prediction's error relative to the measured latency at `rtt_ms`."""
        return self.predicted(rtt_ms) / self.measured[rtt_ms] - 1

    @property
    def worst_error(self) -> float:
        """The largest relative error over the RTTs the model was not fitted on."""
        return max((abs(self.error(r)) for r in self.measured if r not in (0.0, FIT_MS)),
                   default=0.0)


def fit(cells: Sequence[dict[str, Any]]) -> list[Fitted]:
    """The model of every query and backend measured at 0 ms and at `FIT_MS`."""
    groups: dict[tuple, dict[float, dict[str, Any]]] = defaultdict(dict)
    for cell in cells:
        if cell.get("status") == "ok" and cell.get("rtt_ms") is not None:
            key = (cell["workload"], cell["query"], cell["backend"], cell["sites"],
                   cell.get("rows_per_site"), cell.get("epsilon"), cell.get("mbit_s"))
            groups[key][float(cell["rtt_ms"])] = cell
    out = []
    for (workload, query, backend, sites, *_), by_rtt in groups.items():
        if 0.0 not in by_rtt or FIT_MS not in by_rtt or sites < 2:
            continue
        measured = {rtt: float(c["latency_median_s"]) for rtt, c in sorted(by_rtt.items())}
        base = measured[0.0]
        round_trips = (measured[FIT_MS] - base) / (FIT_MS / 1000)
        first = by_rtt[0.0]
        mpc = backend in MPC_BACKENDS
        party = max(first.get("site_bytes") or [0]) if mpc else 0
        out.append(Fitted(workload, query, backend, sites, measured, base, round_trips,
                          int(first.get("rounds") or 0), int(first.get("comm_rounds") or 0),
                          0.0 if mpc else float(first.get("bytes_total") or 0), float(party)))
    return sorted(out, key=lambda f: (f.workload, f.query, f.backend, f.sites))


def summary(fitted: Sequence[Fitted], mbit_s: float = 100.0) -> str:
    """Markdown: every cell's latencies and the model's errors; per query, the private
    backends in order of latency at `AT_MS`; and the model at `AT_MS` for `SITES`."""
    rtts = sorted({r for f in fitted for r in f.measured})
    head = " | ".join(f"{r:g} ms" for r in rtts)
    lines = ["| data | query | backend | " + head + " | L (round trips) | rounds | MPC "
             "rounds counted | worst error of the model |",
             "|---|---|---|" + "---:|" * (len(rtts) + 4)]
    for f in fitted:
        times = " | ".join(_ms(f.measured[r]) if r in f.measured else "" for r in rtts)
        lines.append(f"| {f.workload} | {f.query} | {f.backend} | {times} | "
                     f"{f.round_trips:.1f} | {f.rounds} | {f.comm_rounds} | "
                     f"{100 * f.worst_error:.0f}% |")
    lines += ["", f"At {AT_MS:g} ms, the private backends from fastest:", ""]
    by_query: dict[tuple, list[Fitted]] = defaultdict(list)
    for f in fitted:
        if f.backend != "plaintext":
            by_query[(f.workload, f.query)].append(f)
    for (workload, query), options in sorted(by_query.items()):
        if not any(AT_MS in f.measured for f in options):
            continue
        ranked = sorted((f for f in options if AT_MS in f.measured),
                        key=lambda f: f.measured[AT_MS])
        lines.append(f"- {workload} {query}: " + ", ".join(
            f"{f.backend} {_ms(f.measured[AT_MS])}" for f in ranked))
    lines += ["", f"Modelled at {AT_MS:g} ms and {mbit_s:g} Mbit/s (lower bounds beyond the "
              "sites measured):", "",
              "| data | query | backend | measured | " + " | ".join(
                  f"{n} sites" for n in SITES) + " |", "|---|---|---|" + "---:|" * (1 + len(SITES))]
    for f in fitted:
        measured = _ms(f.measured[AT_MS]) if AT_MS in f.measured else "—"
        lines.append(f"| {f.workload} | {f.query} | {f.backend} | {measured} "
                     f"({f.sites} sites) | " + " | ".join(
                         _ms(f.extended(n, AT_MS, mbit_s)) for n in SITES) + " |")
    return "\n".join(lines) + "\n"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.0f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a run folder of the wan profile")
    args = parser.parse_args(argv)
    cells = [json.loads(line) for line in (args.run / "cells.jsonl").read_text().splitlines()
             if line.strip()]
    links = {c["mbit_s"] for c in cells if c.get("rtt_ms") is not None}
    if len(links) != 1 or None in links:
        raise SystemExit(f"{args.run}: the cost model needs one bandwidth for every link, "
                         f"found {sorted(links, key=str)}")
    text = summary(fit(cells), links.pop())
    (args.run / "wan.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
