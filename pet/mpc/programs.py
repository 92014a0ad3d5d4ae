"""What the parties compute together, run inside each party process.

Inputs are fixed-point encoded here, not by CrypTen: CrypTen's encoder goes through
float32 on decoding, which rounds counts above 2²⁴ (16.7 million), so values are scaled
to int64 with numpy in float64, shared with precision 0, and revealed raw.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from pet.crypten_shim import dealt_ahead
from pet.mpc import kernels
from pet.mpc.fixed_point import (
    LIMB_BITS,
    LOW_BITS,
    MAP_BITS,
    MEAN_GAP,
    SUMMED,
    TRUNCATION_BITS,
    low_bits,
    moment_precision,
)
from pet.mpc.fixed_point import precision as fixed_precision
from pet.mpc.parties import ASKED_BYTES
from pet.queries.tables import rank


def share_sum(crypten: Any, rank: int, world: int, value: bytes,
              public: dict[str, Any], memory: dict[str, Any]) -> dict[str, int]:
    """Secret-share every party's vector and add the shares; the sum stays shared (in
    `memory`) for the next program. `public["scale"]` is the fixed-point scale. With
    `public["low"]` each party also shares what its rounding to that scale left, in
    units of 2^-LOW_BITS of it (the low limb): secure programs divide the sums of few
    rows with it (see `_per_row`), where the sites' rounding would otherwise dominate.

    Each input carries, before its numbers, the digest of the query round it answers (its
    site put it there); the parties compare digests first and share nothing unless all
    answer the same round, so no one can add one site's partial to others' empty ones
    and reveal it."""
    communicator = crypten.communicator.get()
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
    scaled = vector * public["scale"]  # exact: the scale is a power of two
    encoded = np.rint(scaled)
    memory["total"] = _share(crypten, rank, world, encoded)
    memory["low"] = (_share(crypten, rank, world, np.rint((scaled - encoded) * 2.0**LOW_BITS))
                     if public.get("low") else None)
    return _stats(communicator)


def _share(crypten: Any, rank: int, world: int, encoded: np.ndarray) -> Any:
    """The sum of every party's whole-number vector, secret-shared."""
    mine = torch.from_numpy(encoded.astype(np.int64))
    total = None
    for source in range(world):
        share = crypten.cryptensor(mine if source == rank else torch.zeros_like(mine),
                                   src=source, precision=0)
        total = share if total is None else total + share
    return total


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

    Kernels that divide run on two groups of `public["copies"]` copies of their inputs,
    each copy with its own truncation randomness, and reveal per group the sum of its
    copies' main output and flags (`_group_sums`) and its first copy's other outputs: the
    analyst's side sees a (rare) wrong truncation as the groups' disagreement and runs the
    program again. With several copies a group also reveals how far its copies' answers
    spread (`_squared_deviations`), from which the answer's error bound follows, and never
    the copies themselves.
    """
    scale = int(public["scale"])
    total, low = memory["total"], memory.get("low")
    # What the kernel asks the dealer for follows from these alone: it never branches on
    # a secret, and n moves only the values it divides and multiplies by (its precision
    # stays above 0, so every product truncates). From the second run of a shape,
    # whatever its rows, the dealer's material comes in one exchange, asked for before n
    # is revealed and read while it is.
    shaping = {k: v for k, v in public.items() if k not in MULTIPLIERS}
    with dealt_ahead(("secure", shaping, tuple(total.size()),
                      None if low is None else tuple(low.size()))):
        head = total[: public["head"]].reveal()
        n = int(head[0]) // scale  # a count: exact in fixed point
        # Too few rows reveal nothing more, but the kernel still runs (on n raised to the
        # least it takes) so that every party draws the material dealt for it.
        shown = _kernel(crypten, total, low, max(n, public["min_rows"]),
                        scale.bit_length() - 1, public)
    outputs: dict[str, Any] = {"head": head.numpy(), "values": None}
    if n >= public["min_rows"]:
        outputs["values"] = _revealed(crypten, shown)
    return {**outputs, **_stats(crypten.communicator.get())}


def _revealed(crypten: Any, shown: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """Every output's raw integers at party 0 (None at the others), in one exchange: the
    parties send all their shares at once, where revealing output by output took a
    round each (seven for a linear regression)."""
    raw = crypten.communicator.get().reduce([v.share for v in shown.values()], 0,
                                            batched=True)
    return None if raw is None else {name: r.numpy() for name, r in zip(shown, raw,
                                                                         strict=True)}


def _kernel(crypten: Any, total: Any, low: Any, n: int, bits: int,
            public: dict[str, Any]) -> dict[str, Any]:
    """The query's kernel on the shared sums, and what it shows of its copies: each
    group's sum or first copy of each output, and the copies' spread (see `secure`)."""
    values = KERNELS[public["kind"]](crypten, total, low, n, bits, public)
    copies = public.get("copies", 0)
    if not copies:
        return values
    shown = {name: _group_sums(v, copies) if name in SUMMED else v[::copies]
             for name, v in values.items()}
    if copies > 1:
        shown["deviations"] = _squared_deviations(crypten, values["values"], public)
    return shown


MULTIPLIERS = frozenset({"beta", "offset"})
"""Public numbers a kernel only multiplies or adds by (a Cox round's coefficients): every
value of them asks the dealer for the same material, so a Newton round takes what the
first round recorded."""


def _group_sums(x: Any, copies: int) -> Any:
    """The sum of each group's `copies` copies (leading axis): the shares' sums, exact."""
    return x.view(2, copies, *x.size()[1:]).sum(1)


def _squared_deviations(crypten: Any, values: Any, public: dict[str, Any]) -> Any:
    """Per group and per number, Σ_k (v_k − m)² over the group's copies v_k of the main
    output, in raw units squared and in limbs: Σh², Σh·l and Σl² for each deviation
    h·2^LIMB_BITS + l, m being the group's mean truncated to its precision (which adds
    copies·(m − mean)² to the sum, a conservative hair). With a public integer map
    `numbers` (rows: the answer's numbers as combinations of the outputs, such as a
    fit's coefficients in original units, each row scaled by the backend to
    2^MAP_BITS) the mapped numbers follow the outputs, shifted back down by 2^MAP_BITS.

    Deviations are differences of copies, exact; an ill-conditioned fit's reach 2^24 raw
    units and more, whose squares would pass the ring, so each is split at a truncation
    (h within a few units of d/2^LIMB_BITS, l = d − h·2^LIMB_BITS exactly) and the
    limbs' products are summed: exact for deviations below 2^40."""
    copies = public["copies"]
    groups = values.view(2, copies, -1)
    deviations = groups - groups.sum(1, keepdim=True).div(copies)
    raw = crypten.mpc.MPCTensor.from_shares(deviations.share, precision=0)
    if public.get("numbers") is not None:
        mapped = raw.matmul(torch.tensor(public["numbers"], dtype=torch.int64).T)
        raw = crypten.cat([raw, mapped.div(2**MAP_BITS)], -1)
    high = raw.div(2**LIMB_BITS)
    low = raw - high * 2**LIMB_BITS
    return (crypten.cat([high, high, low], -1) * crypten.cat([high, low, low], -1)).sum(1)


