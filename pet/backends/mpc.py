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

import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special

from pet.backends.base import Aggregate, Backend, Conclusion, Limits, Privacy
from pet.errors import PetError, QueryError
from pet.intervals import BOUND_FAILURE
from pet.layout import Layout
from pet.mpc.fixed_point import (
    LEAST_SCALE,
    LIMB_BITS,
    MAP_BITS,
    MEAN_GAP,
    SUMMED,
    low_bits,
    moment_precision,
    precision,
    scale_bits,
)
from pet.mpc.parties import ASKED_BYTES, Parties, PartyConfig, PartyError, PartySession
from pet.queries import (
    Correlation,
    Covariance,
    Cox,
    ExactQuantiles,
    LinearRegression,
    LogisticRegression,
    Mean,
    Next,
    PoissonRegression,
    Quantiles,
    StdDev,
    Variance,
)
from pet.queries.base import affine, from_upper_triangle
from pet.queries.cox import CoxState
from pet.schema import Schema

CONFIDENTIALITY = ("sites' partials are secret-shared among the sites' parties; only the "
                   "sum is revealed, to the analyst")
SECURE_CONFIDENTIALITY = ("sites' partials are secret-shared; the statistic is computed "
                          "inside MPC and only it (with n and missing counts) is revealed")
MIN_PARTIES = 3
"""With three or more parties CrypTen divides shares using the dealer's wrap counts; with
two it truncates probabilistically, which is occasionally off by 2^32."""
ATTEMPTS = 3
"""Runs of a secure program before its copies' disagreement is reported as a failure."""


class MPC(Backend):
    """Secure multiparty aggregation with CrypTen parties (one per site) and a dealer."""

    name = "mpc"
    finalizes_inside = True

    def __init__(self, *, max_rows_per_site: int = 10**8, max_sites: int = 100,
                 parties: PartyConfig | PartySession | None = None) -> None:
        self.limits = Limits(max_rows_per_site, max_sites)
        if isinstance(parties, PartyConfig | None):
            self.config, self._parties = parties or PartyConfig(), None
            self._owned = True
        else:  # parties run elsewhere (at the sites); their owner starts and ends them
            self.config, self._parties, self._owned = PartyConfig(), parties, False

    def open(self, n_sites: int) -> None:
        """Start one party per site (at least three) and the dealer, unless they run."""
        if n_sites > self.limits.max_sites:
            raise PetError(f"{n_sites} sites exceed this session's max_sites="
                           f"{self.limits.max_sites}")
        parties = self._parties
        if not self._owned:
            if parties is None or parties.n != n_sites or not parties.alive:
                raise PartyError("the MPC session given to this backend has ended or does "
                                 f"not have one party for each of the {n_sites} sites")
            return
        if parties is not None and parties.alive and parties.n == max(n_sites, MIN_PARTIES):
            return
        self.close()
        start = time.perf_counter()
        self._parties = Parties(max(n_sites, MIN_PARTIES), self.config)
        self.startup_s = time.perf_counter() - start

    def close(self) -> None:
        if self._parties is not None and self._owned:
            self._parties.close()
            self._parties = None

    def protect(self, partial: np.ndarray, layout: Layout) -> bytes:
        """The site's private input to its own party (never sent to the coordinator: a site
        server keeps it and hands it to its party itself), after room for the digest of
        the query round it answers: zeros on one host, where every input answers the same
        round; a site server writes its own digest there."""
        self.limits.check(partial, layout)
        return bytes(ASKED_BYTES) + np.ascontiguousarray(partial, dtype="<f8").tobytes()

    def combine(self, messages: Sequence[bytes], layout: Layout) -> bytes:
        """Secret-share the sites' inputs among the parties and add the shares; the sum
        stays shared. The message records the scale and each site's bytes so far."""
        parties = self._session(len(messages))
        # Fewer than three sites: empty parties join, so that there are always three.
        empty = bytes(ASKED_BYTES + 8 * layout.size)
        inputs = [*messages, *[empty] * (parties.n - len(messages))]
        bits = scale_bits(layout, self.limits)
        outputs = parties.run("share_sum", inputs, self.share_public(layout))
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
        """Finalize inside MPC where pet knows how (see `SECURE`: only n, the missing
        counts and the answer are revealed); otherwise reveal the sum and finalize it in
        the clear. A secure program whose two groups of copies disagree (a rare
        truncation error) is run again; its answers are withheld if that keeps
        happening."""
        secure = SECURE.get(type(query))
        if secure is None:
            return super().conclude(query, schema, state, combined, layout)
        bits, rounds, n_sites, sent = _unpack(combined)
        schema = query.bounded(schema)
        public = self.secure_public(query, schema, layout, state)
        spent = np.array(sent)
        for _ in range(ATTEMPTS):
            outputs = self._run("secure", n_sites, public)
            spent += [int(o["bytes"]) for o in outputs[:n_sites]]
            rounds += outputs[0]["rounds"]
            head = np.rint(outputs[0]["head"] / 2.0**bits)
            if outputs[0]["values"] is None:
                raise QueryError(f"{query.describe()}: too few complete rows ({head[0]:g}) "
                                 "at all sites together for this statistic")
            rows = int(head[0])
            units = Units.of(self._session(n_sites).n, n_sites, rows, bits,
                             low=not layout.integer)
            values, digits = outputs[0]["values"], precision(rows)
            groups = secure.groups(values, digits, moment_precision(rows), bits)
            answers = _answers(secure, query, schema, state, groups, head[0], units)
            if answers is not None and _agree(answers) and secure.steady(values):
                value, bound = (answers[0] if secure.copies < 2 else secure.answer(
                    query, schema, state, secure.pooled(groups, values, digits), head[0],
                    units))
                bounds = (np.zeros(0) if isinstance(value, Next) else
                          np.broadcast_to(bound, _numbers(value).shape).astype(np.float64))
                return Conclusion(value, head, bounds, Privacy(SECURE_CONFIDENTIALITY),
                                  tuple(spent.tolist()), rounds)
        raise PetError(f"{query.describe()}: the secure computation failed its consistency "
                       f"check {ATTEMPTS} times; no answer was released")

    def hides_sums(self, query: Any) -> bool:
        """A query finalized inside MPC reveals only its head and its answer: a site
        serves such a round `share_sum` and `secure` alone, never `reveal_sum`."""
        return type(query) in SECURE

    def programs(self, query: Any, schema: Schema, state: Any) -> dict[str, dict[str, Any]]:
        """share_sum, then `secure` for the queries finalized inside MPC (never revealing
        their sums) or `reveal_sum` for the others."""
        layout = query.layout(schema, state)
        if type(query) in SECURE:
            return {"share_sum": self.share_public(layout),
                    "secure": self.secure_public(query, schema, layout, state)}
        return {"share_sum": self.share_public(layout), "reveal_sum": {}}

    def share_public(self, layout: Layout) -> dict[str, Any]:
        """share_sum's public parameters: the layout's fixed-point scale and size, and
        whether the sums are real (then a low limb is shared too, for secure programs)."""
        return {"scale": 2.0**scale_bits(layout, self.limits), "size": layout.size,
                "low": not layout.integer}

    def secure_public(self, query: Any, schema: Schema, layout: Layout,
                      state: Any = None) -> dict[str, Any]:
        """The `secure` program's public parameters: the scale, the head revealed first
        (n and the missing counts), the kernel and its inputs."""
        secure = SECURE[type(query)]
        head_size = layout.head(np.zeros(layout.size)).size
        copies = {} if secure.exact else {"copies": secure.copies}
        return {**self.share_public(layout), "head": head_size, "kind": secure.kind,
                "min_rows": 1, **copies,
                **secure.inputs(query, query.bounded(schema), state, layout)}

    def _run(self, program: str, n_sites: int, public: dict[str, Any]) -> list[Any]:
        parties = self._session(n_sites)
        return parties.run(program, [b""] * parties.n, public)

    def _session(self, n_sites: int) -> Parties:
        """The live parties, restarted if a failure ended the last session."""
        self.open(n_sites)
        assert self._parties is not None
        return self._parties


