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

from pet.mpc import kernels
from pet.mpc.fixed_point import precision as fixed_precision
from pet.mpc.parties import ASKED_BYTES
from pet.queries.tables import rank


def share_sum(crypten: Any, rank: int, world: int, value: bytes,
              public: dict[str, Any], memory: dict[str, Any]) -> dict[str, int]:
    """Secret-share every party's vector and add the shares; the sum stays shared (in
    `memory`) for the next program. `public["scale"]` is the fixed-point scale.

    Each input carries, before its numbers, the digest of the query round it answers (its
    site put it there); the parties compare digests first and share nothing unless all
    answer the same round, so no one can add one site's partial to others' empty ones
    and reveal it."""
    communicator = crypten.communicator.get()
    communicator.reset_communication_stats()
    if len(value) < ASKED_BYTES:
        raise ValueError(f"party {rank} was given no input to share")
    asked = torch.from_numpy(np.frombuffer(value[:ASKED_BYTES], dtype=np.int64).copy())
    answered = [int(r) for r, theirs in enumerate(communicator.all_gather(asked))
                if not torch.equal(theirs, asked)]
    if answered:
        raise ValueError(f"the inputs of parties {answered} answer another query than party "
                         f"{rank}'s; nothing was shared")
    vector = np.frombuffer(value[ASKED_BYTES:], dtype="<f8")
    if vector.shape != (public["size"],):
        raise ValueError(f"party {rank}'s input has {vector.size} numbers; the layout has "
                         f"{public['size']}")
    encoded = torch.from_numpy(np.rint(vector * public["scale"]).astype(np.int64))
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


def secure(crypten: Any, rank: int, world: int, value: np.ndarray,
           public: dict[str, Any], memory: dict[str, Any]) -> dict[str, Any]:
    """Reveal only n and the missing counts (the `head`), then run the query's kernel on
    the shared sum and reveal its outputs, to party 0 only.

    Kernels that divide run on two copies of their inputs, each with its own truncation
    randomness; both copies are revealed so that the analyst's side can see a (rare)
    truncation error as a disagreement and run the program again.
    """
    scale = int(public["scale"])
    total = memory["total"]
    head = total[: public["head"]].reveal()
    n = int(head[0]) // scale  # a count: exact in fixed point
    outputs: dict[str, Any] = {"head": head.numpy(), "values": None}
    if n >= public["min_rows"]:  # else too few rows: reveal nothing more
        values = KERNELS[public["kind"]](crypten, total, n, scale.bit_length() - 1, public)
        revealed = {name: v.reveal(dst=0) for name, v in values.items()}
        outputs["values"] = ({k: v.numpy() for k, v in revealed.items()} if rank == 0
                             else None)
    return {**outputs, **_stats(crypten.communicator.get())}


def _per_row(crypten: Any, total: Any, span: tuple[int, int], n: int, bits: int) -> Any:
    """The blocks in `span` divided by n, at `precision(n)` fractional bits, in two copies
    (leading axis): values of at most 1 per row land in [-1, 1]; one truncation each.
    A sum with fewer fractional bits is first shifted up, exactly, so that the quotient
    keeps every bit the per-row value can carry."""
    digits = fixed_precision(n)
    copies = crypten.stack([total[span[0]:span[1]]] * 2)
    if digits >= bits:
        raw = (copies * 2 ** (digits - bits)).div(n)
    else:
        raw = copies.div(n * 2 ** (bits - digits))
    return crypten.mpc.MPCTensor.from_shares(raw.share, precision=digits)


def _moments(crypten: Any, total: Any, n: int, bits: int,
             public: dict[str, Any]) -> dict[str, Any]:
    """Means of scaled values ("values"), or (Σx²/n − mean²) for each pair ("fine", at
    twice the precision); the public factor n / (n − 1) is applied after the reveal.

    The product of means is taken with one factor read as an integer, so CrypTen does
    not truncate it: the difference is revealed at 2^-(2·precision), which saves the
    truncation's rounds of communication and its error."""
    sums, squares = _sums_and_squares(crypten, total, n, bits, public)
    if public["kind"] == "mean":
        return {"values": sums}
    rows, cols = public["pairs"]
    digits = fixed_precision(n)
    whole = type(sums).from_shares(sums[:, cols].share, precision=0)
    return {"fine": squares * 2**digits - sums[:, rows] * whole}


def _covariances(crypten: Any, total: Any, n: int, bits: int,
                 public: dict[str, Any]) -> Any:
    """(Σx_i·x_j/n − mean_i·mean_j) for each pair, at the programs' precision."""
    sums, squares = _sums_and_squares(crypten, total, n, bits, public)
    rows, cols = public["pairs"]
    return squares - sums[:, rows] * sums[:, cols]


def _sums_and_squares(crypten: Any, total: Any, n: int, bits: int,
                      public: dict[str, Any]) -> tuple[Any, Any]:
    """The sums and the squares (or cross products) of a moments layout, per row: the two
    blocks are adjacent, so one division serves both."""
    start, width = public["sums"][0], public["sums"][1] - public["sums"][0]
    moments = _per_row(crypten, total, (start, public.get("squares", public["sums"])[1]),
                       n, bits)
    return moments[:, :width], moments[:, width:]


def _correlation(crypten: Any, total: Any, n: int, bits: int,
                 public: dict[str, Any]) -> dict[str, Any]:
    """Correlations of every pair: c_ij · r_i · r_j with r = 1/√c_ii, the inverse square
    root normalised by powers of four. Also reveals Σ_i 4^m_i (each variance's power of
    four, summed), from which the error bound follows, and how many variances were too
    small to normalise (the query is then refused)."""
    covariance = _covariances(crypten, total, n, bits, public)
    diagonal = covariance[:, public["diagonal"]]
    y, s, small = kernels.inv_sqrt(diagonal, public["steps"])
    rows, cols = public["pairs"]
    exact = covariance * (s[:, rows] * s[:, cols])  # integers: no truncation
    return {"values": exact * (y[:, rows] * y[:, cols]), "spread": (s * s).sum(-1),
            "small": small.sum(-1)}