def _copies(crypten: Any, x: Any, count: int) -> Any:
    """`count` copies of a shared tensor (a new leading axis), each re-randomised by a
    fresh sharing of zero: CrypTen truncates each share on its own, deterministically, so
    identical shares would err identically and the copies' spread would miss that error."""
    stacked = crypten.stack([x] * count)
    zero = crypten.mpc.primitives.ArithmeticSharedTensor.PRZS(stacked.size())
    stacked.share = stacked.share + zero.share
    return stacked


def _count(public: dict[str, Any]) -> int:
    """How many copies a copied kernel computes: two groups of `public["copies"]`."""
    return 2 * public["copies"]


def _per_row(crypten: Any, total: Any, low: Any, span: tuple[int, int], n: int,
             bits: int, count: int) -> Any:
    """The blocks in `span` divided by n, at `precision(n)` fractional bits, in `count`
    copies (leading axis): values of at most 1 per row land in [-1, 1] (see `_quotients`)."""
    digits = fixed_precision(n)
    raw = _quotients(crypten, total, low, span, n, bits, np.full(span[1] - span[0], digits),
                     count)
    return crypten.mpc.MPCTensor.from_shares(raw.share, precision=digits)


def _quotients(crypten: Any, total: Any, low: Any, span: tuple[int, int], n: int, bits: int,
               digits: np.ndarray, count: int) -> Any:
    """The blocks in `span` divided by n, element i at digits[i] fractional bits, in
    `count` copies (`_copies`), raw: one truncation each, by a public divisor per
    element. The low limb, where there is one and n is small enough (`low_bits`), joins
    the sum first (hi·2^L + low, exact), so that the sites' rounding is 2^-L of what it
    was; a sum with fewer fractional bits than its quotient keeps is shifted up, exactly,
    so that the quotient keeps every bit the per-row value carries."""
    extra = low_bits(n, bits) if low is not None else 0
    sums = total[span[0]:span[1]]
    if extra:
        sums = sums * 2**extra + low[span[0]:span[1]]
    up = np.maximum(digits - bits - extra, 0)
    down = np.maximum(bits + extra - digits, 0)
    copies = _copies(crypten, sums, count)
    if np.any(up):
        copies = copies * torch.from_numpy(2**up)
    return copies.div(torch.from_numpy(n * 2**down))


