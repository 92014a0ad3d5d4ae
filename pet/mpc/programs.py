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


def start_crypten(*, dealer: bool) -> Any:
    """Join the session with the trusted-third-party provider; the dealer serves Beaver
    triples until the parties finish and then returns None."""
    crypten = load_crypten()
    crypten.cfg.mpc.provider = "TTP"
    crypten.cfg.communicator.verbose = True  # count rounds and bytes
    if dealer:
        from crypten.mpc.provider.ttp_provider import TTPServer

        TTPServer()
        return None
    crypten.init()
    return crypten


def secure_sum(crypten: Any, rank: int, world: int, value: np.ndarray,
               public: dict[str, Any]) -> dict[str, Any]:
    """Secret-share every party's vector, add the shares, reveal the sum to party 0 only.

    `public["scale"]` is the fixed-point scale; the sum comes back as raw int64 units of it.
    """
    communicator = crypten.communicator.get()
    communicator.reset_communication_stats()
    encoded = torch.from_numpy(np.rint(value * public["scale"]).astype(np.int64))
    total = None
    for source in range(world):
        mine = encoded if source == rank else torch.zeros_like(encoded)
        share = crypten.cryptensor(mine, src=source, precision=0)
        total = share if total is None else total + share
    revealed = total.reveal(dst=0)
    stats = communicator.get_communication_stats()
    return {"sum": revealed.numpy() if rank == 0 else None,
            "bytes": int(stats["bytes"]), "rounds": int(stats["rounds"])}


def provider(crypten: Any, rank: int, world: int, value: np.ndarray,
             public: dict[str, Any]) -> str:
    """Who deals this party's Beaver triples (a check that the dealer is in use)."""
    return type(crypten.mpc.get_default_provider()).__name__


PROGRAMS: dict[str, Callable[..., Any]] = {"sum": secure_sum, "provider": provider}