def _answers(secure: SecureProgram, query: Any, schema: Schema, state: Any,
             groups: list[dict[str, Any]], n: float,
             units: Units) -> list[tuple[Any, Any]] | None:
    """Each group's answer and bound. A refusal in only one group (a count such as
    "small" or "imprecise" that a wrapped truncation inflated in one copy) is a
    disagreement: None, and the program runs again; a refusal in both is the answer.
    So is a spread that no solve can reveal (`_possible`)."""
    answers, refusals = [], []
    for values in groups:
        try:
            answers.append(secure.answer(query, schema, state, values, n, units))
        except QueryError as refusal:
            refusals.append(refusal)
    if refusals and not answers:
        raise refusals[0]
    possible = all(_possible(query, schema, values) for values in groups)
    return None if refusals or not possible else answers


def _possible(query: Any, schema: Schema, values: dict[str, np.ndarray]) -> bool:
    """Whether a solve's revealed spreads aᵢᵀM⁻¹aᵢ, and the diagonal of a revealed
    inverse, are all positive, as they are for the positive definite M of every solve
    that was not refused. A wrapped truncation can make one negative in both groups;
    both standard errors would then be clamped to 0 and agree. True for programs that
    solve nothing."""
    spreads = _spread(query, schema, values) if "diagonal" in values else np.ones(1)
    inverse = values.get("inverse")
    variances = np.diagonal(inverse, axis1=-2, axis2=-1) if inverse is not None else 1.0
    return bool(np.all(spreads > 0) and np.all(variances > 0))


def _unpack(combined: bytes) -> tuple[int, int, int, tuple[int, ...]]:
    """Scale bits, communication rounds so far, number of sites, each site's bytes."""
    bits, rounds, n_sites = struct.unpack_from("<III", combined)
    return bits, rounds, n_sites, struct.unpack_from(f"<{n_sites}Q", combined, 12)


def _add_bytes(sent: Sequence[int], outputs: list[Any]) -> tuple[int, ...]:
    """Each site's bytes: its sharing, plus what its party sent while concluding."""
    return tuple(s + int(o["bytes"]) for s, o in zip(sent, outputs, strict=False))