def _moments(crypten: Any, total: Any, low: Any, n: int, bits: int,
             public: dict[str, Any]) -> dict[str, Any]:
    """Means of scaled values ("values"), or (Σx²/n − mean²) for each pair ("fine"); the
    public factor n / (n − 1) is applied after the reveal.

    For the difference, the means are divided at `moment_precision(n)` bits (up to 31),
    MEAN_GAP bits finer than the means of products, so that their error, which the
    product doubles, adds little. Every step works on the raw integers (precision 0),
    where CrypTen neither scales a public factor nor truncates a product: the difference
    is exact, masked in its low bits (`_masked`) and revealed at 2^-(2·moment_precision),
    below 2^62 in magnitude."""
    start, width = public["sums"][0], public["sums"][1] - public["sums"][0]
    if public["kind"] == "mean":
        return {"values": _per_row(crypten, total, low, public["sums"], n, bits,
                                   _count(public))}
    stop = public["squares"][1]
    fine = moment_precision(n)
    digits = fine - MEAN_GAP
    precisions = np.array([fine] * width + [digits] * (stop - start - width))
    raw = _quotients(crypten, total, low, (start, stop), n, bits, precisions, _count(public))
    sums, squares = raw[:, :width], raw[:, width:]
    rows, cols = public["pairs"]
    exact = squares * 2 ** (2 * fine - digits) - sums[:, rows] * sums[:, cols]
    return {"fine": _masked(exact, 2 * fine - digits)}


def _masked(x: Any, bits: int) -> Any:
    """x plus a secret whole number below 2^(bits−1) in magnitude from each party.

    An exact difference A·2^bits − mean_i·mean_j would, opened, give away
    mean_i·mean_j modulo 2^bits (its low bits), and so the means themselves (a square
    root modulo 2^bits leaves a handful of candidates). Each party adds its own uniform
    number to its share: whoever lacks one of them sees those bits uniformly at random.
    The value moves by less than parties/2 units of 2^bits, which the bound covers.
    The numbers come from the operating system's generator, as keys do."""
    count = int(np.prod(x.share.shape))
    draws = np.frombuffer(os.urandom(8 * count), dtype=np.int64) >> (64 - bits)
    x.share = x.share + torch.from_numpy(draws.reshape(tuple(x.share.shape)).copy())
    return x


def _covariances(crypten: Any, total: Any, low: Any, n: int, bits: int,
                 public: dict[str, Any]) -> Any:
    """(Σx_i·x_j/n − mean_i·mean_j) for each pair, at the programs' precision."""
    sums, squares = _sums_and_squares(crypten, total, low, n, bits, public)
    rows, cols = public["pairs"]
    return squares - sums[:, rows] * sums[:, cols]


def _sums_and_squares(crypten: Any, total: Any, low: Any, n: int, bits: int,
                      public: dict[str, Any]) -> tuple[Any, Any]:
    """The sums and the squares (or cross products) of a moments layout, per row: the two
    blocks are adjacent, so one division serves both."""
    start, width = public["sums"][0], public["sums"][1] - public["sums"][0]
    moments = _per_row(crypten, total, low, (start, public["squares"][1]), n, bits,
                       _count(public))
    return moments[:, :width], moments[:, width:]


