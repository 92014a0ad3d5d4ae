"""The fixed-point encoding of the `mpc` backend: how many fractional bits a layout gets,
and how large the values that secure programs multiply and divide may grow.

CrypTen's division by a public integer with the dealer's wrap counts omits one
correction term and is wrong (by 2^64/divisor) with probability about |x|/2^64 per
element, x the raw value divided. Secure programs therefore keep every divided value
below 2^TRUNCATION_BITS, compute on two groups of copies and compare them (see
`pet.mpc.programs`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from pet.errors import PetError
from pet.layout import Layout

if TYPE_CHECKING:
    from pet.backends.base import Limits

RING_BITS = 62
"""Usable bits of CrypTen's 64-bit ring (a sign bit and one of margin)."""
TRUNCATION_BITS = 46
"""Largest magnitude (in bits) of a raw value that secure programs divide: a wrong
division then has probability about 2^-18 per element, and the copies catch it. Layouts
whose values are at most 1 per row (the ones secure programs read) are scaled to stay
under it; others are only ever summed and revealed, which needs no division."""
MAX_SCALE_BITS = 32
PRODUCT_BITS = 22
"""Fractional bits of values that enter Beaver products: |x| ≤ 2 gives raw products
below 2^46."""


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


SUMMED = frozenset({"values", "small"})
"""Outputs revealed as sums over each group's copies: the answer's numbers, whose mean is
more precise than any copy, and the counts of values too small to normalise, which any
copy may raise. Every other output (standard errors' factors, sums of squares) comes
from each group's first copy, so that a wrong truncation in it shows as the groups'
disagreement rather than hiding in an average."""


MAP_BITS = 12
"""Bits of the whole numbers that map a solution's copies to coefficients inside MPC
(`pet.mpc.programs._squared_deviations`), each row scaled by its own power of two."""
LIMB_BITS = 16
"""The low limb of a copy's deviation when it is squared (`_squared_deviations`): the
squares of deviations below 2^40 raw units, in limbs, stay far inside the ring."""


LOW_BITS = 16
"""Fractional bits the low limb adds to a shared sum (`pet.mpc.programs.share_sum`)."""


def low_bits(n: int, bits: int) -> int:
    """The bits the low limb adds to the sums of n rows that secure programs divide:
    LOW_BITS while n·2^(bits + LOW_BITS) stays below 2^TRUNCATION_BITS (sums of at most
    1 per row), else none, and then the sites' rounding, below 2^-bits/n per row, is
    already far below the programs' resolution."""
    return LOW_BITS if n * 2 ** (bits + LOW_BITS) < 2**TRUNCATION_BITS else 0


EQUILIBRATED = (0.91403, 1.08596)
"""Bounds, rounded outward, on (a − b·w)·√w over [1/4, 1] for the minimax start a − b·w
of 1/√w (`pet.mpc.kernels.INV_SQRT_START`; its least is 0.914040, its largest
1.085951). The least-squares solve scales XᵀX by that start divided by the largest
(`pet.mpc.kernels.equilibrate`), so each of its factors D_i is at least LEAST_SCALE."""
LEAST_SCALE = EQUILIBRATED[0] / EQUILIBRATED[1]


MEAN_GAP = 4
"""Bits by which a (co)variance's means are finer than its means of products, so that
the means' error, which the product doubles, adds an eighth of theirs."""


def moment_precision(n: int) -> int:
    """Fractional bits of the means that a (co)variance subtracts the product of: as many
    as the division allows (n·2^bits below 2^TRUNCATION_BITS) and their exact product
    keeps (2·bits ≤ RING_BITS); its means of products take MEAN_GAP fewer."""
    return max(1 + MEAN_GAP,
               min(RING_BITS // 2, TRUNCATION_BITS - math.ceil(math.log2(n + 1))))


def precision(n: int) -> int:
    """Fractional bits of the per-row values (sums divided by the public n) that secure
    programs compute with: PRODUCT_BITS, unless n is so large that the dividend n·2^bits
    would pass 2^TRUNCATION_BITS. It does not depend on the layout's own scale: a sum
    with few fractional bits is shifted up (exactly) before it is divided."""
    return max(1, min(PRODUCT_BITS, TRUNCATION_BITS - math.ceil(math.log2(n + 1))))