@dataclass(frozen=True)
class Units:
    """Worst-case errors of a secure program's steps, in scaled units.

    `moment`: a per-row value, one shared sum divided by the public n (`_quotients` in
    `pet.mpc.programs`). Each site rounded its sum to 2^-bits, or 2^-(bits + L) with the
    low limb (half a unit each, so S·2^-(bits+L+1)/n per row), and CrypTen's division by a
    public integer y truncates each party's share toward zero (less than one unit each)
    and corrects each wrap of the shares by 4·⌊2^62/y⌋ where 2^64/y is due: 4·frac(2^62/y)
    units short per wrap, at most ⌊parties/2⌋ wraps. `fine_mean` and `fine_product`: the
    same for a (co)variance's means, divided at `moment_precision` bits, and its means
    of products, MEAN_GAP bits coarser; `fine_mask`, what the parties' masks of its low
    bits add (parties/2 units of the latter). `rounding`: the sites' rounding alone, per
    row, the one error that every copy of a program shares (`SecureProgram.copies`).
    `legacy`: the single per-moment bound of earlier releases, (4·parties + 1) units plus
    three sites' roundings at 2^-bits, kept for the Cox kernel, whose risk-set ratios and
    sums over the grid it was set for.
    """

    moment: float
    fine_mean: float
    fine_product: float
    fine_mask: float
    legacy: float
    rounding: float

    @classmethod
    def of(cls, parties: int, sites: int, n: int, bits: int, *, low: bool) -> Units:
        """The units of a secure program over sums at 2^-bits of n rows (`low`: with the
        low limb)."""
        rows = max(n, 1)
        extra = low_bits(rows, bits) if low else 0
        wraps = parties // 2  # p signed shares of a small x add up to x + W·2^64, |W| ≤ p/2
        rounding = sites * 2.0 ** -(bits + extra + 1) / rows

        def divided(digits: int) -> float:
            shift = bits + extra - digits
            divisor = rows * 2**shift if shift > 0 else rows
            correction = 4 * (2**62 % divisor) / divisor * wraps
            return (parties + correction) * 2.0**-digits + rounding

        digits = precision(rows)
        fine = moment_precision(rows)
        return cls(moment=divided(digits), fine_mean=divided(fine),
                   fine_product=divided(fine - MEAN_GAP),
                   fine_mask=parties / 2 * 2.0 ** -(fine - MEAN_GAP),
                   legacy=(4 * parties + 1) * 2.0**-digits
                   + 3 * sites * 2.0 ** -(bits + 1) / rows,
                   rounding=rounding)


SPREAD_AGREEMENT = 0.25
"""Relative agreement asked of the two groups' standard errors and fit statistics (each
group's from its first copy): a wrapped truncation moves them by orders of magnitude,
while their own rounding noise, near 2^-20 for a well-conditioned fit, reaches a few
per cent for an intercept whose predictors are nearly collinear (the inverse of XᵀX
magnifies it)."""


def _agree(answers: list[tuple[Any, float]]) -> bool:
    """Whether every group's answer lies within the sum of the groups' bounds of the
    first (where both have one: a fit far from its maximum has none), and a fit's
    standard errors and statistics (which no bound covers) agree closely."""
    first, bound = answers[0]
    return all(type(a) is type(first)  # one copy converged and the other not: disagree
               and np.all((np.abs(_numbers(a) - _numbers(first)) <= bound + b)
                          | np.isnan(bound + b))
               and np.allclose(_statistics(a), _statistics(first), rtol=SPREAD_AGREEMENT,
                               atol=0.0, equal_nan=True)
               for a, b in answers[1:])


def _statistics(value: Any) -> np.ndarray:
    """A fit's standard errors and summary statistics (R², σ, log-likelihood); nothing for
    other answers."""
    names = ("se", "r2", "sigma", "log_likelihood")
    return np.concatenate([np.ravel(np.asarray(getattr(value, name), dtype=np.float64))
                           for name in names if hasattr(value, name)] or [np.zeros(0)])


def _numbers(value: Any) -> np.ndarray:
    """The numbers an error bound covers: a fit's coefficients (or the next round's), else
    the value itself."""
    if isinstance(value, Next):
        value = np.asarray(value.state.beta)
    return np.ravel(np.asarray(getattr(value, "coef", value), dtype=np.float64))


