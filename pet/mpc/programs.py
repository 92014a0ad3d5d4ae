"""What the parties compute together, run inside each party process.

Inputs are fixed-point encoded here, not by CrypTen: CrypTen's encoder goes through
float32 on decoding, which rounds counts above 2²⁴ (16.7 million), so values are scaled
to int64 with numpy in float64, shared with precision 0, and revealed raw.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from pet.crypten_shim import load_crypten

PRODUCT_BITS = 22
"""Fractional bits of values that enter Beaver products: |x| ≤ 1 gives products below
2^44, whose truncation errs with probability below 2^-19 (see TRUNCATION_BITS in
pet.backends.mpc); at 28 bits a repeated test saw a variance off by 2^36 units."""


def start_crypten(*, dealer: bool) -> Any:
    """Join the session with the trusted-third-party provider; the dealer serves Beaver
    triples until the parties finish and then returns None."""
    crypten = load_crypten()
    crypten.cfg.mpc.provider = "TTP"
    crypten.cfg.communicator.verbose = True  # count rounds and bytes
    if dealer:
        crypten.mpc.provider.TTPServer()  # serves requests until the parties finish
        return None
    crypten.init()
    return crypten


def share_sum(crypten: Any, rank: int, world: int, value: np.ndarray,
              public: dict[str, Any], memory: dict[str, Any]) -> dict[str, int]:
    """Secret-share every party's vector and add the shares; the sum stays shared (in
    `memory`) for the next program. `public["scale"]` is the fixed-point scale."""
    communicator = crypten.communicator.get()
    communicator.reset_communication_stats()
    encoded = torch.from_numpy(np.rint(value * public["scale"]).astype(np.int64))
    total = None
    for source in range(world):
        mine = encoded if source == rank else torch.zeros_like(encoded)
        share = crypten.cryptensor(mine, src=source, precision=0)
        total = share if total is None else total + share
    memory["total"] = total
    return _stats(communicator)


def reveal_sum(crypten: Any, rank: int, world: int, value: np.ndarray,
               public: dict[str, Any], memory: dict[str, Any]) -> dict[str, Any]:
    """Reveal the shared sum (raw fixed-point units) to party 0 only."""
    revealed = memory["total"].reveal(dst=0)
    return {"values": revealed.numpy() if rank == 0 else None,
            **_stats(crypten.communicator.get())}


def moments(crypten: Any, rank: int, world: int, value: np.ndarray,
            public: dict[str, Any], memory: dict[str, Any]) -> dict[str, Any]:
    """Reveal only n and the missing counts (the `head`), then, inside MPC, the mean or the
    variance of scaled values (or, for `cross`, the covariance of each pair).

    n becomes public first, so the one division is by a public integer (CrypTen's
    truncation with the dealer's wrap counts, exact to a few units of 2^-bits) and every
    value stays in [-1, 1]: one Beaver product for the squares, none for the mean.
    """
    scale = int(public["scale"])
    bits = scale.bit_length() - 1
    total = memory["total"]
    head = total[: public["head"]].reveal()
    n = int(head[0]) // scale  # a count: exact in fixed point
    if n < (1 if public["kind"] == "mean" else 2):  # too few rows: reveal nothing more
        return {"head": head.numpy(), "values": None, "bits": bits,
                **_stats(crypten.communicator.get())}
    # Dividing the raw sums by n·2^(bits − PRODUCT_BITS) leaves values in [-1, 1] at a
    # scale whose products (2^(2·PRODUCT_BITS)) stay far below the ring's 2^62. Sums and
    # squares are adjacent blocks: one division (one truncation) serves both.
    precision = min(bits, PRODUCT_BITS)
    start, stop = public["sums"][0], public.get("squares", public["sums"])[1]
    raw = total[start:stop].div(n * 2 ** (bits - precision))
    moments = crypten.mpc.MPCTensor.from_shares(raw.share, precision=precision)
    width = public["sums"][1] - start
    sums = moments[:width]
    if public["kind"] == "mean":
        answer = sums
    else:
        rows, cols = public["pairs"]
        # (Σx²/n − mean²); the public factor n/(n − 1) is applied after the reveal.
        answer = moments[width:] - sums[rows] * sums[cols]
    revealed = answer.reveal(dst=0)
    return {"head": head.numpy(), "values": revealed.numpy() if rank == 0 else None,
            "bits": precision, **_stats(crypten.communicator.get())}


def _stats(communicator: Any) -> dict[str, int]:
    stats = communicator.get_communication_stats()
    return {"bytes": int(stats["bytes"]), "rounds": int(stats["rounds"])}


def provider(crypten: Any, rank: int, world: int, value: np.ndarray,
             public: dict[str, Any], memory: dict[str, Any]) -> str:
    """Who deals this party's Beaver triples (a check that the dealer is in use)."""
    return type(crypten.mpc.get_default_provider()).__name__


PROGRAMS: dict[str, Callable[..., Any]] = {
    "share_sum": share_sum,
    "reveal_sum": reveal_sum,
    "moments": moments,
    "provider": provider,
}