def _correlation(crypten: Any, total: Any, low: Any, n: int, bits: int,
                 public: dict[str, Any]) -> dict[str, Any]:
    """Correlations of every pair: c_ij · r_i · r_j with r = 1/√c_ii, the inverse square
    root normalised by powers of four. Also reveals Σ_i 4^m_i (each variance's power of
    four, summed), from which the error bound follows, and how many variances were too
    small to normalise (the query is then refused)."""
    covariance = _covariances(crypten, total, low, n, bits, public)
    diagonal = covariance[:, public["diagonal"]]
    y, s, small = kernels.inv_sqrt(diagonal, public["steps"])
    rows, cols = public["pairs"]
    exact = covariance * (s[:, rows] * s[:, cols])  # integers: no truncation
    return {"values": exact * (y[:, rows] * y[:, cols]), "spread": (s * s).sum(-1),
            "small": small.sum(-1)}


def _linear(crypten: Any, total: Any, low: Any, n: int, bits: int,
            public: dict[str, Any]) -> dict[str, Any]:
    """Least squares inside MPC from XᵀX/n, Xᵀy/n and yᵀy/n (see `_solve`); also
    reveals the residual and total sums of squares per row."""
    p = public["terms"]
    moments = _per_row(crypten, total, low, public["span"], n, bits, _count(public))
    triangle = p * (p + 1) // 2
    tri, xty, yty = moments[:, :triangle], moments[:, triangle:-1], moments[:, -1]
    mean = xty[:, 0]  # ȳ, the intercept's column being 1

    def sums(z: Any, rhs: Any) -> list[tuple[Any, Any]]:  # βᵀ·Xᵀy/n = zᵀ·D·Xᵀy/n, and ȳ²
        return [(z, rhs), (mean, mean)]

    solved, (fitted, square) = _solve(crypten, tri, xty, public, sums)
    total_ss = yty - square if public["intercept"] else yty
    return {**solved, "rss": yty - fitted.sum(-1), "tss": total_ss}


def _logistic(crypten: Any, total: Any, low: Any, n: int, bits: int,
              public: dict[str, Any]) -> dict[str, Any]:
    """One Newton step inside MPC from the gradient and Hessian per row at the round's
    public coefficients (see `_solve`); also reveals the log-likelihood's sum, exactly."""
    p = public["terms"]
    moments = _per_row(crypten, total, low, public["span"], n, bits, _count(public))
    solved, _ = _solve(crypten, moments[:, p:], moments[:, :p], public)
    start, stop = public["log_likelihood"]
    return {**solved, "log_likelihood": crypten.stack([total[start:stop]] * _count(public))}