@dataclass(frozen=True)
class SecureProgram:
    """How one kind of query is finalized inside MPC: the kernel (`pet.mpc.programs`),
    its public inputs, and how one group of its revealed outputs becomes the answer and
    its error bound. `exact` kernels only compare and add, so they run on one copy.
    The public inputs may raise "min_rows", below which nothing but n is revealed.

    The others run in two groups of `copies` copies, each with its own truncation
    randomness. With one copy a group, `answer` bounds each number in the worst case
    (`Units`). With several, the copies measure their own noise, as `he` measures its
    slots': each number's spread over the copies gives a bound on the copies' mean at
    `BOUND_Z`-like confidence (`_noise`, under "noise"), and `answer` adds only what every
    copy shares (the sites' rounding, `Units.rounding`, and the kernels' deterministic
    approximations). Either way it returns the answer with each of its numbers' bound,
    in the answer's units (or one bound for all of them).
    """

    kind: str
    public: Callable[[Any, Schema, Layout], dict[str, Any]]
    answer: Callable[[Any, Schema, Any, dict[str, np.ndarray], float, Units],
                     tuple[Any, Any]]
    exact: bool = False
    stateful: bool = False
    """Whether `public` also takes the round's public state (after the schema)."""
    copies: int = 1

    def inputs(self, query: Any, schema: Schema, state: Any, layout: Layout) -> dict[str, Any]:
        """The kernel's public inputs for this round."""
        if self.stateful:
            return self.public(query, schema, state, layout)
        return self.public(query, schema, layout)

    def groups(self, values: dict[str, np.ndarray], digits: int, fine: int,
               bits: int) -> list[dict[str, Any]]:
        """Each group's outputs, decoded, the main output and the flags averaged over its
        copies (`pet.mpc.fixed_point.SUMMED`): fixed-point ones at the programs' precision,
        a (co)variance ("fine") at twice `fine` (`moment_precision`), raw sums at the
        layout's scale, the rest integers (the outputs of an exact kernel are counts);
        with several copies, as "noise", each number's bound on the group's mean, else,
        as "twin", the other copy's main output."""
        if self.exact:
            return [values]
        scales = {**dict.fromkeys(FIXED_POINT, 2.0**digits), "fine": 4.0**fine,
                  **dict.fromkeys(RAW_SUMS, 2.0**bits)}
        groups = [{k: v[i] / (scales.get(k, 1.0) * (self.copies if k in SUMMED else 1))
                   for k, v in values.items() if k != "deviations"} for i in range(2)]
        for group, twin in zip(groups, groups[::-1], strict=True):
            if self.copies > 1:
                group["noise"] = _noise(values["deviations"], digits, self.copies,
                                        self.copies)
            else:  # the other copy's main output: its noise
                group["twin"] = twin.get("values")
        return groups

    def pooled(self, groups: list[dict[str, Any]], values: dict[str, np.ndarray],
               digits: int) -> dict[str, Any]:
        """Both groups' outputs averaged: the mean of every copy, with its numbers' bound."""
        merged = {k: (v + groups[1][k]) / 2 for k, v in groups[0].items()
                  if k not in ("twin", "noise")}
        return {**merged, "noise": _noise(values["deviations"], digits, self.copies,
                                           2 * self.copies)}

    def steady(self, values: dict[str, np.ndarray]) -> bool:
        """Whether the two groups' copies spread alike, number by number (an F test at
        `BOUND_FAILURE`): one copy that a wrong truncation threw far off swells its
        group's spread by orders of magnitude, and a wrapped square leaves limbs that no
        deviations have (`_spreads`: NaN, which fails the test).
        True where there are no copies to compare."""
        if self.copies < 2:
            return True
        first, second = _spreads(values["deviations"])
        limit = float(special.fdtri(self.copies - 1, self.copies - 1, 1 - BOUND_FAILURE / 2))
        floor = self.copies * DEVIATION_FLOOR
        return bool(np.all(np.maximum(first, second)
                           <= limit * np.minimum(first, second) + floor))


DEVIATION_FLOOR = 16.0
"""Raw units squared, per copy, below which two groups' spreads are not compared: a
number that hardly varies between copies (one or two units of rounding) has no spread to
test."""


def _spreads(deviations: np.ndarray) -> np.ndarray:
    """Each group's Σ(v − m)² per number, in raw units squared (as floats), from the sums
    of its deviations' limbs (`pet.mpc.programs._squared_deviations`); NaN where the
    limbs cannot come from real deviations, a negative square or a |Σh·l| beyond
    √(Σh²·Σl²): a square that wrapped the ring."""
    high, cross, low = np.split(np.asarray(deviations, dtype=np.float64), 3, axis=-1)
    total = high * 4.0**LIMB_BITS + 2 * cross * 2.0**LIMB_BITS + low
    valid = (high >= 0) & (low >= 0) & (cross**2 <= high * low * (1 + 1e-9) + 1)
    return np.where(valid, total, np.nan)


def _noise(deviations: np.ndarray, digits: int, copies: int, count: int) -> np.ndarray:
    """Each number's bound on the mean of `count` copies, from both groups' squared
    deviations over their `copies` copies each (`_spreads`, raw units at 2^-digits):
    Student's t quantile at `BOUND_FAILURE` for the pooled standard deviation's
    2·(copies − 1) degrees of freedom, times the mean's standard error. A copy's error is
    a sum of many independent truncations, close to Gaussian."""
    freedom = 2 * (copies - 1)
    sd = np.sqrt(_spreads(deviations).sum(0) / freedom) / 2.0**digits
    return float(special.stdtrit(freedom, 1 - BOUND_FAILURE / 2)) * sd / np.sqrt(count)


FIXED_POINT = {"values", "diagonal", "corner", "rss", "tss", "residual", "inverse",
               "log_likelihood_per_row"}
"""Outputs of copied kernels at the programs' precision."""
RAW_SUMS = {"log_likelihood", "imprecise", "concordant", "comparable", "events"}
"""Outputs of copied kernels that are shared sums revealed as they are."""


def _blocks(layout: Layout) -> dict[str, tuple[int, int]]:
    return {block.name: (s.start, s.stop) for block, s in layout}


def _mean_inputs(query: Any, schema: Schema, layout: Layout) -> dict[str, Any]:
    return {"sums": _blocks(layout)["sum"]}


def _moment_inputs(query: Any, schema: Schema, layout: Layout) -> dict[str, Any]:
    where = _blocks(layout)
    rows, cols = np.triu_indices(len(_columns(query)))
    return {"sums": where["sum"], "squares": where.get("cross", where.get("sum_sq")),
            "pairs": (rows.tolist(), cols.tolist()), "min_rows": 2}


def _correlation_inputs(query: Any, schema: Schema, layout: Layout) -> dict[str, Any]:
    inputs = _moment_inputs(query, schema, layout)
    rows, cols = inputs["pairs"]
    diagonal = [k for k, (i, j) in enumerate(zip(rows, cols, strict=True)) if i == j]
    return {**inputs, "diagonal": diagonal, "steps": CORRELATION_STEPS}


def _columns(query: Any) -> list[str]:
    return [c for c in query.used_columns() if c in query.inputs()]


def _halves(query: Any, schema: Schema) -> np.ndarray:
    return np.array([affine(schema[c])[1] for c in _columns(query)])