def _linear(crypten: Any, total: Any, n: int, bits: int,
            public: dict[str, Any]) -> dict[str, Any]:
    """Least squares inside MPC from XᵀX/n, Xᵀy/n and yᵀy/n (see `_solve`); also
    reveals the residual and total sums of squares per row."""
    p = public["terms"]
    moments = _per_row(crypten, total, public["span"], n, bits)
    triangle = p * (p + 1) // 2
    tri, xty, yty = moments[:, :triangle], moments[:, triangle:-1], moments[:, -1]
    solved = _solve(crypten, tri, xty, public)
    fitted = (solved.pop("z") * solved.pop("rhs")).sum(-1)  # βᵀ·Xᵀy/n = zᵀ·D·Xᵀy/n
    total_ss = yty - xty[:, 0] * xty[:, 0] if public["intercept"] else yty
    return {**solved, "rss": yty - fitted, "tss": total_ss}


def _logistic(crypten: Any, total: Any, n: int, bits: int,
              public: dict[str, Any]) -> dict[str, Any]:
    """One Newton step inside MPC from the gradient and Hessian per row at the round's
    public coefficients (see `_solve`); also reveals the log-likelihood's sum, exactly."""
    p = public["terms"]
    moments = _per_row(crypten, total, public["span"], n, bits)
    solved = _solve(crypten, moments[:, p:], moments[:, :p], public)
    del solved["z"], solved["rhs"]
    start, stop = public["log_likelihood"]
    return {**solved, "log_likelihood": crypten.stack([total[start:stop]] * 2)}


def _solve(crypten: Any, tri: Any, rhs: Any, public: dict[str, Any]) -> dict[str, Any]:
    """Solve A·x = b for A positive definite (its upper triangle `tri`, per row, so every
    entry within [-1, 1]): equilibrate, then Gauss–Jordan on [A' | D·b·2^-shift | D·a₀ | I],
    t = D·a₀ for the intercept's variance. The right-hand side is shifted down by a
    public power of two because D·b, unlike D·A·D, has no bound of 1 (a gradient is not
    bounded by the Hessian's diagonal).

    Reveals x ("values"), diag(A⁻¹), a₀ᵀA⁻¹a₀, the squared norm of the solver's residual
    in the equilibrated, shifted system (rounding noise, for the error bound) and how
    many values were too small to normalise (the query is then refused). Returns also z
    and D·b (shifted), shared, for the caller."""
    p, shift = public["terms"], public["shift"]
    full = tri[:, public["square"]].view(2, p, p)
    scaled, y, s, small = kernels.equilibrate(full, public["steps"])
    rhs = ((rhs * y) * s).div(2**shift) if shift else (rhs * y) * s
    corner = (y * torch.tensor(public["corner"])) * s  # D·a₀
    identity = (scaled - scaled) + torch.eye(p, dtype=torch.float64)
    augmented = crypten.cat([scaled, rhs.unsqueeze(-1), corner.unsqueeze(-1), identity], -1)
    solved, tiny = kernels.gauss_jordan(augmented, public["steps"])
    z, w, inverse = solved[..., 0], solved[..., 1], solved[..., 2:]
    terms = list(range(p))
    residual = (scaled * z.unsqueeze(-2)).sum(-1) - rhs
    return {"values": ((z * y) * s) * 2**shift,
            "diagonal": (inverse[:, terms, terms] * (y * y)) * (s * s),
            "corner": (corner * w).sum(-1), "residual": (residual * residual).sum(-1),
            "small": small + tiny, "z": z, "rhs": rhs}


def _positions(crypten: Any, total: Any, n: int, bits: int,
               public: dict[str, Any]) -> dict[str, Any]:
    """For each probability, how many counts (rows of `width`, cumulated first for a
    histogram; one row serves every probability) lie below its rank among the n values:
    where the quantile falls, and nothing else. Counts are exact, and so is the answer."""
    start, stop = public["counts"]
    counts = crypten.mpc.MPCTensor.from_shares(total[start:stop].share, precision=0)
    counts = counts.view(-1, public["width"])
    if public["cumulative"]:
        counts = counts.cumsum(-1)
    targets = torch.tensor([rank(p, n) for p in public["probs"]], dtype=torch.int64) << bits
    return {"values": (counts - targets.unsqueeze(-1))._ltz().sum(-1)}


def check(crypten: Any, rank: int, world: int, value: np.ndarray,
          public: dict[str, Any], memory: dict[str, Any]) -> dict[str, Any] | None:
    """Run one kernel on public inputs (party 0's), for tests of its whole input range."""
    x = crypten.cryptensor(torch.tensor(public["x"], dtype=torch.float64), src=0,
                           precision=public["precision"])
    y, s, small = getattr(kernels, public["function"])(x, public["steps"])
    out = {"y": y.reveal().numpy() / y.encoder.scale, "s": s.reveal().numpy(),
           "small": small.reveal().numpy()}
    return out if rank == 0 else None


KERNELS: dict[str, Callable[..., dict[str, Any]]] = {
    "mean": _moments,
    "variance": _moments,
    "correlation": _correlation,
    "linear": _linear,
    "logistic": _logistic,
    "positions": _positions,
}


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
    "secure": secure,
    "check": check,
    "provider": provider,
}

