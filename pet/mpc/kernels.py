"""Secure numeric kernels on CrypTen tensors, run inside the party processes.

CrypTen's reciprocal, square root and division are Newton iterations valid only on a
limited input range, and silently return garbage outside it. These kernels first bring
each secret input into a fixed interval by a secret power of two, found by comparing the
input with public thresholds, then run a few Newton steps from a linear start, so
that the error is the same small multiple of 2^-precision for every input the range
admits. A power of two is kept as a precision-0 (integer) tensor: CrypTen multiplies by
those without truncating, so normalising adds no error.

Values entering Beaver products stay within a few units, so that their raw products stay
below about 2^46 (see TRUNCATION_BITS in pet.backends.mpc).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from pet.mpc.fixed_point import EQUILIBRATED

RECIPROCAL_START = (4 * math.sqrt(3) - 4, 2)
"""1/w ≈ a − 2w on [1/2, 1]: a whole slope costs no truncation (a round a division, where
the minimax slope 32/17 took one), and the best a for it, 4√3 − 4, leaves a relative
error of at most 7 − 4√3 ≈ 0.072 (against 1/17), which an eighth-order step brings below
2^-30 (`newton_reciprocal`)."""
INV_SQRT_START = (2.13277, 1.21873)
"""1/√w ≈ a − b·w on [1/4, 1], relative error at most 0.086; three Newton steps give 2^-24."""
NEWTON_STEPS = 3


def below(x: Any, thresholds: torch.Tensor) -> Any:
    """Precision-0 bits [x < t] for every element of x and every public threshold t (last
    axis), by one vectorised secure comparison.

    The difference is compared as a raw integer (precision 0): CrypTen's comparison of a
    fixed-point tensor assumes its default precision and returns zeros at any other. A
    threshold finer than x's encoding (at large n, per-row values keep fewer fractional
    bits) is raised to its one unit, which would otherwise encode to 0 and leave a value
    that rounded to 0 unflagged.
    """
    difference = x.unsqueeze(-1) - thresholds.clamp(min=1.0 / x.encoder.scale)
    return type(x).from_shares(difference.share, precision=0)._ltz()


def normalise(x: Any, base_bits: int, steps: int) -> tuple[Any, Any, Any]:
    """For x in (0, 1]: (w, 2^m, small) with w = x·2^(base_bits·m) in [2^-base_bits, 1),
    m the number of thresholds 2^(-base_bits·j), j = 1..steps, above x, and `small` the bit
    [x < 2^(-base_bits·steps)], set where x is too small to normalise.

    The comparison bits b_j are monotone in j, so 2^(k·m) = 1 + Σ_j b_j·(2^(k·j) − 2^(k·(j−1)))
    is a public linear combination of them: forming a factor takes no secure product.
    """
    bits = exponent_bits(x, base_bits, steps)
    return x * _power(bits, base_bits), _power(bits, 1), bits[..., -1]


def exponent_bits(x: Any, base_bits: int, steps: int) -> Any:
    """The comparison bits [x < 2^(-base_bits·j)], j = 1..steps, that `normalise` takes
    its power from (monotone in j)."""
    return below(x, torch.tensor([2.0 ** (-base_bits * j) for j in range(1, steps + 1)]))


def power_of_two(bits: Any) -> Any:
    """2^m from the monotone comparison bits (of `below`) whose sum is m."""
    return _power(bits, 1)


def _power(bits: Any, k: int) -> Any:
    """2^(k·m) from the monotone bits whose sum is m (an integer tensor)."""
    steps = bits.size(-1)
    jumps = torch.tensor([2 ** (k * j) - 2 ** (k * (j - 1)) for j in range(1, steps + 1)])
    return (bits * jumps).sum(-1) + 1


def reciprocal(x: Any, steps: int) -> tuple[Any, Any, Any]:
    """1/x for x in [2^-steps, 1] as (y, s, small): 1/x = s·y with y in [1, 2] and s a
    power of two (integer tensor); `small` marks inputs below the range."""
    w, s, small = normalise(x, 1, steps)
    return newton_reciprocal(w), s, small


def newton_reciprocal(w: Any) -> Any:
    """1/w for w in [1/2, 1]: the linear start y (`RECIPROCAL_START`), then
    y·(1 + e)(1 + e²)(1 + e⁴) with e = 1 − w·y, which is (1 − e⁸)/w: the error three
    Newton steps leave (e⁸, below 2^-30), in four rounds of products where they take
    six, since each factor's product and the next power of e share one. Carrying a
    numerator x through these products (x·y·(1 + e)…, the quotient without the product
    x·y after) would save a round of products, but put x through four truncations where
    it has one: the copies of a logistic fit on breast cancer spread a third wider, and
    one fit in three came out too far from its maximum to be bounded."""
    a, b = RECIPROCAL_START
    y = a - w * b
    e = 1 - w * y
    for _ in range(2):
        y, e = products([(y, 1 + e), (e, e)])
    return y * (1 + e)


LOG_TERMS = 12
"""Terms of log(1 + v) = v − v²/2 + … for |v| ≤ 1/3: the first omitted one is below 2^-22."""


def log_normalised(w: Any) -> Any:
    """log w for w in [1/2, 1]: log(3/4) + log(1 + v), v = (w − 3/4)/(3/4) in [−1/3, 1/3],
    by the series' first `LOG_TERMS` terms in Horner form (a secure product each)."""
    v = (w - 0.75) * (4 / 3)
    total = v * 0.0 + (-1.0) ** (LOG_TERMS + 1) / LOG_TERMS
    for k in range(LOG_TERMS - 1, 0, -1):
        total = total * v + (-1.0) ** (k + 1) / k
    return total * v + math.log(0.75)