def _mean(query: Any, schema: Schema, state: Any, values: dict[str, np.ndarray], n: float,
          units: Units) -> tuple[float, float]:
    center, half = affine(schema[query.column])
    return float(center + half * values["values"][0]), float(half * units.moment)


def _moment_error(units: Units) -> float:
    """The worst-case error of a (co)variance revealed as mean(xy) − mean(x)·mean(y) of
    scaled values: the mean of products' error, each mean's times the other mean (at most
    1 in magnitude), their product's, and the mask on the difference's low bits. The
    means are divided at `moment_precision` and their product is exact."""
    return units.fine_product + 2 * units.fine_mean + units.fine_mean**2 + units.fine_mask


def _covariance_error(moment: float) -> float:
    """The error of a covariance mean(xy) − mean(x)·mean(y) of scaled values when each
    mean is within `moment`: its mean of products', each mean's times the other mean (at
    most 1 in magnitude), and their product's."""
    return 3 * moment + moment**2


def _variance(query: Any, schema: Schema, state: Any, values: dict[str, np.ndarray],
              n: float, units: Units) -> tuple[float, float]:
    half = _halves(query, schema)[0]
    unbiased = n / (n - 1)
    variance = max(float(values["fine"][0]), 0.0) * half**2 * unbiased
    bound = float(_moment_error(units) * half**2 * unbiased)
    if isinstance(query, StdDev):  # |√a − √b| = |a − b| / (√a + √b), b ≥ a − bound
        spread = bound / (np.sqrt(variance) + np.sqrt(max(variance - bound, 0.0)))
        return float(np.sqrt(variance)), float(min(spread, np.sqrt(bound)))
    return variance, bound


def _covariance(query: Any, schema: Schema, state: Any, values: dict[str, np.ndarray],
                n: float, units: Units) -> tuple[np.ndarray, np.ndarray]:
    """The covariance matrix, and each entry's bound in its own units (the product of its
    two columns' half-ranges)."""
    halves = _halves(query, schema)
    unbiased = n / (n - 1)
    scaled = from_upper_triangle(values["fine"], len(halves)) * unbiased
    units_of = np.outer(halves, halves) * unbiased
    return scaled * np.outer(halves, halves), (_moment_error(units) * units_of).ravel()


INV_SQRT_ERROR = 2.0**-24
"""Relative error of the inverse square root's three Newton steps from its minimax start
(`pet.mpc.kernels.INV_SQRT_START`), before rounding: the same in every copy."""
RECIPROCAL_ERROR = 2.0**-30
"""Relative error of the reciprocal's eighth-order step from its linear start
(`pet.mpc.kernels.RECIPROCAL_START`): (7 − 4√3)^8, as three Newton steps leave."""
COPIES = 32
"""Copies a group of a statistical program runs (`SecureProgram`): 2 × 32 copies leave
the pooled spread 62 degrees of freedom, whose t quantile at `BOUND_FAILURE` (7.2) is
within 20% of the Gaussian's (6.1)."""
CORRELATION_STEPS = 10
"""Powers of four tried when normalising a variance (of values scaled to [-1, 1]): below
4^-10 ≈ 10^-6 a variance has too few significant bits to divide by, and is refused."""


def _correlation(query: Any, schema: Schema, state: Any, values: dict[str, np.ndarray],
                 n: float, units: Units) -> tuple[np.ndarray, np.ndarray]:
    """Correlations, with the bound of their error (0 on the diagonal, which is exact):
    the copies' measured noise (`_noise`) plus what every copy shares.

    That is the sites' rounding and the inverse square roots' approximation. With each
    covariance within u, |δr_ij| ≤ u/√(c_ii·c_jj) + |r_ij|·u/2·(1/c_ii + 1/c_jj), and
    normalising puts c_ii·4^m_i in [1/4, 1), so 1/c_ii ≤ 4·4^m_i and
    1/√(c_ii·c_jj) ≤ 2·(4^m_i + 4^m_j): the error is at most (2 + 2·|r_ij|)·u·Σ_i 4^m_i
    (the revealed `spread`; the pair's own powers are not revealed). Three Newton steps
    leave each 1/√c_ii within a relative `INV_SQRT_ERROR`, so r_ij within twice that."""
    if values["small"] > 0:
        raise QueryError(f"{query.describe()}: a column's variance is below "
                         f"{4.0**-CORRELATION_STEPS:.1e} of its range squared; its "
                         "correlation cannot be computed inside MPC")
    d = len(_columns(query))
    matrix = np.clip(from_upper_triangle(values["values"], d), -1.0, 1.0)
    np.fill_diagonal(matrix, 1.0)
    shared = ((2 + 2 * np.abs(matrix)) * _covariance_error(units.rounding) * values["spread"]
              + (2 + INV_SQRT_ERROR) * INV_SQRT_ERROR * np.abs(matrix))
    bound = from_upper_triangle(values["noise"], d) + shared
    np.fill_diagonal(bound, 0.0)
    return matrix, bound.ravel()


SOLVE_STEPS = 10
"""Powers of four tried when normalising XᵀX's diagonal inside the least-squares solve:
a predictor whose mean square is below 4^-10 of its range squared is refused, and so is
a pivot below 2^-11 of XᵀX so scaled (its diagonal in [0.708, 1)): that refuses no
system whose unit-diagonal pivots reach 2^-10, and every one whose pivots fall below
2^-10.5 (nearly collinear predictors)."""