def _solve(crypten: Any, tri: Any, rhs: Any, public: dict[str, Any],
           also: Callable[[Any, Any], list[tuple[Any, Any]]] | None = None,
           ) -> tuple[dict[str, Any], list[Any]]:
    """Solve A·x = b for A positive definite (its upper triangle `tri`, per row, so every
    entry within [-1, 1]): equilibrate (`kernels.equilibrate`: a diagonal within
    [0.708, 1)), then Gauss–Jordan on [A' | D·b·2^-shift | D·a₀ | I], t = D·a₀ for the
    intercept's variance. The right-hand side is shifted down by a public power of two
    because D·b, unlike D·A·D, has no bound of 1 (a gradient is not bounded by the
    Hessian's diagonal). Pivots are flagged below 2^-(steps + 1): each is at least 0.708
    of the unit-diagonal matrix's, so every system whose unit-diagonal pivots reach
    2^-steps is solved.

    The other copies of a group solve [A' | D·b·2^-shift] alone (the rest of their
    matrix is zero): only each group's first copy's inverse is revealed, and the large
    entries of an inverse are where a truncation is likeliest to go wrong.

    Reveals x ("values"), diag(A⁻¹), a₀ᵀA⁻¹a₀, how many values were too small to
    normalise (the query is then refused) and, where `public["residual"]` asks, the
    solver's residual in the equilibrated, shifted system (rounding noise, for a
    worst-case error bound: it shows the rounding of one copy). Returns also the
    products of the pairs that `also` makes of the shared z and D·b (shifted), in the
    same rounds as the outputs' own."""
    p, shift = public["terms"], public["shift"]
    full = tri[:, public["square"]].view(-1, p, p)
    first = torch.zeros(full.size(0), dtype=torch.float64)
    first[::public["copies"]] = 1.0  # only each group's first copy's inverse is revealed
    a0 = (rhs - rhs) + first.unsqueeze(-1) * torch.tensor(public["corner"])  # shared, public
    system = kernels.equilibrate(full, public["steps"], (rhs, a0))
    scaled, factor, (rhs, corner) = system.matrix, system.factor, system.vectors
    rhs = rhs.div(2**shift) if shift else rhs  # D·b·2^-shift; corner is D·a₀
    identity = (scaled - scaled) + first.view(-1, 1, 1) * torch.eye(p, dtype=torch.float64)
    augmented = crypten.cat([scaled, rhs.unsqueeze(-1), corner.unsqueeze(-1), identity], -1)
    solved, tiny = kernels.gauss_jordan(augmented, public["steps"] + 1)
    z, w, inverse = solved[..., 0], solved[..., 1], solved[..., 2:]
    terms = list(range(p))
    residual, covariance = public.get("residual"), public.get("covariance")
    # Two rounds of products (three for the whole inverse), each holding every product
    # whose factors are known.
    values, diagonal, spread, *rest = kernels.products([
        (z, factor), (inverse[:, terms, terms], system.y_squared), (corner, w),
        *(also(z, rhs) if also else []), *([(scaled, z.unsqueeze(-2))] if residual else []),
        *([(inverse, factor.unsqueeze(-1))] if covariance else [])])
    half = rest.pop() if covariance else None
    diagonal, *whole = kernels.products([
        (diagonal, system.s_squared), *([(half, factor.unsqueeze(-2))] if covariance else [])])
    extra = rest[:len(rest) - bool(residual)]
    outputs = {"values": values * 2**shift, "diagonal": diagonal, "corner": spread.sum(-1),
               "small": system.small + tiny}
    if residual:  # for a worst-case bound, where copies do not measure one
        outputs["residual"] = rest[-1].sum(-1) - rhs
    if covariance:  # the whole inverse, for a joint (Wald) test
        outputs["inverse"] = whole[0]
    return outputs, extra


def _cox(crypten: Any, total: Any, low: Any, n: int, bits: int,
         public: dict[str, Any]) -> dict[str, Any]:
    """One Newton step of a Cox model inside MPC (see `pet.queries.cox`), from the shared
    sums per stratum and grid time; reveals the step (see `_solve`), the log partial
    likelihood per row, and in the closing round the inverse information, the number
    of events and the concordance counts.

    Each risk-set sum S0 (a raw sum, at most 2^TRUNCATION_BITS) is brought into [1/2, 1)
    by a secret power of two 2^m, found by comparing it with public powers of two, and
    S1, S2 are scaled by the same power (|S1|, |S2| ≤ S0), so that the ratios S1/S0 and
    S2/S0 lose no precision however small a late risk set is. Reveals also how many
    events have a risk set with fewer than `RISK_BITS` significant bits (then refused)."""
    g, k, p = public["strata"], public["grid"], public["terms"]
    rows, cols = public["pairs"]
    digits = fixed_precision(n)

    def at_risk(name: str, width: int) -> Any:
        start, stop = public[name]
        cells = total[start:stop].view(g, k, width)
        return cells.sum(1, keepdim=True) - cells.cumsum(1) + cells  # Σ over later times

    sums = crypten.cat([at_risk("s0", 1), at_risk("s1", p), at_risk("s2", len(rows))], -1)
    power = TRUNCATION_BITS - 1
    bits_below = kernels.below(sums[..., 0], torch.tensor(
        [2 ** (TRUNCATION_BITS - j) for j in range(1, power + 1)]))
    m = bits_below.sum(-1)  # S0·2^m in [2^(46-1), 2^46): its top bit is bit 45
    scaled = _copies(crypten, sums * kernels.power_of_two(bits_below).unsqueeze(-1),
                     _count(public))
    scaled = crypten.mpc.MPCTensor.from_shares(
        scaled.div(2 ** (TRUNCATION_BITS - digits)).share, precision=digits)
    ratios = scaled[..., 1:] * kernels.newton_reciprocal(scaled[..., 0]).unsqueeze(-1)
    r1, r2 = ratios[..., :p], ratios[..., p:]
    counts = _per_row(crypten, total, low, (public["events"][0], public["event_x"][1]), n,
                      bits, _count(public))
    d, e = counts[:, :g * k].view(2, g * k, 1), counts[:, g * k:].view(2, g * k, p).sum(1)
    r1, r2 = r1.view(2, g * k, p), r2.view(2, g * k, -1)
    score = e - (d * r1).sum(1)
    information = (d * (r2 - r1[..., rows] * r1[..., cols])).sum(1)
    solved, _ = _solve(crypten, information, score, public)
    # log S0 = log w + (46 − m − bits)·log 2, and ℓ/n = βᵀE/n − Σ d/n·(log S0 + ‖β‖₁)
    d = d.view(2, g * k)
    log_w = kernels.log_normalised(scaled[..., 0].view(2, g * k))
    shifted = (d * m.view(g * k)).sum(-1) * math.log(2)  # m is an integer: exact product
    constant = (TRUNCATION_BITS - bits) * math.log(2) + public["offset"]
    log_likelihood = ((e * torch.tensor(public["beta"])).sum(-1) - (d * log_w).sum(-1)
                      + shifted - d.sum(-1) * constant)
    start, stop = public["events"]
    imprecise = (bits_below[..., power - RISK_BITS] * total[start:stop].view(g, k)).sum()
    outputs = {**solved, "log_likelihood_per_row": log_likelihood,
               "imprecise": crypten.stack([imprecise] * 2)}
    if public["closing"]:
        outputs.update(_concordance(crypten, total, bits, public))
    return outputs