def inv_sqrt(x: Any, steps: int) -> tuple[Any, Any, Any]:
    """1/√x for x in [4^-steps, 1] as (y, s, small): 1/√x = s·y with y in [1, 2] and s a
    power of two (integer tensor); `small` marks inputs below the range."""
    w, s, small = normalise(x, 2, steps)
    half = w * 0.5
    a, b = INV_SQRT_START
    y = a - w * b
    for _ in range(NEWTON_STEPS):
        y = y * (1.5 - half * (y * y))
    return y, s, small


def products(pairs: Sequence[tuple[Any, Any]]) -> list[Any]:
    """Each pair's product a·b as CrypTen's `a * b` gives it (truncated by a's scale where
    both are fixed point, encoded as a, or as b where a is an integer tensor), all in one
    Beaver exchange and at most one truncation: k independent products, one by one, take
    a round each and a truncation's round each where they are fixed point."""
    mpc = type(pairs[0][0])
    shapes = [torch.broadcast_shapes(a.size(), b.size()) for a, b in pairs]
    truncated = [a.encoder.scale > 1 and b.encoder.scale > 1 for a, b in pairs]
    order = sorted(range(len(pairs)), key=lambda i: not truncated[i])  # truncated first

    def flat(side: int) -> Any:
        return mpc.from_shares(torch.cat([pairs[i][side].share.expand(shapes[i]).reshape(-1)
                                          for i in order]), precision=0)

    raw = flat(0) * flat(1)  # integer shares: one exchange, no truncation
    sizes = [math.prod(shapes[i]) for i in order]
    cut = sum(size for i, size in zip(order, sizes, strict=True) if truncated[i])
    shares = raw.share
    if cut:
        divisors = torch.cat([torch.full((size,), int(pairs[i][0].encoder.scale))
                              for i, size in zip(order, sizes, strict=True) if truncated[i]])
        shares = torch.cat([raw[:cut].div(divisors).share, shares[cut:]])
    pieces = dict(zip(order, torch.split(shares, sizes), strict=True))
    return [mpc.from_shares(pieces[i].view(shapes[i]), precision=_bits(a if a.encoder.scale > 1
                                                                      else b))
            for i, (a, b) in enumerate(pairs)]


def _bits(x: Any) -> int:
    """The fractional bits of a CrypTen tensor's encoding."""
    return int(x.encoder.scale).bit_length() - 1


class Equilibrated(NamedTuple):
    """What `equilibrate` returns: D·A·D; D's diagonal (`factor`, y·s) and its two
    parts squared (y² and s², which scale the inverse's diagonal back with its rounding
    kept small); how many diagonal entries were too small; D·v for each vector asked."""

    matrix: Any
    factor: Any
    y_squared: Any
    s_squared: Any
    small: Any
    vectors: list[Any]