def _solve_inputs(query: Any, schema: Schema) -> dict[str, Any]:
    """What `pet.mpc.programs._solve` needs: the design's size, where each entry of the
    square matrix sits in its upper triangle, and the intercept's row of the map to
    original units; and the whole map, whose rows give the coefficients' noise."""
    design = query.design(schema)
    p = design.size
    rows, cols = np.triu_indices(p)
    square = np.zeros((p, p), dtype=int)
    square[rows, cols] = square[cols, rows] = np.arange(len(rows))
    original = design.to_original()
    corner = original[0] if query.intercept else np.zeros(p)
    return {"terms": p, "square": square.ravel().tolist(), "corner": corner.tolist(),
            "steps": SOLVE_STEPS, "min_rows": p + 1,
            "numbers": _integer_map(original)[0].tolist()}


def _linear_inputs(query: Any, schema: Schema, layout: Layout) -> dict[str, Any]:
    where = _blocks(layout)
    return {**_solve_inputs(query, schema), "span": (where["xtx"][0], where["yty"][1]),
            "intercept": query.intercept, "shift": 0}


def _linear(query: Any, schema: Schema, state: Any, values: dict[str, np.ndarray],
            n: float, units: Units) -> tuple[Any, np.ndarray]:
    """The fit, and each coefficient's bound: the copies' measured noise of the
    coefficient plus the sites' rounding carried through the solve (`_input_error`)."""
    _refuse_small(query, values)
    fit = query.fit(schema, n, values["values"], _spread(query, schema, values),
                    float(values["rss"]), float(values["tss"]))
    half_y = query._outcome_scaling(schema)[1]
    shared = _coefficient_errors(query, schema, values, _input_error(values, units.rounding))
    return fit, half_y * (_original_noise(query, schema, values) + shared)


LOGISTIC_SHIFT = 4
"""The Newton step's right-hand side, the gradient scaled by at most 1/√(Hessian diagonal)
(`pet.mpc.kernels.equilibrate`), is shifted down by 2^4 inside MPC: it has no bound of 1,
and 16 covers health designs."""


def _logistic_inputs(query: Any, schema: Schema, layout: Layout) -> dict[str, Any]:
    where = _blocks(layout)
    return {**_solve_inputs(query, schema), "span": (where["gradient"][0], where["hessian"][1]),
            "log_likelihood": where["log_likelihood"], "shift": LOGISTIC_SHIFT}


def _poisson_inputs(query: Any, schema: Schema, layout: Layout) -> dict[str, Any]:
    """Logistic regression's inputs: Poisson's gradient and Hessian are scaled to at most
    1 per row too (`PoissonRegression`), and its meat, after the Hessian, is not read.
    The kernel reveals no sandwich, so robust standard errors are refused."""
    if query.robust:
        raise QueryError(f"{query.describe()}: robust standard errors are not computed "
                         "inside MPC; use robust=False under mpc, or another backend")
    return _logistic_inputs(query, schema, layout)


def _logistic(query: Any, schema: Schema, state: Any, values: dict[str, np.ndarray],
              n: float, units: Units) -> tuple[Any, Any]:
    """A Newton round of a logistic or Poisson fit (`NewtonRegression`): the next round's
    public coefficients, or the fit once the step is below `tol` or within the
    computation's own noise (the copies' measured bound on it). Each coefficient's bound
    is the step's error (the copies' noise plus the sites' rounding carried through the
    solve) plus how far the maximum lies beyond an exact Newton step
    (`_newton_distance`)."""
    _refuse_small(query, values)
    step = values["values"]
    p = len(step)
    rounding = _input_error(values, units.rounding)
    scaled = values["noise"][:p] + _scaled_errors(values, rounding)
    beta = query.advance(schema, state, step)
    moved = query.advance_error(schema, state, step, float(np.max(scaled)))
    noise = float(np.max(values["noise"][:p]))
    converged = bool(np.max(np.abs(step)) < max(query.tol, noise))
    if not converged and state.iteration + 1 < query.max_iter:
        return Next(query.state_type(state.iteration + 1, tuple(beta.tolist()))), moved
    variance = query.information_scale(schema, state) * _spread(query, schema, values) / n
    fit = query.make_fit(schema, state, beta, np.sqrt(np.maximum(variance, 0.0)), n,
                         float(values["log_likelihood"][0]), converged)
    widened = moved / float(np.max(scaled)) if np.max(scaled) > 0 else 1.0
    solve = widened * (_original_noise(query, schema, values)
                       + _coefficient_errors(query, schema, values, rounding))
    return fit, solve + _newton_distance(query, schema, state, values, scaled)