RISK_BITS = 4
"""Fewest significant bits a risk-set sum with events may have inside MPC (S0 ≥ 2^4 raw
units of the layout's scale): below that its ratios would be mostly rounding."""


def _concordance(crypten: Any, total: Any, bits: int, public: dict[str, Any]) -> dict[str, Any]:
    """Twice the concordant pairs (ties count one) and the comparable pairs, from events
    by (grid time, score bin) and censored rows by (last time at risk, bin): exact
    products of counts, revealed as raw sums at the layout's scale (two copies)."""
    bins = public["bins"]

    def counts(name: str) -> Any:
        start, stop = public[name]
        return total[start:stop].view(-1, bins)

    events, censored = counts("c_events"), counts("c_censored")
    later = events.sum(0, keepdim=True) - events.cumsum(0)
    survivors = later + censored.sum(0, keepdim=True) - censored.cumsum(0) + censored
    whole = crypten.mpc.MPCTensor.from_shares(
        exact_quotient(crypten, crypten.stack([survivors] * 2), 2**bits).share, precision=0)
    below = whole.cumsum(-1) * 2 - whole
    pairs = crypten.stack([events] * 2)
    return {"concordant": (pairs * below).view(2, -1).sum(-1),
            "comparable": (pairs * whole.sum(-1, keepdim=True)).view(2, -1).sum(-1),
            "events": crypten.stack([events.sum()] * 2)}


def exact_quotient(crypten: Any, x: Any, divisor: int) -> Any:
    """x / divisor for a shared x known to be a whole multiple of the public divisor (a
    count at the layout's scale), exactly.

    CrypTen's truncation divides each share on its own, so its result falls short by
    Σ r_i / divisor, r_i each share's remainder: up to one unit per party, which a sum
    of counts must not lose. The parties add up their remainders (uniformly random
    numbers: their sum says nothing of x but for a chance of |x|/2^63) and party 0 adds
    the shortfall back."""
    communicator = crypten.communicator.get()
    share = x.share
    remainder = share - torch.div(share, divisor, rounding_mode="trunc") * divisor
    shortfall = communicator.all_reduce(remainder) // divisor
    result = x.div(divisor)
    if communicator.get_rank() == 0:
        result.share += shortfall
    return result


def _positions(crypten: Any, total: Any, low: Any, n: int, bits: int,
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
           "small": small.reveal().numpy(), **_stats(crypten.communicator.get())}
    return out if rank == 0 else None


KERNELS: dict[str, Callable[..., dict[str, Any]]] = {
    "mean": _moments,
    "variance": _moments,
    "correlation": _correlation,
    "linear": _linear,
    "logistic": _logistic,
    "cox": _cox,
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