def equilibrate(matrix: Any, steps: int, vectors: Sequence[Any] = ()) -> Equilibrated:
    """D·A·D with D = diag(s_i·y_i) for a positive definite A with diagonal in (0, 1]:
    s_i the power of two that brings a_ii into [1/4, 1) and y_i the minimax linear start
    of its inverse square root divided by EQUILIBRATED[1], so that every diagonal entry
    lands in [(EQUILIBRATED[0] / EQUILIBRATED[1])², 1) = [0.708, 1) and the off-diagonal
    ones within [-1, 1]; each D_i is then at least `LEAST_SCALE`, 0.84. Counts the
    diagonal entries below 4^-steps, and forms D·v for each of `vectors` (last axis A's
    size) in the matrix's rounds (`Equilibrated`).

    Any diagonal D solves the same system (A⁻¹b = D·(DAD)⁻¹·Db). The Newton steps that
    would make the diagonal exactly 1 cost 18 rounds; this leaves each pivot at least
    0.708 of the unit-diagonal one, half a bit, where powers of two alone (a diagonal in
    [1/4, 1)) lost up to two bits and made a logistic fit's copies spread a quarter
    wider."""
    diagonal = list(range(matrix.size(-1)))
    w, s, small = normalise(matrix[..., diagonal, diagonal], 2, steps)
    a, b = INV_SQRT_START
    y = (a / EQUILIBRATED[1]) - w * (b / EQUILIBRATED[1])
    squares, outer, factor, *weighted = products([(s.unsqueeze(-1), s.unsqueeze(-2)),
                                                  (y.unsqueeze(-1), y.unsqueeze(-2)),
                                                  (y, s), *((v, y) for v in vectors)])
    # |a_ij|·s_i·s_j ≤ √(a_ii·a_jj)·s_i·s_j ≤ 1: the integer product needs no truncation
    scaled, *scaled_vectors = products([(matrix, squares), *((v, s) for v in weighted)])
    scaled = scaled * outer
    return Equilibrated(scaled, factor, outer[..., diagonal, diagonal],
                        squares[..., diagonal, diagonal], small.sum(-1), scaled_vectors)


def gauss_jordan(augmented: Any, steps: int) -> tuple[Any, Any]:
    """Reduce [A | B] to [I | A⁻¹·B] for A positive definite and equilibrated
    (`equilibrate`: its diagonal in [0.708, 1), its pivots then in (0, 1)); returns A⁻¹·B
    and the count of pivots after the first below 2^-steps. The first is never checked:
    a diagonal too small to equilibrate is the caller's to flag (`equilibrate` counts
    it), since the reciprocal of an entry outside [1/2, 1] comes out wrong unflagged.

    Each step divides the pivot row by the pivot and subtracts its multiples from every
    row at once: M ← M − (c − e_k)·rᵀ turns the pivot row into r and clears column k
    elsewhere, with two secure products and no indexing. A later pivot, a Schur
    complement as small as A's least eigenvalue, is first brought into [1/2, 1) by a
    secret power of two 2^m (a comparison); r is the row times the normalised pivot's
    reciprocal and 2^m goes onto c instead, in the round that puts it onto the pivot,
    so that it costs no round of its own (the update's product, and its rounding, are
    those of the row scaled by 2^m). The first pivot is A's first diagonal entry, which
    an equilibrated A (`equilibrate`) holds in [0.708, 1): it needs no comparison (12
    rounds of the 22 a later pivot counts). Taking two pivots at once as a 2×2 block
    (adj(P)·R / det P) would save a comparison a pair, but the block's product is
    rounded before it is divided by det P rather than by the first pivot alone, which
    cost 2–3 bits on a regression's coefficients.
    """
    p = augmented.size(-2)
    small = type(augmented).from_shares(torch.zeros_like(augmented.share[..., 0, 0]),
                                        precision=0)
    for k in range(p):
        pivot = augmented[..., k, k]
        column = augmented[..., :, k] - torch.eye(p, dtype=torch.float64)[k]
        if k > 0:
            bits = exponent_bits(pivot, 1, steps)
            power = power_of_two(bits)
            pivot, column = products([(pivot, power), (column, power.unsqueeze(-1))])
            small = small + bits[..., -1]
        row = augmented[..., k, :] * newton_reciprocal(pivot).unsqueeze(-1)
        augmented = augmented - column.unsqueeze(-1) * row.unsqueeze(-2)
    return augmented[..., :, p:], small