def _newton_distance(query: Any, schema: Schema, state: Any, values: dict[str, np.ndarray],
                     error: np.ndarray) -> np.ndarray:
    """How far, per coefficient in original units, the maximum of the likelihood lies
    from the exact Newton step β + s of the last round, given the computed step and each
    element's `error`; NaN where the step is too long for the argument.

    Both families' weights w (μ(1 − μ), μ·e^(−c)) change no faster than themselves,
    |dw/dη| ≤ w, and |xᵀu| ≤ R‖u‖ with R = √p on the scaled design, so the per-row
    Hessian M at β + u lies within e^(±R‖u‖)·M. Then the gradient after the step is at
    most ((e^x − 1)/x − 1)·‖s‖_M in M⁻¹'s norm (x = R‖s‖, ‖s‖_M ≤ √(p·w_max)·‖s‖), the
    maximum is within twice e^x that of β + s in M's norm while R·‖s‖ and R·‖d‖ stay
    below log 2 (the latter checked through ‖d‖ ≤ ‖d‖_M·√trace(M⁻¹)), and
    coefficient i moves by at most
    √(aᵢᵀM⁻¹aᵢ) (its revealed spread) times that: quadratic in the step."""
    step = values["values"]
    p = len(step)
    size = float(np.linalg.norm(np.abs(step) + error))
    reach = np.sqrt(p)
    x = reach * size
    if not x < np.log(2):  # then R·‖d‖ ≤ log 2 cannot hold either
        return np.full(p, np.nan)
    in_norm = np.sqrt(p * query.row_bounds(schema, state)[0]) * size
    gradient = (np.expm1(x) / x - 1) * in_norm if x > 0 else 0.0
    distance = 2 * np.exp(x) * gradient
    if reach * distance * np.sqrt(_trace(values)) > np.log(2):
        return np.full(p, np.nan)
    return np.sqrt(np.maximum(_spread(query, schema, values), 0.0)) * distance


def _cox_inputs(query: Any, schema: Schema, state: Any, layout: Layout) -> dict[str, Any]:
    """What `pet.mpc.programs._cox` needs: the design (see `_solve_inputs`), strata and
    grid sizes, where each block lies, the round's public coefficients and whether it is
    the closing round (which reveals the whole inverse information, for the Wald test,
    and the concordance counts)."""
    where = _blocks(layout)
    closing = "c_events" in where
    rows, cols = np.triu_indices(query.design(schema).size)
    inputs = {**_solve_inputs(query, schema), "strata": query.strata_count(schema),
              "grid": query.curve().steps(), "pairs": (rows.tolist(), cols.tolist()),
              "beta": list(state.beta), "offset": float(np.abs(state.beta).sum()),
              "shift": LOGISTIC_SHIFT, "closing": closing, "covariance": closing,
              "residual": True,
              **{name: where[name] for name in ("events", "event_x", "s0", "s1", "s2")}}
    if closing:
        inputs.update(bins=query.concordance_bins, c_events=where["c_events"],
                      c_censored=where["c_censored"])
    return inputs


def _cox(query: Any, schema: Schema, state: Any, values: dict[str, np.ndarray], n: float,
         units: Units) -> tuple[Any, Any]:
    """A Cox round inside MPC, one copy a group (its kernel runs over the whole grid):
    the next round's public coefficients (converged once the step is below `tol` or
    eight times the two copies' disagreement, whose truncation errors are independent),
    or, in the closing round, the fit at the round's coefficients from the revealed
    inverse information. Each coefficient's bound adds the closing step to the solve's
    worst-case error: the distance to the maximum of the partial likelihood is below it."""
    _refuse_small(query, values)
    if values["imprecise"] > 0:
        raise QueryError(f"{query.describe()}: {values['imprecise']:g} events have risk sets "
                         "whose weights are too small for MPC's fixed point; use a coarser "
                         "grid, narrower covariate bounds (clip=), or the he backend")
    step = values["values"]
    # the residual is the scaled system's: D⁻¹ of it, D ≥ LEAST_SCALE, is the system's own
    residual = 2.0**LOGISTIC_SHIFT * float(np.linalg.norm(values["residual"])) / LEAST_SCALE
    error = _input_error(values, units.legacy) + 2 * residual
    scaled = _scaled_errors(values, error)
    log_likelihood = n * float(values["log_likelihood_per_row"])
    null = state.null_log_likelihood if state.iteration else log_likelihood
    half = query.design(schema).half
    if not state.closing:
        noise = 8 * float(np.max(np.abs(step - values["twin"])))
        converged = bool(np.max(np.abs(step)) < max(query.tol, noise))
        closing = converged or state.iteration + 2 >= query.max_rounds
        beta = np.asarray(state.beta) + step
        return Next(CoxState(state.iteration + 1, tuple(beta.tolist()), null, closing=closing,
                             converged=converged)), float(np.max(scaled))
    comparable = float(values["comparable"])
    fit = query.fit(schema, state, np.asarray(state.beta), values["inverse"] / n, n=n,
                    events=float(values["events"]), log_likelihood=log_likelihood, null=null,
                    concordance=float(values["concordant"]) / (2 * comparable)
                    if comparable > 0 else np.nan)
    return fit, (scaled + np.abs(step)) / half


def _refuse_small(query: Any, values: dict[str, np.ndarray]) -> None:
    if values["small"] > 0:
        raise QueryError(f"{query.describe()}: a predictor is (nearly) constant or the "
                         "predictors are nearly collinear; MPC's fixed-point solve refuses "
                         "rather than return an imprecise fit")


def _spread(query: Any, schema: Schema, values: dict[str, np.ndarray]) -> np.ndarray:
    """diag(Aₒ·M⁻¹·Aₒᵀ) for the solved per-row matrix M, Aₒ the public map to original
    units: diagonal over the squared half-ranges, and a₀ᵀM⁻¹a₀ for the intercept."""
    design = query.design(schema)
    spread = values["diagonal"] / design.half**2
    if query.intercept:
        spread[0] = values["corner"]
    return spread


def _input_error(values: dict[str, np.ndarray], moment: float) -> float:
    """A bound on ‖η‖, where x̂ − x = M⁻¹·η for the solution x̂ in the scaled design, from
    the inputs and the pivots' reciprocals.

    With M and b each within `moment` per element, η = r + δM·x̂ − δb, r = Mx̂ − b the
    solver's residual (which Cox adds, and which copies measure as noise);
    ‖δM‖ ≤ p·moment and ‖δb‖ ≤ √p·moment. Doubling covers the first-order terms. Each
    Gauss–Jordan pivot's reciprocal is within `RECIPROCAL_ERROR` (the same in every
    copy), which moves x̂ by at most p·RECIPROCAL_ERROR·‖x̂‖ and η by ‖M‖ ≤ p times that."""
    x = values["values"]
    p = len(x)
    size = float(np.linalg.norm(x))
    return 2 * moment * (np.sqrt(p) + p * size) + p * p * RECIPROCAL_ERROR * size


def _integer_map(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The map's rows as whole numbers below 2^MAP_BITS in magnitude, each row divided by
    its own power of two (returned as `scales`)."""
    largest = np.max(np.abs(matrix), axis=1)
    scales = 2.0 ** (np.ceil(np.log2(np.where(largest > 0, largest, 1.0))) - MAP_BITS)
    return np.rint(matrix / scales[:, None]).astype(np.int64), scales


def _original_noise(query: Any, schema: Schema, values: dict[str, np.ndarray]) -> np.ndarray:
    """The copies' bound on each coefficient in original units (before the outcome's
    scaling): the numbers that follow the scaled solution in `noise`, measured through
    the whole-number map (`_integer_map`; shifted back down by 2^MAP_BITS inside MPC),
    plus what the map's rounding can add, each rounded entry's error times its scaled
    coefficient's bound."""
    original = query.design(schema).to_original()
    whole, scales = _integer_map(original)
    noise = values["noise"]
    p = len(values["values"])
    rounded = np.abs(original - whole * scales[:, None]) @ noise[:p]
    return noise[p:] * scales * 2.0**MAP_BITS + rounded


def _scaled_errors(values: dict[str, np.ndarray], error: float) -> np.ndarray:
    """Each scaled coefficient's bound |(M⁻¹·η)_k| ≤ ‖row k of M⁻¹‖·‖η‖, with
    ‖row k‖² = (M⁻²)_kk ≤ λmax(M⁻¹)·(M⁻¹)_kk ≤ trace(M⁻¹)·(M⁻¹)_kk, all revealed."""
    return np.sqrt(_trace(values) * np.maximum(values["diagonal"], 0.0)) * error


def _trace(values: dict[str, np.ndarray]) -> float:
    """trace(M⁻¹) from the revealed diagonal: a bound on M⁻¹'s largest eigenvalue."""
    return float(np.sum(np.maximum(values["diagonal"], 0.0)))


def _coefficient_errors(query: Any, schema: Schema, values: dict[str, np.ndarray],
                        error: float) -> np.ndarray:
    """Each coefficient's bound in original units before the outcome's scaling:
    |aᵢᵀ·M⁻¹·η| ≤ √(trace(M⁻¹)·aᵢᵀM⁻¹aᵢ)·‖η‖ for aᵢ row i of the public map Aₒ, with
    aᵢᵀM⁻¹aᵢ the revealed spread of coefficient i (`_spread`)."""
    return np.sqrt(_trace(values) * np.maximum(_spread(query, schema, values), 0.0)) * error


def _quantile_inputs(query: Any, schema: Schema, layout: Layout) -> dict[str, Any]:
    return {"counts": _blocks(layout)["counts"], "width": query.bins, "cumulative": True,
            "probs": list(query.probs)}


def _grid_quantiles(query: Any, schema: Schema, state: Any, values: dict[str, np.ndarray],
                    n: float, units: Units) -> tuple[np.ndarray, float]:
    """The middle of the grid bin holding each quantile: within half a bin of the value
    interpolated from the whole histogram, which MPC does not reveal."""
    edges = query.edges(schema)
    index = query.bin_of(values["values"])
    half = float(np.max(np.diff(edges))) / 2 * (1 + 1e-12)  # with the edges' rounding
    return (edges[index] + edges[index + 1]) / 2, half


def _exact_inputs(query: Any, schema: Schema, layout: Layout) -> dict[str, Any]:
    return {"counts": _blocks(layout)["at_or_below"], "width": query.branching - 1,
            "cumulative": False, "probs": list(query.probs)}


def _exact_quantiles(query: Any, schema: Schema, state: Any, values: dict[str, np.ndarray],
                     n: float, units: Units) -> tuple[Any, float]:
    return query.advance(values["values"], state), 0.0


SECURE: dict[type, SecureProgram] = {
    Mean: SecureProgram("mean", _mean_inputs, _mean),
    Variance: SecureProgram("variance", _moment_inputs, _variance),
    StdDev: SecureProgram("variance", _moment_inputs, _variance),
    Covariance: SecureProgram("variance", _moment_inputs, _covariance),
    Correlation: SecureProgram("correlation", _correlation_inputs, _correlation, copies=COPIES),
    LinearRegression: SecureProgram("linear", _linear_inputs, _linear, copies=COPIES),
    LogisticRegression: SecureProgram("logistic", _logistic_inputs, _logistic, copies=COPIES),
    PoissonRegression: SecureProgram("logistic", _poisson_inputs, _logistic, copies=COPIES),
    Cox: SecureProgram("cox", _cox_inputs, _cox, stateful=True),  # grids: one copy a group
    Quantiles: SecureProgram("positions", _quantile_inputs, _grid_quantiles, exact=True),
    ExactQuantiles: SecureProgram("positions", _exact_inputs, _exact_quantiles, exact=True),
}
"""Queries finalized inside MPC, by exact type."""
